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
in the surrogate's floating dtype. Used by the MAD defense and by the angular-deviation metric
(:func:`modelsteal.metrics.posterior.angular_deviation`), hence its place next to the models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap

from modelsteal.models.builders import last_linear

# Upper bound on the number of elements of any temporary built per chunk (about 64 MiB in float32).
_ELEMENT_BUDGET = 1 << 24
# Upper bound on the per-chunk features kept by the layer plans (about 128 MiB in float32); a chunk over it is
# split and the chunk size lowered for the following calls.
_PLAN_BUDGET = 1 << 25


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


class _Plan:
    """Accumulates one layer's contribution to ``Mb`` from the per-sample output gradients, seed by seed.

    Built once per chunk from the layer input ``a`` (n, ...); :meth:`add` maps the output gradient ``g``
    (n, *out) of seed ``s`` to a feature row stored in an ``(n, S, D)`` buffer; :meth:`gram` returns the
    ``(n, S, S)`` contribution. Only these features outlive a backward pass. The base class is the plain
    case ``⟨∇^s, ∇^t⟩ = scale · (g_s · g_t)``.
    """

    def __init__(self, n: int, seeds: int, dim: int, like: Tensor, *, scale: Tensor | None = None) -> None:
        self.shape = (n, seeds, dim)
        self.like = like
        self.scale = scale
        self._buf: Tensor | None = None

    @property
    def buf(self) -> Tensor:
        if self._buf is None:
            self._buf = self.like.new_empty(self.shape)
        return self._buf

    def numel(self) -> int:
        """Elements this plan will hold for the chunk (features and precomputed tensors)."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    def feature(self, g: Tensor) -> Tensor:
        return g.reshape(g.shape[0], -1)

    def add(self, s: int, g: Tensor) -> None:
        self.buf[:, s] = self.feature(g)

    def gram(self) -> Tensor:
        m = _pair_gram(self.buf)
        return m if self.scale is None else m * self.scale[:, None, None]


def _by_channel(g: Tensor, n: int, o: int) -> Tensor:
    """``g`` (n, O, *spatial) as an (n, O, P) view when its layout allows (channels-last too), else a copy."""
    if g.ndim == 4 and not g.is_contiguous() and g.is_contiguous(memory_format=torch.channels_last):
        return g.permute(0, 2, 3, 1).reshape(n, -1, o).transpose(1, 2)
    return g.reshape(n, o, -1)


def _patches(a: Tensor, kernel: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int],
             stride: tuple[int, int]) -> Tensor:
    """Patches of a 2-d convolution's input as ``(n, P, F)``: ``P`` output positions, ``F = C·kh·kw`` values.

    Like ``F.unfold`` (transposed) but through one strided view and one copy in the input's memory order, which
    is several times faster; the order of the ``F`` values differs (it does not matter for inner products).
    """
    if any(padding):
        a = F.pad(a, (padding[1], padding[1], padding[0], padding[0]))
    n, c, h, w = a.shape
    ho = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    wo = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = a.stride()
    pos = (ho, wo, kernel[0], kernel[1])
    pos_strides = (sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1])
    if a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
        v = a.as_strided((n, *pos, c), (sn, *pos_strides, sc))  # channels innermost, as stored
        return v.reshape(n, ho * wo, -1)
    v = a.as_strided((n, c, kernel[0], kernel[1], ho, wo), (sn, sc, *pos_strides[2:], *pos_strides[:2]))
    return v.reshape(n, -1, ho * wo).transpose(1, 2)


class _PatchPlan(_Plan):
    """Layer linear in patches ``U`` (n, P, F): per sample ``∇_W^s = g_s U`` (+ bias ``g_s 1``), with ``g_s``
    (n, O, P). Two exact forms; the constructor picks the one with fewer multiply-adds for ``S`` seeds:

    (a) features ``vec(g_s [U, 1])`` (O·(F+1) per sample): ``⟨∇_W^s, ∇_W^t⟩`` is their dot product;
    (b) ``⟨∇_W^s, ∇_W^t⟩ = Σ_o Σ_{p,q} g_s[o,p] g_t[o,q] K_pq`` with the position kernel ``K = UUᵀ (+ 1)``:
        store ``g_s`` and finish with ``H = g K`` and ``Σ_{o,q} H_s[o,q] g_t[o,q]`` (two batched products).

    ``patches`` computes ``U`` on first use, so that the memory check runs before anything large exists.
    """

    def __init__(self, patches: Callable[[], Tensor], like: Tensor, *, n: int, f: int, npos: int, bias: bool,
                 out_features: int, seeds: int) -> None:
        s, o = seeds, out_features
        fb = f + (1 if bias else 0)
        cost_a = s * o * npos * fb + s * s * o * fb
        cost_b = npos * npos * f + s * o * npos * npos + s * s * o * npos
        self.patches, self.bias = patches, bias
        self.n, self.o, self.npos, self.fb = n, o, npos, fb
        self.form_a = cost_a <= cost_b
        self.positions_first = False
        self._mat: Tensor | None = None  # (a): [U, 1] (n, P, F+1); (b): K (n, P, P)
        super().__init__(n, s, o * fb if self.form_a else o * npos, like)

    @property
    def mat(self) -> Tensor:
        if self._mat is None:
            u = self.patches()
            if self.form_a:
                self._mat = torch.cat([u, u.new_ones(self.n, self.npos, 1)], dim=2) if self.bias else u
            else:
                kern = u @ u.transpose(1, 2)
                self._mat = kern + 1 if self.bias else kern
        return self._mat

    def numel(self) -> int:
        return super().numel() + self.n * self.npos * (self.fb if self.form_a else self.npos)

    def by_channel(self, g: Tensor) -> Tensor:
        return _by_channel(g, self.n, self.o)

    def add(self, s: int, g: Tensor) -> None:
        g = self.by_channel(g)  # (n, O, P), possibly a transposed view of channels-last memory
        if self.form_a:
            self.buf[:, s] = (g @ self.mat).reshape(self.n, -1)
            return
        if s == 0:  # store (b)'s gradients in the order they are laid out in: (O, P) or (P, O)
            self.positions_first = g.stride(1) == 1 and self.o > 1
        dest = self.buf[:, s].view(self.n, *((self.npos, self.o) if self.positions_first else (self.o, self.npos)))
        dest.copy_(g.transpose(1, 2) if self.positions_first else g)

    def gram(self) -> Tensor:
        if self.form_a:
            return _pair_gram(self.buf)
        n, s = self.buf.shape[:2]
        if self.positions_first:  # H_s = K g_s with g_s as (P, O)
            h = self.mat.unsqueeze(1) @ self.buf.view(n, s, self.npos, self.o)
        else:  # H_s = g_s K with g_s as (O, P)
            h = self.buf.view(n, s * self.o, self.npos) @ self.mat
        return h.reshape(n, s, -1) @ self.buf.transpose(1, 2)


class _SequencePlan(_PatchPlan):
    """Linear layer on ``(n, *T, in)`` inputs: the positions ``T`` play the role of a convolution's patches."""

    def by_channel(self, g: Tensor) -> Tensor:
        return g.reshape(self.n, -1, self.o).transpose(1, 2)


