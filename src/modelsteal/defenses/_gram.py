"""Per-sample Gram matrices ``M = G Gᵀ`` of the log-likelihood Jacobian used by MAD.

Orekondy et al., *Prediction Poisoning*, ICLR 2020, Eq. 5: ``G = ∇_w log F(x; w)`` is the ``K × D``
Jacobian of the surrogate's log-probabilities with respect to its parameters. MAD's objective (Eq. 4)
depends on ``G`` only through inner products ``⟨Gᵀa, Gᵀb⟩ = aᵀ M b``, so the functions here return the
``(N, K, K)`` stack of ``M = G Gᵀ`` and never materialise the ``(N, K, D)`` Jacobian.

Two choices of parameters ``w``:

- :func:`last_layer_gram` — the weight and bias of the surrogate's last ``nn.Linear`` (what the authors'
  public code does); closed form from one batched forward pass.
- :func:`all_params_gram` — every parameter of the surrogate (what the paper's text says). Per-sample
  gradients with respect to each layer's *output* are obtained by ``K − 1`` batched backward passes, and
  each layer's contribution to ``M`` uses a per-layer identity (Linear, Conv1d/2d, BatchNorm) or
  ``torch.func`` on that layer alone; models the layer-wise path cannot prove correct for (weight tying,
  a module called twice, parameters used outside a module call) use :func:`functional_gram`, a chunked
  ``vmap(jacrev(·))`` over the whole model.

All functions take the surrogate and a batch ``x`` and return ``(M, p)`` with ``p = softmax(F(x))``,
in the surrogate's floating dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap

from modelsteal.models.builders import last_linear

# Upper bound on the number of elements of any temporary built per chunk (about 64 MiB in float32).
_ELEMENT_BUDGET = 1 << 24


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the first floating parameter or buffer of ``model`` (float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def softmax_jacobian_gram(p: Tensor) -> Tensor:
    """``(I − 1pᵀ)(I − p1ᵀ)`` per row of ``p`` (N, K): entry ``δ_ij − p_i − p_j + ||p||²``.

    Row ``k`` of ``I − 1pᵀ`` is ``∂ log softmax(z)_k / ∂z = e_k − p``, so this is the Gram matrix of the
    log-softmax Jacobian with respect to the logits.
    """
    k = p.shape[1]
    eye = torch.eye(k, dtype=p.dtype, device=p.device)
    sq = (p * p).sum(dim=1)[:, None, None]
    return eye - p[:, :, None] - p[:, None, :] + sq


# ------------------------------------------------------------------------------------------------
# last layer (authors' code)
# ------------------------------------------------------------------------------------------------
def last_layer_gram(surrogate: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``G Gᵀ`` for the gradients of ``log softmax`` w.r.t. the last linear layer ``z = W h + b``.

    With ``p = softmax(z)`` and ``h`` the penultimate features, ``∂ log p_k / ∂z = e_k − p``, hence
    ``∇_W log p_k = (e_k − p) hᵀ`` and ``∇_b log p_k = e_k − p``. Row ``k`` of ``G`` is
    ``[vec((e_k − p) hᵀ), e_k − p]`` and, since ``⟨u hᵀ, v hᵀ⟩_F = (u·v)||h||²``,

        M_ij = ⟨G_i, G_j⟩ = (e_i − p)·(e_j − p) (||h||² + 1) = (δ_ij − p_i − p_j + ||p||²)(||h||² + 1),

    i.e. ``M = (I − 1pᵀ)(I − p1ᵀ)(||h||² + 1)`` (``+ 1`` only when the layer has a bias). One batched
    forward pass of the surrogate, no autograd. The layer is ``surrogate.head`` when the surrogate has
    ``penultimate``/``head`` (a :class:`~modelsteal.models.builders.Classifier`), otherwise
    :func:`~modelsteal.models.last_linear`, captured with a forward hook; its output must be the logits.

    Returns ``(M, p)`` of shapes ``(N, K, K)`` and ``(N, K)``.
    """
    head = getattr(surrogate, "head", None)
    with torch.no_grad():
        if isinstance(head, nn.Linear) and callable(getattr(surrogate, "penultimate", None)):
            h = surrogate.penultimate(x)
            z = head(h)
            layer = head
        else:
            layer = last_linear(surrogate)
            captured: list[Tensor] = []

            def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
                captured.append(inputs[0])

            handle = layer.register_forward_hook(hook)
            try:
                z = surrogate(x)
            finally:
                handle.remove()
            if len(captured) != 1:
                raise ValueError(
                    f"the last nn.Linear of {type(surrogate).__name__} ran {len(captured)} times in one forward "
                    "pass; last-layer gradients need it to run once (use jacobian='all')"
                )
            h = captured[0]
        if h.ndim != 2 or z.ndim != 2 or h.shape[0] != z.shape[0]:
            raise ValueError(
                f"last-layer gradients need (N, d) features and (N, K) logits; got {tuple(h.shape)} and "
                f"{tuple(z.shape)} (use jacobian='all')"
            )
        p = torch.softmax(z, dim=1)
        scale = (h * h).sum(dim=1) + (1.0 if layer.bias is not None else 0.0)
        return softmax_jacobian_gram(p) * scale[:, None, None], p


