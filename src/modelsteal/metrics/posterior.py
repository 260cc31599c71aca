"""Metrics on posteriors and classifiers (Orekondy et al., ICLR 2020, Sec. 3 and 5).

- defender accuracy: accuracy of the *defended* API's argmax on the test split (utility (a));
- attacker accuracy: the clone's test accuracy (non-replicability);
- fidelity: agreement of the clone's argmax with the *undefended* victim's argmax on the test split;
- perturbation size ``||ỹ − y||_p`` (L1, L2; utility (b)) and the Hellinger distance
  ``H(y, ỹ) = ||√y − √ỹ||₂ / √2`` between undefended and defended posteriors;
- detection true/false positive rates for query detectors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modelsteal.training import accuracy as model_accuracy
from modelsteal.training import predict_logits


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"posterior batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")


def l1_distance(y: Tensor, y_tilde: Tensor) -> Tensor:
    """Per-row ``||ỹ − y||₁``."""
    _check_pair(y, y_tilde)
    return (y_tilde - y).abs().sum(dim=1)


def l2_distance(y: Tensor, y_tilde: Tensor) -> Tensor:
    """Per-row ``||ỹ − y||₂``."""
    _check_pair(y, y_tilde)
    return (y_tilde - y).norm(dim=1)


def hellinger_distance(y: Tensor, y_tilde: Tensor) -> Tensor:
    """Per-row Hellinger distance ``||√y − √ỹ||₂ / √2`` in [0, 1]."""
    _check_pair(y, y_tilde)
    return (y.clamp_min(0).sqrt() - y_tilde.clamp_min(0).sqrt()).norm(dim=1) / math.sqrt(2.0)


def argmax_accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose argmax equals the label (defender accuracy when ``probs`` are defended)."""
    if len(labels) == 0:
        raise ValueError("accuracy on an empty set")
    return float((probs.argmax(dim=1).cpu() == labels.cpu()).float().mean())


def fidelity(
    clone: torch.nn.Module, x: Tensor, reference_probs: Tensor, *, device: torch.device | str | None = None
) -> float:
    """Agreement of ``clone``'s top-1 with the undefended victim's top-1 (``reference_probs``) on ``x``."""
    pred = predict_logits(clone, x, device=device).argmax(dim=1).cpu()
    return float((pred == reference_probs.argmax(dim=1).cpu()).float().mean())


def attacker_accuracy(
    clone: torch.nn.Module, x: Tensor, y: Tensor, *, device: torch.device | str | None = None
) -> float:
    """The clone's top-1 accuracy on the test split."""
    return model_accuracy(clone, x, y, device=device)


def detection_rates(flagged: Tensor, is_attack: Tensor) -> dict[str, float]:
    """True positive rate on attack queries and true negative rate on benign ones."""
    flagged, is_attack = flagged.bool().cpu(), is_attack.bool().cpu()
    if flagged.shape != is_attack.shape:
        raise ValueError("flagged and is_attack must have the same shape")
    pos, neg = is_attack.sum().item(), (~is_attack).sum().item()
    tpr = (flagged & is_attack).sum().item() / pos if pos else float("nan")
    tnr = (~flagged & ~is_attack).sum().item() / neg if neg else float("nan")
    return {"tpr": tpr, "tnr": tnr, "fpr": 1 - tnr if neg else float("nan"), "fnr": 1 - tpr if pos else float("nan")}


def perturbation_summary(y: Tensor, y_tilde: Tensor) -> dict[str, float]:
    """Means and standard deviations of L1, L2 and Hellinger distances over a batch."""
    out: dict[str, float] = {}
    for name, fn in (("l1", l1_distance), ("l2", l2_distance), ("hellinger", hellinger_distance)):
        d = fn(y.double(), y_tilde.double())
        out[f"{name}_mean"] = float(d.mean())
        out[f"{name}_std"] = float(d.std()) if len(d) > 1 else 0.0
    return out


def angular_deviation(
    model: torch.nn.Module, x: Tensor, y: Tensor, y_tilde: Tensor, *, jacobian: str = "all"
) -> Tensor:
    """Per-sample angle in degrees between the attacker's true and poisoned gradients (PP paper, Fig. 6).

    With the cross-entropy loss the attacker's descent directions are ``u = Gᵀy`` and ``a = Gᵀỹ`` (Eq. 1,
    2) with ``G = ∇_w log F(x; w)`` taken at ``model``'s current weights, so
    ``θ = arccos(yᵀMỹ / sqrt(yᵀMy · ỹᵀMỹ))`` needs only the Gram matrix ``M = G Gᵀ`` (all parameters, or
    the last linear layer with ``jacobian="last_layer"``), computed without materialising ``G``.
    """
    from modelsteal.models.gram import all_params_gram, last_layer_gram, model_dtype

    _check_pair(y, y_tilde)
    if jacobian not in ("all", "last_layer"):
        raise ValueError(f"jacobian must be 'all' or 'last_layer', got {jacobian!r}")
    device = next(model.parameters()).device
    dtype = model_dtype(model)
    was_training = model.training
    model.eval()
    try:
        gram_fn = all_params_gram if jacobian == "all" else last_layer_gram
        m, _ = gram_fn(model, x.to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
    a, b = y.to(m), y_tilde.to(m)
    ma, mb = (m @ a.unsqueeze(-1)).squeeze(-1), (m @ b.unsqueeze(-1)).squeeze(-1)
    cos = (a * mb).sum(1) / ((a * ma).sum(1) * (b * mb).sum(1)).clamp_min(torch.finfo(m.dtype).tiny).sqrt()
    return torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).cpu()