def _linear_plan(layer: nn.Linear, a: Tensor, seeds: int) -> _Plan:
    """Linear ``y = W a + b``: per sample ``∇_W = g aᵀ``, so ``⟨∇_W^s, ∇_W^t⟩ = (g_s·g_t)(a·a)`` plus ``g_s·g_t``
    for the bias. Inputs with extra dims ``(n, *T, in)`` sum over the positions ``T`` (:class:`_SequencePlan`)."""
    n = a.shape[0]
    if a.ndim == 2:
        scale = (a * a).sum(dim=1) + (1.0 if layer.bias is not None else 0.0)
        return _Plan(n, seeds, layer.out_features, a, scale=scale)
    u = a.reshape(n, -1, a.shape[-1])  # (n, T, in)
    return _SequencePlan(lambda: u, a, n=n, f=u.shape[2], npos=u.shape[1], bias=layer.bias is not None,
                         out_features=layer.out_features, seeds=seeds)


def _conv_plan(layer: nn.Conv1d | nn.Conv2d, a: Tensor, out: Tensor, seeds: int) -> _Plan:
    """Convolution as a linear map on its input patches (:func:`_patches`): ``∇_W^s = g_s U`` per sample."""
    if isinstance(layer, nn.Conv1d):
        a = a.unsqueeze(2)
        kernel, dil = (1, *layer.kernel_size), (1, *layer.dilation)
        pad, stride = (0, *layer.padding), (1, *layer.stride)
    else:
        kernel, dil, pad, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    n, f = a.shape[0], a.shape[1] * math.prod(kernel)
    npos = math.prod(out.shape[2:])
    return _PatchPlan(lambda: _patches(a, kernel, dil, pad, stride), a, n=n, f=f, npos=npos,
                      bias=layer.bias is not None, out_features=layer.out_channels, seeds=seeds)


