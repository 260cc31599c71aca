"""MAZE: Kariyappa, Prakash and Qureshi, "MAZE: Data-Free Model Stealing Attack Using Zeroth-Order Gradient
Estimation", CVPR 2021.

The generator maximises the KL divergence between the victim's and the clone's posteriors (Eq. 3), its
gradient estimated through the black box by forward differences along ``m`` random directions (Eq. 6); the
clone minimises the same KL on fresh generator samples and, with experience replay (Sec. 4.3), on batches of
earlier queries. Settings: the MAZE replication block of the DFME authors' code (``cake-lab/
datafree-model-extraction``, commit 0043ec4, ``dfme/train.py``, ``main()``, ``if args.MAZE:``): ``loss kl``,
``batch_size 128``, ``g_iter 1``, ``d_iter 5``, ``grad_m 10``, ``lr_G 1e-4`` with SGD (momentum 0.9),
``lr_S 0.1``. The replay steps per iteration (here 5) are not pinned from the authors' code.
"""

from __future__ import annotations

from typing import Any

from modelsteal.attacks.base import register_attack
from modelsteal.attacks.data_free import DataFreeAttack


@register_attack("maze")
class MAZE(DataFreeAttack):
    """MAZE (Kariyappa et al., CVPR 2021): KL disagreement, ``m = 10`` directions, experience replay.

    Options: those of :class:`~modelsteal.attacks.data_free.DataFreeAttack` with MAZE's defaults.
    """

    def __init__(self, **options: Any) -> None:
        for k, v in {"disagreement": "kl", "batch_size": 128, "directions": 10, "generator_optimizer": "sgd",
                     "replay_steps": 5}.items():
            options.setdefault(k, v)
        super().__init__(**options)
