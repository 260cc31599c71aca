"""DFME: Truong, Maini, Walls and Papernot, "Data-Free Model Extraction", CVPR 2021.

The clone (student) learns from images a generator makes to maximise the student-victim disagreement, the L1
distance between the student's logits and the victim's logits recovered from its probabilities
(``log p − mean log p``, Sec. 3.3); the generator's gradient through the black box is a forward-difference
estimate (Sec. 3.2, Eq. 5) along ``m = 1`` random direction with ``ε = 10⁻³``. Settings of the authors' code
(``cake-lab/datafree-model-extraction``, commit 0043ec4, ``dfme/train.py``, ``main()``'s argument defaults):
``g_iter 1``, ``d_iter 5`` (student steps per generator step), ``lr_S 0.1`` (SGD, momentum 0.9, weight decay
5e-4), ``lr_G 1e-4`` (Adam), ``nz 256``, ``grad_m 1``, ``grad_epsilon 1e-3``, ``loss l1``,
``logit_correction mean``; ``dfme/approximate_gradients.py``, ``estimate_gradient_objective``: probes in the
generator's pre-activation space, forward differences scaled by the dimension. Their batch is 256; here 64 by
default (CPU scale; set ``batch_size: 256`` for the paper's).
"""

from __future__ import annotations

from typing import Any

from modelsteal.attacks.base import register_attack
from modelsteal.attacks.data_free import DataFreeAttack


@register_attack("dfme")
class DFME(DataFreeAttack):
    """Data-Free Model Extraction (Truong et al., CVPR 2021).

    Example::

        attack = DFME(clone="lenet", batch_size=256)
        result = attack(api, budget=2_000_000)

    Options: those of :class:`~modelsteal.attacks.data_free.DataFreeAttack` with DFME's defaults.
    """

    def __init__(self, **options: Any) -> None:
        options.setdefault("disagreement", "l1")
        super().__init__(**options)