class _BatchNormPlan(_Plan):
    """Eval-mode BatchNorm ``y = γ x̂ + β`` with running statistics: ``∇γ_c = Σ g x̂``, ``∇β_c = Σ g`` per sample."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm, a: Tensor, seeds: int) -> None:
        n, c = a.shape[0], a.shape[1]
        shape = (1, -1) + (1,) * (a.ndim - 2)
        self.xhat = (a - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)
        self.weight, self.bias = layer.weight is not None, layer.bias is not None
        super().__init__(n, seeds, c * (int(self.weight) + int(self.bias)), a)

    def feature(self, g: Tensor) -> Tensor:
        def total(t: Tensor) -> Tensor:  # sum over the positions, in any memory layout
            return t if t.ndim == 2 else t.sum(dim=tuple(range(2, t.ndim)))

        parts = ([total(g * self.xhat)] if self.weight else []) + ([total(g)] if self.bias else [])
        return torch.cat(parts, dim=1)


class _FunctionalPlan(_Plan):
    """Any other layer with its own parameters: per-sample ``vjp`` through that layer alone (``torch.func``)."""

    def __init__(self, layer: nn.Module, a: Tensor, seeds: int) -> None:
        self.layer, self.a = layer, a
        self.params = {k: v.detach() for k, v in layer.named_parameters(recurse=False)}
        dim = sum(v.numel() for v in self.params.values())
        self.step = max(1, _ELEMENT_BUDGET // max(1, dim))
        super().__init__(a.shape[0], seeds, dim, a)

    def _per_sample(self, a1: Tensor, g1: Tensor) -> Tensor:
        _, pull = vjp(lambda pr: functional_call(self.layer, pr, (a1.unsqueeze(0),)).squeeze(0), self.params)
        return torch.cat([v.reshape(-1) for v in pull(g1)[0].values()])

    def feature(self, g: Tensor) -> Tensor:
        a, step = self.a, self.step
        return torch.cat([vmap(self._per_sample)(a[i : i + step], g[i : i + step]) for i in range(0, len(a), step)])


def _layer_plan(layer: nn.Module, a: Tensor, out: Tensor, seeds: int) -> _Plan:
    if isinstance(layer, nn.Linear):
        return _linear_plan(layer, a, seeds)
    if (
        isinstance(layer, (nn.Conv1d, nn.Conv2d))
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    ):
        return _conv_plan(layer, a, out, seeds)
    if (
        isinstance(layer, nn.modules.batchnorm._BatchNorm)
        and not layer.training
        and layer.running_mean is not None
        and layer.running_var is not None
    ):
        return _BatchNormPlan(layer, a, seeds)
    return _FunctionalPlan(layer, a, seeds)


_RETRY = object()


@dataclass
class _Capture:
    """Forward hooks recording, for each module with its own parameters, its input and its output tensor."""

    clone: bool = False
    inputs: dict[int, Tensor] = field(default_factory=dict)
    outputs: dict[int, Tensor] = field(default_factory=dict)
    versions: dict[int, tuple[int, int]] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)
    unsupported: bool = False

    def hook(self, i: int) -> Callable[[nn.Module, tuple[object, ...], object], Tensor | None]:
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
    """``G Gᵀ`` over all parameters of ``model``, layer by layer, without forming ``G``.

    For every module with parameters of its own, a forward hook records its input ``a`` and output ``y``.
    Since ``Σ_k c_k = 0`` for ``c_k = δ_ik − p_i``, ``∇ log p_k`` is a combination of the ``K − 1`` vectors
    ``∇(z_i − z_K)`` (see :func:`_to_log_softmax`), so ``K − 1`` backward passes, with cotangents
    ``e_i − e_K`` on the logits, give every per-sample output gradient ``g_i = ∂(z_i − z_K)/∂y``. A layer's
    share of the Gram matrix then follows from ``(a, g)`` alone: ``(g_i·g_j)(||a||² + 1)`` for Linear, the
    patch identities of :class:`_PatchPlan` for Conv1d/Conv2d (zero padding, one group), ``γ``/``β``
    gradients for eval-mode BatchNorm, and a per-sample ``torch.func.vjp`` through the layer alone for
    anything else (LayerNorm, GroupNorm, Embedding, custom layers). Parameter-free layers need nothing.
    Costs: one forward pass, ``K − 1`` backward passes (input gradients only, no weight gradients) and
    the per-layer products; memory: the recorded activations plus ``(K − 1)`` small features per layer.

    Exactness needs each sample's output to depend on that sample only (eval mode: BatchNorm with running
    statistics) and each parameter to be used by one call of one module. Checked on the first batch:
    a module called twice, a parameter shared between modules, a non-tensor or multi-input layer, or an
    output that depends on parameters outside the hooked calls switch to :func:`functional_gram`. An
    in-place operation that overwrites a recorded tensor is detected (tensor versions) and the forward
    pass is redone with copies.

    Build once per surrogate; calling it on a batch returns ``(M, p)``. ``chunk_size`` is how many samples
    go through one forward/backward pass. By default (``None``) it is 64 on CPU with one intra-op thread
    (the per-seed gradients then stay in cache), 256 with several threads (fewer, larger operations, each
    paying one thread synchronisation) and 1024 on GPU. It is lowered
    automatically when a chunk's features would exceed ``_PLAN_BUDGET`` elements.
    """

    def __init__(self, model: nn.Module, *, chunk_size: int | None = None) -> None:
        self.model = model
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._budget_chunk: int | None = None  # set when a chunk exceeded _PLAN_BUDGET
        self.modules = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
        self._clone = False
        self._fallback: bool | None = None
        ids = [id(p) for m in self.modules for p in m.parameters(recurse=False)]
        if len(ids) != len(set(ids)):  # a parameter shared by two modules: cross terms need the full Jacobian
            self._fallback = True

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode(False), torch.enable_grad():  # works even when called in inference mode
            return self._call(x.clone() if x.is_inference() else x)

    def _call(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ms, ps = [], []
        i = 0
        while i < x.shape[0]:
            xc = x[i : i + self._chunk_rows(x)]
            out = None if self._fallback else self._chunk(xc)
            if out is None:  # the layer-wise decomposition does not apply to this model
                return functional_gram(self.model, x)
            if out is _RETRY:  # chunk too large for the plan budget: the chunk size was lowered
                continue
            ms.append(out[0])
            ps.append(out[1])
            i += xc.shape[0]
        return torch.cat(ms), torch.cat(ps)

    def _chunk_rows(self, x: Tensor) -> int:
        rows = self.chunk_size
        if rows is None:
            rows = 1024 if x.device.type != "cpu" else 64 if torch.get_num_threads() <= 1 else 256
        return max(1, min(rows, self._budget_chunk or rows))

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

    def _chunk(self, x: Tensor) -> tuple[Tensor, Tensor] | object | None:
        with torch.enable_grad():  # (autograd is needed even when the caller disabled it)
            cap, z = self._forward(x, self._clone)
            if cap.stale():  # an in-place op overwrote a recorded tensor: redo with copies
                self._clone = True
                cap, z = self._forward(x, True)
            if self._fallback is None:
                self._fallback = not self._check_coverage(cap, x)
            if self._fallback:
                return None
            n, k = z.shape
            order = list(cap.outputs)
            plans = [_layer_plan(self.modules[i], cap.inputs[i], cap.outputs[i], k - 1) for i in order]
            footprint = sum(plan.numel() for plan in plans)
            if footprint > _PLAN_BUDGET and n > 1:
                self._budget_chunk = max(1, n * _PLAN_BUDGET // footprint)
                return _RETRY
            outs = [cap.outputs[i] for i in order]
            for s in range(k - 1):  # cotangent e_s − e_K (a fresh tensor: a gradient may alias it)
                seed = torch.zeros_like(z)
                seed[:, s] = 1
                seed[:, k - 1] = -1
                grads = torch.autograd.grad(z, outs, grad_outputs=seed, retain_graph=s < k - 2,
                                            materialize_grads=True)
                for plan, g in zip(plans, grads, strict=True):
                    plan.add(s, g)
        z = z.detach()
        mb = z.new_zeros(n, k - 1, k - 1)
        for plan in plans:
            mb += plan.gram()
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
    with torch.inference_mode(False), torch.enable_grad():
        return _functional_gram(model, x.clone() if x.is_inference() else x)


def _functional_gram(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    d = sum(v.numel() for v in params.values())

    def f(pr: dict[str, Tensor], x1: Tensor) -> tuple[Tensor, Tensor]:
        z = functional_call(model, {**pr, **buffers}, (x1.unsqueeze(0),)).squeeze(0)
        lp = torch.log_softmax(z, dim=0)
        return lp, lp

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
        raise ValueError("functional_gram needs a non-empty batch")
    return torch.cat(ms), torch.cat(ps)


__all__ = [
    "LayerwiseGram", "all_params_gram", "functional_gram", "last_layer_gram", "model_dtype",
    "softmax_jacobian_gram",
]
