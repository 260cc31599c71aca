"""Tabular victims for the Tramèr et al. (USENIX Security 2016) extraction suite, one kind per module:

- :mod:`.sklearn_victim` — :class:`SklearnVictim`, a fitted scikit-learn classifier as an ``nn.Module``
  returning float64 logits with ``softmax(z) = predict_proba``; :func:`victim_kind`,
  :func:`raw_linear_parameters` and :func:`fit_victim` (the victims the docs and tests use);
- :mod:`.tabular` — PyTorch equivalents: :class:`TabularLinear` (binary, softmax and one-vs-rest logistic
  regression), :class:`TabularMLP` and :class:`TabularTree`, built from scratch or converted with
  :func:`torch_equivalent`; the equation-solving and retraining attacks fit the first two as clones;
- :mod:`.tree_oracle` — :class:`TreeOracle`, the leaf-identity oracle of the paper's Sec. 4.2 (answers
  ``[id, label, confidence]``, accepts incomplete queries).
"""

from modelsteal.tabular.sklearn_victim import (
    ACTIVATIONS,
    VICTIM_KINDS,
    SklearnVictim,
    fit_victim,
    raw_linear_parameters,
    victim_kind,
)
from modelsteal.tabular.sklearn_victim import (
    sklearn_logits as sklearn_logits,  # public here too
)
from modelsteal.tabular.tabular import (
    Standardize,
    TabularLinear,
    TabularMLP,
    TabularTree,
    torch_equivalent,
)
from modelsteal.tabular.tree_oracle import TreeOracle

__all__ = [
    "ACTIVATIONS", "VICTIM_KINDS", "SklearnVictim", "Standardize", "TabularLinear", "TabularMLP", "TabularTree",
    "TreeOracle", "fit_victim", "raw_linear_parameters", "torch_equivalent", "victim_kind",
]
