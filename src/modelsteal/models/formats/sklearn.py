"""scikit-learn estimators (or pipelines) with ``predict_proba``, pickled with joblib or pickle.

Images are flattened (in the spec's layout) into the feature vector the estimator was fitted on; tabular models
take ``(D,)`` inputs, ``D`` the estimator's ``n_features_in_``. The answers are probabilities; the class names are
the estimator's ``classes_``. No gradients, no features.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.models.checkpoint import sniff_model_file
from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, first_line, register_format
from modelsteal.models.formats.spec import ModelSpec


class SklearnModule(nn.Module):
    """``estimator.predict_proba`` as a module: ``(N, ...)`` in (flattened to ``(N, D)``), ``(N, K)`` out."""

    def __init__(self, estimator: Any) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: Tensor) -> Tensor:
        probs = self.estimator.predict_proba(x.detach().reshape(len(x), -1).cpu().numpy())
        return torch.as_tensor(probs).to(x.device)

    def __deepcopy__(self, memo: dict) -> SklearnModule:
        return self


def read_estimator(source: str) -> Any:
    """The fitted estimator pickled at ``source`` (joblib or pickle); a one-line ``ValueError`` when the file does
    not unpickle or holds no estimator. Unpickling runs code: load only files you trust."""
    import joblib

    try:
        est = joblib.load(Path(source))
    except Exception as e:  # noqa: BLE001 - whatever unpickling a user's file raises, the file is not a model
        raise ValueError(f"{source} is not a scikit-learn model saved with joblib (loading it failed: "
                         f"{first_line(e)})") from None
    if not hasattr(est, "predict"):
        raise ValueError(f"{source} holds a {type(est).__name__}, not a fitted scikit-learn estimator")
    return est


@register_format("sklearn")
class SklearnFormat(ModelFormat):
    """A joblib/pickle file whose first class is a ``sklearn.`` one (possibly compressed)."""

    description = "a scikit-learn pickle"
    gradients = False
    features = False

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        return facts.path is not None and not facts.members and sniff_model_file(facts.path) == "sklearn"

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        est = read_estimator(source)
        if not hasattr(est, "predict_proba"):
            raise ValueError(f"{source} holds a {type(est).__name__} without predict_proba; modelsteal serves "
                             "probabilities (label-only estimators: modelsteal tramer --output label)")
        if spec.outputs == "logits":
            raise ValueError(f"{source} is a scikit-learn model: it answers probabilities (predict_proba), not logits")
        d = getattr(est, "n_features_in_", None)
        shape = spec.input_shape or ((int(d),) if d is not None else None)
        if d is not None and shape is not None and int(torch.tensor(shape).prod()) != int(d):
            raise ValueError(f"the spec says inputs {tuple(shape)} ({int(torch.tensor(shape).prod())} values), but "
                             f"{source} was fitted on {int(d)} features")
        classes = spec.classes
        if classes is None and hasattr(est, "classes_"):
            classes = tuple(str(c) for c in est.classes_)
        filled = dataclasses.replace(spec, input_shape=shape, classes=classes, outputs="probs",
                                     dtype=spec.dtype or "float64")
        return Loaded(module=SklearnModule(est), spec=filled, meta={"estimator": type(est).__name__}, native=est)
