"""Tramèr et al., "Stealing Machine Learning Models via Prediction APIs" (USENIX Security 2016).

Extraction attacks on tabular models behind a :class:`~modelsteal.BlackBox`, one algorithm per module:

- :mod:`.equation_solving` — :class:`EquationSolving` (Sec. 4.1, Table 4): exact for logistic models
  (``d + 1`` queries), regularised loss minimisation for softmax, one-vs-rest and MLP models;
- :mod:`.path_finding` — :class:`PathFinding` (Sec. 4.2, Algorithm 1, Table 6) on a leaf-identity oracle,
  with the top-down variant for incomplete queries;
- :mod:`.lowd_meek` — :class:`LowdMeek` (Sec. 5.1): label-only line search for linear binary models;
- :mod:`.retraining` — :class:`Retraining` (Sec. 5.2): uniform, line-search and adaptive query selection;
- :mod:`.rounding` — :func:`rounding_study` (Sec. 7, Fig. 7);
- :mod:`.runner` — :func:`run_tramer`, one attack on a fitted scikit-learn model measured with ``R_test`` and
  ``R_unif`` (what ``modelsteal tramer`` runs). The victims (scikit-learn estimators as modules, their PyTorch
  equivalents and the tree oracle) live in :mod:`modelsteal.tabular`.

Importing this package registers the four attacks (``equation-solving``, ``path-finding``, ``lowd-meek``,
``retraining``).
"""

from modelsteal.attacks.tramer.equation_solving import EquationSolving
from modelsteal.attacks.tramer.lowd_meek import LowdMeek, bisect_segments
from modelsteal.attacks.tramer.path_finding import ExtractedTree, PathFinding
from modelsteal.attacks.tramer.retraining import Retraining
from modelsteal.attacks.tramer.rounding import rounding_study
from modelsteal.tabular import (
    SklearnVictim,
    TabularLinear,
    TabularMLP,
    TabularTree,
    TreeOracle,
    fit_victim,
    raw_linear_parameters,
    torch_equivalent,
    victim_kind,
)

__all__ = [
    "EquationSolving", "ExtractedTree", "LowdMeek", "PathFinding", "Retraining", "SklearnVictim", "TabularLinear",
    "TabularMLP", "TabularTree", "TreeOracle", "bisect_segments", "fit_victim", "raw_linear_parameters",
    "rounding_study", "torch_equivalent", "victim_kind",
]
