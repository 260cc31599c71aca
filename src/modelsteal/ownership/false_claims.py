"""The false-claim attack on a trigger-set watermark: triggers crafted after the fact as transferable adversarial
examples (Liu, Zhang, Duddu, Asokan et al., *False Claims against Model Ownership Resolution*, USENIX Security
2024, Sec. 4: a dishonest accuser builds "watermark" evidence that an *independent* model happens to satisfy,
because adversarial examples transfer between models of one task).

:func:`craft_false_triggers` runs targeted projected gradient descent (Madry et al., *Towards Deep Learning Models
Resistant to Adversarial Attacks*, ICLR 2018, Eq. 2, here descending the target's loss) in an L∞ ball of radius
``eps`` around each input, on the *average log-probabilities of an ensemble* of the accuser's own surrogate models
(ensembles transfer better: Liu, Chen, Liu & Song, *Delving into Transferable Adversarial Examples and Black-box
Attacks*, ICLR 2017, Sec. 4). All inputs are one batch. The result, labelled ``target``, is a trigger set an
independent suspect answers with the target class far more often than chance — so a verifier whose null is
"chance" (or whose null the accuser picks) accuses it. A commitment to the trigger set made at training time
(:mod:`modelsteal.ownership.commitments`) refuses such a set.

Example::

    forged = craft_false_triggers([m1, m2, m3], x_source, target=7, eps=0.25, steps=40)
    record = {"triggers": forged, "target_class": 7}        # what the accuser presents
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def craft_false_triggers(surrogates: Sequence[nn.Module], x: Tensor, *, target: int, eps: float = 0.25,
                         steps: int = 40, step_size: float | None = None,
                         clamp: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """``x`` ``(N, ...)`` moved within ``||δ||_∞ <= eps`` so that the surrogates' *mean* log-probability of
    ``target`` is as high as ``steps`` signed-gradient steps of ``step_size`` (default ``2.5·eps/steps``) get it,
    projected onto the ball and the input domain after each step."""
    if not surrogates:
        raise ValueError("crafting transferable triggers needs at least one surrogate model")
    if not eps > 0 or steps < 1:
        raise ValueError(f"need eps > 0 and steps >= 1, got eps={eps}, steps={steps}")
    size = step_size if step_size is not None else 2.5 * eps / steps
    device = next(surrogates[0].parameters()).device
    x0 = x.detach().to(device)
    t = torch.full((len(x0),), int(target), dtype=torch.long, device=device)
    for m in surrogates:
        m.eval()
    adv = x0.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        logp = torch.stack([F.log_softmax(m(adv), dim=1) for m in surrogates]).mean(0)
        loss = F.nll_loss(logp, t, reduction="sum")
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() - size * g.sign()
        adv = torch.minimum(torch.maximum(adv, x0 - eps), x0 + eps).clamp(*clamp)
    return adv.detach()