# ------------------------------------------------------------------------------------------------
# all parameters (paper's text)
# ------------------------------------------------------------------------------------------------
def _seeds(n: int, k: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``K − 1`` logit-space cotangents ``e_i − e_K`` (a basis of ``{v : 1ᵀv = 0}``), shape (K−1, n, K)."""
    s = torch.zeros(k - 1, n, k, dtype=dtype, device=device)
    idx = torch.arange(k - 1, device=device)
    s[idx, :, idx] = 1
    s[:, :, k - 1] = -1
    return s


def _to_log_softmax(mb: Tensor, p: Tensor) -> Tensor:
    """Map the Gram ``Mb`` of ``∇_w (z_i − z_K)`` (i < K) to the Gram of ``∇_w log softmax(z)_k``.

    ``∇ log p_k = Σ_i (δ_ki − p_i) ∇z_i = Σ_{i<K} (δ_ki − p_i)(∇z_i − ∇z_K)`` because ``Σ_i (δ_ki − p_i) = 0``;
    with ``C_ki = δ_ki − p_i`` (K × (K−1)), ``M = C Mb Cᵀ``.
    """
    k = p.shape[1]
    c = torch.eye(k, k - 1, dtype=p.dtype, device=p.device) - p[:, None, : k - 1]
    return c @ mb @ c.transpose(1, 2)


def _pair_gram(a: Tensor) -> Tensor:
    """``a`` (n, S, D) -> ``a aᵀ`` (n, S, S)."""
    return a @ a.transpose(1, 2)


def _linear_gram(layer: nn.Linear, a: Tensor, g: Tensor) -> Tensor:
    """Linear ``y = W a + b``: per sample ``∇_W = g aᵀ``, so ``⟨∇_W^s, ∇_W^t⟩ = (g_s·g_t)(a·a)`` (+ ``g_s·g_t``
    for the bias). Inputs with extra dims ``(n, T, in)`` sum over positions ``T`` (see :func:`_unfolded_gram`)."""
    if a.ndim == 2:
        gs = g.permute(1, 0, 2)  # (n, S, out)
        scale = (a * a).sum(dim=1) + (1.0 if layer.bias is not None else 0.0)
        return _pair_gram(gs) * scale[:, None, None]
    n = a.shape[0]
    u = a.reshape(n, -1, a.shape[-1]).transpose(1, 2)  # (n, in, T)
    gg = g.reshape(g.shape[0], n, -1, g.shape[-1]).permute(1, 0, 3, 2)  # (n, S, out, T)
    return _unfolded_gram(u, gg, bias=layer.bias is not None)


def _unfolded_gram(u: Tensor, g: Tensor, *, bias: bool) -> Tensor:
    """Gram of per-sample gradients ``∇_W^s = g_s Uᵀ`` (+ bias ``g_s 1``) of a layer that is linear in unfolded
    patches: ``u`` (n, F, P) patches of ``F`` features at ``P`` positions, ``g`` (n, S, O, P).

    Two exact ways, whichever needs fewer multiply-adds:

    (a) form ``∇_W^s = g_s [U; 1]ᵀ`` (n, S, O·(F+1)) and take ``∇ ∇ᵀ``;
    (b) ``⟨∇_W^s, ∇_W^t⟩ = Σ_o Σ_{p,q} g_s[o,p] g_t[o,q] Kpq`` with the position kernel ``K = UᵀU (+ 1)``, i.e.
        ``H_s = g_s K`` then ``Σ_{o,q} H_s[o,q] g_t[o,q]``.
    """
    n, f, npos = u.shape
    s, o = g.shape[1], g.shape[2]
    fb = f + (1 if bias else 0)
    cost_a = s * o * npos * fb + s * s * o * fb
    cost_b = npos * npos * f + s * o * npos * npos + s * s * o * npos
    if cost_a <= cost_b:
        if bias:
            u = torch.cat([u, u.new_ones(n, 1, npos)], dim=1)
        w = g.reshape(n, s * o, npos) @ u.transpose(1, 2)  # (n, S·O, F+1)
        return _pair_gram(w.reshape(n, s, o * fb))
    kern = u.transpose(1, 2) @ u  # (n, P, P)
    if bias:
        kern = kern + 1
    h = g.reshape(n, s * o, npos) @ kern  # (n, S·O, P)
    return h.reshape(n, s, o * npos) @ g.reshape(n, s, o * npos).transpose(1, 2)


def _conv_gram(layer: nn.Conv1d | nn.Conv2d, a: Tensor, g: Tensor) -> Tensor:
    """Conv layer as a linear map on unfolded patches (``F.unfold``): ``∇_W^s = g_s Uᵀ`` per sample."""
    n, s = a.shape[0], g.shape[0]
    if isinstance(layer, nn.Conv1d):
        a = a.unsqueeze(2)
        kernel, dil, pad, stride = (1, *layer.kernel_size), (1, *layer.dilation), (0, *layer.padding), (1, *layer.stride)
    else:
        kernel, dil, pad, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    u = F.unfold(a, kernel, dilation=dil, padding=pad, stride=stride)  # (n, C·kk, P)
    gg = g.reshape(s, n, layer.out_channels, -1).transpose(0, 1)  # (n, S, O, P)
    return _unfolded_gram(u, gg, bias=layer.bias is not None)


def _batchnorm_gram(layer: nn.modules.batchnorm._BatchNorm, a: Tensor, g: Tensor) -> Tensor:
    """Eval-mode BatchNorm ``y = γ x̂ + β`` with running statistics: ``∇γ_c = Σ g x̂``, ``∇β_c = Σ g`` per sample."""
    shape = (1, -1) + (1,) * (a.ndim - 2)
    xhat = (a - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)
    s, n, c = g.shape[0], g.shape[1], g.shape[2]
    gf = g.reshape(s, n, c, -1)
    parts = []
    if layer.weight is not None:
        parts.append((gf * xhat.reshape(1, n, c, -1)).sum(-1))
    if layer.bias is not None:
        parts.append(gf.sum(-1))
    return _pair_gram(torch.cat(parts, dim=2).transpose(0, 1))


def _module_functional_gram(layer: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    """Any other layer with its own parameters: per-sample ``vjp`` through that layer alone (``torch.func``)."""
    params = {k: v.detach() for k, v in layer.named_parameters(recurse=False)}
    s, n = g.shape[0], a.shape[0]

    def per_sample(a1: Tensor, g1: Tensor) -> dict[str, Tensor]:
        _, pull = vjp(lambda pr: functional_call(layer, pr, (a1.unsqueeze(0),)).squeeze(0), params)
        return vmap(lambda c: pull(c)[0])(g1)

    per_row = max(1, s * sum(v.numel() for v in params.values()))
    step = max(1, _ELEMENT_BUDGET // per_row)
    out = []
    gt = g.transpose(0, 1)
    for i in range(0, n, step):
        grads = vmap(per_sample)(a[i : i + step], gt[i : i + step])
        flat = torch.cat([v.reshape(v.shape[0], s, -1) for v in grads.values()], dim=2)
        out.append(_pair_gram(flat))
    return torch.cat(out)


def _layer_gram(layer: nn.Module, a: Tensor, g: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return _linear_gram(layer, a, g)
    if (
        isinstance(layer, (nn.Conv1d, nn.Conv2d))
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    ):
        return _conv_gram(layer, a, g)
    if (
        isinstance(layer, nn.modules.batchnorm._BatchNorm)
        and not layer.training
        and layer.running_mean is not None
        and layer.running_var is not None
    ):
        return _batchnorm_gram(layer, a, g)
    return _module_functional_gram(layer, a, g)


@dataclass
class _Capture:
    """Forward hooks recording, for each module with its own parameters, its input and its output tensor."""

    clone: bool = False
    inputs: dict[int, Tensor] = field(default_factory=dict)
    outputs: dict[int, Tensor] = field(default_factory=dict)
    versions: dict[int, tuple[int, int]] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    unsupported: bool = False

    def hook(self, i: int):
        def fn(_m: nn.Module, inputs: tuple[object, ...], output: object) -> Tensor | None:
            self.calls[i] = self.calls.get(i, 0) + 1
            if len(inputs) != 1 or not isinstance(inputs[0], Tensor) or not isinstance(output, Tensor):
                self.unsupported = True
                return None
            a = inputs[0].detach()
            self.inputs[i] = a.clone() if self.clone else a
            self.outputs[i] = output
            self.versions[i] = (inputs[0]._version, output._version)
            return output.clone() if self.clone else None

        return fn

    def stale(self) -> bool:
        """Whether a recorded input or output was modified in place later in the forward pass."""
        if self.clone:
            return False
        for i, (va, vo) in self.versions.items():
            if self.inputs[i]._version != va or self.outputs[i]._version != vo:
                return True
        return False


class LayerwiseGram:
    """``G Gᵀ`` over all parameters of ``model``, layer by layer (see the module docstring).

    Build once per surrogate; calling it on a batch returns ``(M, p)``. ``chunk_size`` bounds how many
    samples go through one forward/backward pass (the memory of the ``K − 1`` output-gradient copies).
    """

    def __init__(self, model: nn.Module, *, chunk_size: int = 256) -> None:
        self.model = model
        self.chunk_size = int(chunk_size)
        self.modules = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        self._clone = False
        self._fallback: bool | None = None
        ids = [id(p) for m in self.modules for p in m.parameters(recurse=False)]
        if len(ids) != len(set(ids)):  # a parameter shared by two modules: cross terms need the full Jacobian
            self._fallback = True

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._fallback:
            return functional_gram(self.model, x)
        outs = [self._chunk(xc) for xc in x.split(self.chunk_size)]
        if self._fallback:  # discovered on the first chunk
            return functional_gram(self.model, x)
        return torch.cat([m for m, _ in outs]), torch.cat([p for _, p in outs])

    def _forward(self, x: Tensor, clone: bool) -> tuple[_Capture, Tensor]:
        cap = _Capture(clone=clone)
        handles = [m.register_forward_hook(cap.hook(i)) for i, m in enumerate(self.modules)]
        try:
            z = self.model(x.detach().requires_grad_(True))
        finally:
            for h in handles:
                h.remove()
        return cap, z

    def _check_coverage(self, cap: _Capture, x: Tensor) -> bool:
        """True if the layer-wise decomposition is exact for this model (decided once, on the first batch)."""
        if cap.unsupported or any(c != 1 for c in cap.calls.values()):
            return False
        if any(not cap.outputs[i].requires_grad for i in cap.outputs):
            return False
        covered = {id(q) for i in cap.calls for q in self.modules[i].parameters(recurse=False)}
        named = dict(self.model.named_parameters())
        missed = [k for k, v in named.items() if id(v) not in covered]
        if not missed:
            return True
        # parameters outside the hooked calls: fall back only if the output actually depends on them
        leaves = {k: v.detach().requires_grad_(True) for k, v in named.items()}
        check = [leaves[k] for k in missed]
        with torch.enable_grad():
            out = functional_call(self.model, {**leaves, **dict(self.model.named_buffers())}, (x[:1],))
            used = torch.autograd.grad(out.sum(), check, allow_unused=True)
        return all(u is None for u in used)

    def _chunk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            cap, z = self._forward(x, self._clone)
            if cap.stale():  # an in-place op overwrote a recorded tensor: redo with copies
                self._clone = True
                cap, z = self._forward(x, True)
            if self._fallback is None:
                self._fallback = not self._check_coverage(cap, x)
            if self._fallback:
                return z.new_empty(0), z.new_empty(0)
            n, k = z.shape
            seeds = _seeds(n, k, dtype=z.dtype, device=z.device)
            order = list(cap.outputs)
            grads = torch.autograd.grad(z, [cap.outputs[i] for i in order], grad_outputs=seeds, is_grads_batched=True)
        z = z.detach()
        mb = z.new_zeros(n, k - 1, k - 1)
        for i, g in zip(order, grads):
            mb += _layer_gram(self.modules[i], cap.inputs[i], g)
        p = torch.softmax(z, dim=1)
        return _to_log_softmax(mb, p), p


def all_params_gram(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """One-off :class:`LayerwiseGram` over all parameters (MAD keeps one instance per surrogate)."""
    return LayerwiseGram(model)(x)


def functional_gram(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``G Gᵀ`` over all parameters with ``torch.func``: chunked ``vmap(jacrev(log_softmax ∘ F))``.

    Exact for any model whose per-sample output does not depend on the other rows of the batch; costs one
    ``(chunk, K, D)`` Jacobian per chunk, so it is the slow, general path.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    d = sum(v.numel() for v in params.values())

    def f(pr: dict[str, Tensor], x1: Tensor) -> tuple[Tensor, Tensor]:
        z = functional_call(model, {**pr, **buffers}, (x1.unsqueeze(0),)).squeeze(0)
        lp = torch.log_softmax(z, dim=0)
        return lp, lp

    k = None
    ms, ps = [], []
    step = 1
    i = 0
    while i < x.shape[0]:
        xc = x[i : i + step]
        jac, lp = vmap(jacrev(f, has_aux=True), in_dims=(None, 0))(params, xc)
        k = lp.shape[1]
        flat = torch.cat([v.reshape(v.shape[0], k, -1) for v in jac.values()], dim=2)
        ms.append(_pair_gram(flat))
        ps.append(lp.exp())
        i += xc.shape[0]
        step = max(1, _ELEMENT_BUDGET // max(1, k * d))
    if not ms:
        raise ValueError("empty batch")
    return torch.cat(ms), torch.cat(ps)


__all__ = [
    "LayerwiseGram", "all_params_gram", "functional_gram", "last_layer_gram", "model_dtype",
    "softmax_jacobian_gram",
]
