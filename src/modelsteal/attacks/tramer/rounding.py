"""The rounding defense study (Tramèr et al., USENIX Security 2016, Sec. 7, Fig. 7).

An API may round the probabilities it reports to a few decimals. The study extracts the same victim by
equation solving (loss minimisation on random queries) from answers rounded to each number of decimals, and
compares with no rounding and with label-only extraction (adaptive retraining) at the same budget. Every
extraction goes through a :class:`~modelsteal.PredictionAPI` with the matching output format, so the
query counts are real.

Example::

    records = rounding_study(SklearnVictim(lr), data, decimals=(1, 2, 3, 4, 5))
    [(r["output"], r["r_test"]) for r in records]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from modelsteal.attacks.tramer.equation_solving import EquationSolving
from modelsteal.attacks.tramer.retraining import Retraining
from modelsteal.blackbox import PredictionAPI
from modelsteal.data.tabular import TabularDataset
from modelsteal.metrics.extraction import r_test, r_unif

__all__ = ["rounding_study"]


def rounding_study(victim: nn.Module, data: TabularDataset, *, decimals: Sequence[int] = (1, 2, 3, 4, 5),
                   budget: int | None = None, model: str = "logistic", label_only: str | None = "adaptive",
                   rounds: int = 10, seed: int = 0, n_unif: int = 10_000,
                   device: str | torch.device | None = None) -> list[dict[str, Any]]:
    """One record per output format: unrounded, rounded to each of ``decimals``, and label-only.

    ``victim`` is an ``nn.Module`` returning logits (e.g. :class:`SklearnVictim`); ``budget`` defaults to
    the number of unknowns of ``model``. Records hold ``output``, ``attack``, ``queries``, ``r_test`` and
    ``r_unif`` (total variation to the undefended posteriors; ``None`` for the label-only clone, which
    has no calibrated probabilities) and ``r_test_labels``/``r_unif_labels`` (0-1 distance).
    ``label_only`` names the retraining strategy (``None`` skips it).
    """
    if any(k < 0 for k in decimals):
        raise ValueError(f"decimals must be >= 0, got {tuple(decimals)}")
    reference = PredictionAPI(victim, device=device)
    x_test = torch.from_numpy(data.x_test)
    attack = EquationSolving(space=data.space, model=model, method="optimize", device=device)
    m = budget if budget is not None else attack.unknowns(reference.num_classes)

    def truth(x: torch.Tensor) -> torch.Tensor:
        return reference.posteriors(x).cpu()

    def evaluate(clone: nn.Module, *, probs: bool) -> dict[str, float | None]:
        def pred(x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(clone(x), dim=1).detach().cpu()

        out: dict[str, float | None] = {
            "r_test_labels": r_test(truth, pred, x_test, labels=True),
            "r_unif_labels": r_unif(truth, pred, sampler=data.space.sample, n=n_unif, seed=seed, labels=True),
        }
        out["r_test"] = r_test(truth, pred, x_test) if probs else None
        out["r_unif"] = r_unif(truth, pred, sampler=data.space.sample, n=n_unif, seed=seed) if probs else None
        return out

    records: list[dict[str, Any]] = []
    for output in ["probs", *(f"rounded-{k}" for k in decimals)]:
        api = PredictionAPI(victim, output=output, device=device)
        result = attack(api, budget=m, seed=seed)
        records.append({"output": output, "attack": "equation-solving", "queries": result.queries,
                        **evaluate(result.clone, probs=True)})
    if label_only is not None:
        api = PredictionAPI(victim, output="label", device=device)
        clone_model = "linear" if model in ("logistic", "ovr") else "mlp"
        result = Retraining(space=data.space, strategy=label_only, model=clone_model, rounds=rounds,
                            device=device)(api, budget=m, seed=seed)
        records.append({"output": "label", "attack": f"retraining-{label_only}", "queries": result.queries,
                        **evaluate(result.clone, probs=False)})
    return records
