"""One registry of model-file formats, the wrapper every loaded file becomes, and the check at load.

Each format (:mod:`~modelsteal.models.formats.checkpoint`, ``torchscript``, ``exported``, ``onnx``,
``sklearn``, ``python``) is a :class:`ModelFormat` registered by name: it tells from a file's first bytes
whether the file is its kind (:meth:`ModelFormat.sniff`) and loads it (:meth:`ModelFormat.load`) into a
module that takes inputs as the *file* wants them (its dtype and layout). :func:`load_model` picks the format
(``--format`` or sniffed), merges the spec, wraps the module in :class:`SpecModel` — which turns the toolkit's
raw ``[0, 1]`` inputs into the file's and the file's answers into logits — and runs one dummy forward so a
spec that does not fit the model is a one-line ``ValueError`` at load, before anything is served or queried.
"""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal.models.formats.spec import DTYPES, ModelSpec, read_spec, spec_path_beside

_FORMATS: Registry[Any] = Registry("model format", package="modelsteal.models.formats")

#: bytes read to tell a file's format
HEAD_BYTES = 1 << 16
#: how far rows may be from summing to one and still count as probabilities (the file's own rounding)
PROBS_ATOL = 1e-4


@dataclass(frozen=True)
class FileFacts:
    """What :meth:`ModelFormat.sniff` sees of a file: its path, first bytes and (for a zip) member names."""

    source: str
    path: Path | None
    head: bytes = b""
    members: tuple[str, ...] = ()


@dataclass
class Loaded:
    """What a format's :meth:`ModelFormat.load` returns: the module on the file's inputs, the spec completed
    with what the file knows (input shape, classes, dtype, outputs), metadata, and the native object
    (the ``InferenceSession``, the estimator, the ``ExportedProgram``...)."""

    module: nn.Module
    spec: ModelSpec
    meta: dict[str, Any] = field(default_factory=dict)
    native: Any = None


class ModelFormat(ABC):
    """A kind of model file. Class attributes: ``name`` (``--format NAME``), ``description`` (for messages),
    ``gradients`` (the loaded model is differentiable in its input: MAD's default surrogate, ODIN's input
    pre-processing, MinGD), ``features`` (its penultimate features can be read: an ``nn.Module`` ending in an
    ``nn.Linear``, for Mahalanobis and the binary detector), ``wraps`` (the loaded module is wrapped in
    :class:`SpecModel`; a modelsteal checkpoint carries its preprocessing itself)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    gradients: ClassVar[bool] = True
    features: ClassVar[bool] = False
    wraps: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def sniff(cls, facts: FileFacts) -> bool:
        """Whether the file is of this format, from its name, first bytes and zip members."""

    @abstractmethod
    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        """The model in ``source``; a one-line ``ValueError`` when the file or the spec is wrong for it."""


def register_format(name: str) -> Callable[[type[ModelFormat]], type[ModelFormat]]:
    """Class decorator adding a model format to the registry under ``name``."""
    return _FORMATS.register(name)


def available_formats() -> list[str]:
    """Names of every registered model format."""
    return _FORMATS.names()


def format_class(name: str) -> type[ModelFormat]:
    """The format registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _FORMATS.get(name)


#: sniffing order: the more specific zip layouts before the plain ``torch.save`` one
SNIFF_ORDER = ("python", "torchscript", "export", "checkpoint", "onnx", "sklearn")


def file_facts(source: str) -> FileFacts:
    """The facts :meth:`ModelFormat.sniff` reads; a missing file is a ``FileNotFoundError``."""
    if source.startswith("python:"):
        return FileFacts(source=source, path=None)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model file {source} does not exist")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    members: tuple[str, ...] = ()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = tuple(archive.namelist())
    return FileFacts(source=source, path=path, head=head, members=members)


def sniff_format(source: str) -> str:
    """The name of the format of ``source`` (a path, or ``python:package.module:factory``), told from its
    first bytes; a one-line ``ValueError`` when no format recognises it."""
    facts = file_facts(source)
    for name in SNIFF_ORDER:
        if format_class(name).sniff(facts):
            return name
    raise ValueError(f"cannot tell the format of {source}: it is none of {', '.join(_described())}; pass "
                     f"--format NAME (one of {', '.join(available_formats())})")


def _described() -> list[str]:
    return [format_class(n).description for n in SNIFF_ORDER]


def first_line(error: BaseException) -> str:
    """An exception's first line, at most 200 characters (its type when it has no text)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


# ------------------------------------------------------------------------------------------------------------
# the wrapper
# ------------------------------------------------------------------------------------------------------------
class SpecModel(nn.Module):
    """A model file's module behind its spec: raw ``[0, 1]`` inputs ``(N, *input_shape)`` in, logits out.

    ``forward``: scale to ``range``, normalise with ``mean``/``std`` (per channel of a ``(C, H, W)`` input,
    per feature or one value otherwise), permute to NHWC when ``layout`` says so, cast to ``dtype``, run the
    file's module, and for ``outputs: probs`` take the log of the probabilities (clamped at the smallest
    positive float), so that ``softmax`` of the result is the file's answer: the API's one softmax.

    Attributes read by the rest of the toolkit: ``input_shape``, ``num_classes``, ``class_names``,
    ``model_format``, ``has_gradients`` and ``has_features`` (see :class:`ModelFormat`).
    """

    def __init__(self, inner: nn.Module, *, spec: ModelSpec, num_classes: int, model_format: str,
                 gradients: bool, features: bool) -> None:
        super().__init__()
        assert spec.input_shape is not None
        self.inner = inner
        self.input_shape = tuple(spec.input_shape)
        self.num_classes = int(num_classes)
        self.class_names = list(spec.classes) if spec.classes else None
        self.model_format = model_format
        self.has_gradients = bool(gradients)
        self.has_features = bool(features)
        self.spec = spec
        self.range = spec.range or (0.0, 1.0)
        self.layout = spec.layout or "nchw"
        self.dtype = DTYPES[spec.dtype or "float32"]
        self.probs = spec.outputs == "probs"
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # tells model_device where we are
        if spec.mean is not None and spec.std is not None:
            view = _stats_view(len(spec.mean), self.input_shape)
            self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(view), persistent=False)
            self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(view), persistent=False)
        else:
            self.mean = self.std = None

    def to_file_input(self, x: Tensor) -> Tensor:
        """The toolkit's ``[0, 1]`` batch as the file takes it (range, normalisation, layout, dtype)."""
        lo, hi = self.range
        if (lo, hi) != (0.0, 1.0):
            x = lo + (hi - lo) * x
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return x.to(self.dtype)

    def from_file_output(self, out: Any) -> Tensor:
        """The file's answer as logits (log-probabilities for a probabilities model), float32."""
        if isinstance(out, tuple | list):
            out = out[0]
        out = out.float()
        if self.probs:
            out = torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.from_file_output(self.inner(self.to_file_input(x)))


def _stats_view(n: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """How per-channel (images) or per-feature statistics broadcast over a ``(N, *shape)`` batch."""
    if n == 1:
        return (1,) * (len(shape) + 1)
    if len(shape) == 3 and n == shape[0]:
        return (1, n, 1, 1)
    if len(shape) == 1 and n == shape[0]:
        return (1, n)
    raise ValueError(f"mean/std have {n} values; inputs of shape {shape} need 1 or one per channel "
                     f"({shape[0]})")


# ------------------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A model file loaded for the toolkit: ``model`` maps raw ``[0, 1]`` inputs ``(N, *input_shape)`` to logits
    ``(N, K)`` (an ``nn.Module`` every API, defense and attack accepts), in eval mode; ``meta`` is the
    checkpoint-style description (``format``, ``dataset``, ``input_shape``, ``num_classes``, ``arch`` when
    known, ``classes``); ``native`` is the format's own object."""

    model: nn.Module
    format: str
    source: str
    spec: ModelSpec
    meta: dict[str, Any]
    native: Any = None

    @property
    def gradients(self) -> bool:
        return model_gradients(self.model)

    @property
    def features(self) -> bool:
        return model_features(self.model)


def model_gradients(model: Any) -> bool:
    """Whether ``model`` is a torch module differentiable in its input (an ONNX or scikit-learn file is not)."""
    return isinstance(model, nn.Module) and bool(getattr(model, "has_gradients", True))


def model_features(model: Any) -> bool:
    """Whether ``model``'s penultimate features can be read: a torch module ending in an ``nn.Linear`` (not a
    TorchScript, ``torch.export``, ONNX or scikit-learn file)."""
    if not isinstance(model, nn.Module):
        return False
    flag = getattr(model, "has_features", None)
    if flag is not None:
        return bool(flag)
    return any(isinstance(m, nn.Linear) for m in model.modules())


def describe_model(model: Any) -> str:
    """``an onnx model`` / ``a TorchScript model``, for messages about what a model cannot give."""
    fmt = getattr(model, "model_format", None)
    if fmt is None:
        return f"a {type(model).__name__}"
    return f"{'an' if fmt[0] in 'aeiou' else 'a'} {fmt} model"


def load_model(
    source: str | Path,
    *,
    spec: ModelSpec | None = None,
    format: str | None = None,  # noqa: A002 - the flag's name
    weights: str | Path | None = None,
    spec_file: str | Path | None = None,
    defaults: ModelSpec | None = None,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """Load the model in ``source`` (a file, or ``python:package.module:factory``) for the toolkit.

    The spec is ``defaults``, overridden by ``spec_file`` (default: ``SOURCE.yaml`` or ``model.yaml`` beside the
    file, when present), overridden by ``spec``'s given fields, ``format`` and ``weights``. The format is
    ``format`` (or the spec's) or the one :func:`sniff_format` tells. One dummy forward on a batch of two random
    inputs checks the spec: a model that fails on the input shape, answers another number of classes than
    ``classes`` names, or whose answers contradict ``outputs`` is a one-line ``ValueError`` here.

    Example::

        loaded = load_model("victim.onnx", spec=ModelSpec(input_shape=(1, 8, 8), dataset="digits"))
        api = PredictionAPI(loaded.model)
    """
    source = str(source)
    device = torch.device(device) if device is not None else torch.device("cpu")
    file_spec = ModelSpec()
    beside = spec_path_beside(source) if spec_file is None and not source.startswith("python:") else None
    if spec_file is not None or beside is not None:
        file_spec = read_spec(spec_file if spec_file is not None else beside)  # type: ignore[arg-type]
    given = ModelSpec(format=format, weights=None if weights is None else str(weights))
    full = (defaults or ModelSpec()).merged(file_spec).merged(spec or ModelSpec()).merged(given)
    name = format_class(full.format).name if full.format else sniff_format(source)
    cls = format_class(name)
    if full.weights is not None and name != "python":
        raise ValueError(f"--weights applies to python:module:factory models; {source} is {cls.description}, "
                         "which holds its weights itself")
    if not source.startswith("python:") and not Path(source).is_file():
        raise FileNotFoundError(f"model file {source} does not exist")
    loaded = cls().load(source, full, device=device)
    meta = {"format": name, "source": source, "dataset": loaded.spec.dataset, **loaded.meta}
    if not cls.wraps:
        model = loaded.module.to(device).eval()
        _check_forward(model, loaded.spec, source=source, name=name)
        meta.setdefault("classes", list(loaded.spec.classes) if loaded.spec.classes else None)
        return LoadedModel(model=model, format=name, source=source, spec=loaded.spec, meta=meta, native=loaded.native)
    spec_ = loaded.spec
    if spec_.input_shape is None:
        raise ValueError(f"{source} ({cls.description}) does not record its input shape: pass --input-shape C,H,W "
                         f"(or input_shape in a spec file beside it)")
    if spec_.layout == "nhwc" and len(spec_.input_shape) != 3:
        raise ValueError(f"layout nhwc reorders image inputs (C, H, W); {source} takes {tuple(spec_.input_shape)}")
    num_classes, spec_ = _dummy_forward(loaded.module, spec_, source=source, name=name, device=device)
    model = SpecModel(loaded.module, spec=spec_, num_classes=num_classes, model_format=name, gradients=cls.gradients,
                      features=bool(loaded.meta.pop("features", cls.features))).to(device).eval()
    meta.update({"input_shape": list(spec_.input_shape or ()), "num_classes": num_classes,
                 "classes": list(spec_.classes) if spec_.classes else None, "arch": loaded.meta.get("arch")})
    return LoadedModel(model=model, format=name, source=source, spec=spec_, meta=meta, native=loaded.native)


def _dummy_batch(shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)).to(device)


def _dummy_forward(module: nn.Module, spec: ModelSpec, *, source: str, name: str,
                   device: torch.device) -> tuple[int, ModelSpec]:
    """Run the file's module once on two random inputs through the spec; returns the number of classes and the
    spec with ``outputs`` decided. Every mismatch is a one-line ``ValueError``."""
    probe = SpecModel(module, spec=ModelSpec(**{**spec.to_dict(), "outputs": "logits", "classes": None,
                                                "format": None, "weights": None}),
                      num_classes=2, model_format=name, gradients=False, features=False).to(device).eval()
    x = probe.to_file_input(_dummy_batch(tuple(spec.input_shape or ()), device))
    try:
        with torch.no_grad():
            raw = probe.inner(x)
    except Exception as e:  # noqa: BLE001 - the user's model refusing our inputs is the spec's mistake
        raise ValueError(f"{source} ({name}) fails on a batch of inputs of shape {tuple(x.shape)} "
                         f"({probe.dtype}, {probe.layout}) built from the spec: {first_line(e)}; check "
                         "--input-shape, --layout and --dtype") from None
    out = probe.from_file_output(raw)
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(f"{source} ({name}) answers shape {tuple(out.shape)} for a batch of 2 inputs of shape "
                         f"{spec.input_shape}; a classifier answers (N, K): check --input-shape")
    k = int(out.shape[1])
    if k < 2:
        raise ValueError(f"{source} ({name}) answers {k} value per input; a classifier answers K >= 2 scores")
    if spec.classes is not None and len(spec.classes) != k:
        raise ValueError(f"{source} answers {k} classes but the spec names {len(spec.classes)} "
                         f"({', '.join(spec.classes[:4])}{', ...' if len(spec.classes) > 4 else ''})")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{source} ({name}) answers NaN or Inf on a batch of random inputs in the spec's range")
    looks_probs = bool((out >= -PROBS_ATOL).all() and (out <= 1 + PROBS_ATOL).all()
                       and ((out.double().sum(dim=1) - 1).abs() <= PROBS_ATOL).all())
    outputs = spec.outputs or "auto"
    if outputs == "probs" and not looks_probs:
        sums = ", ".join(f"{float(s):.3g}" for s in out.double().sum(dim=1))
        raise ValueError(f"the spec says {source} outputs probabilities, but its rows on a dummy batch are not "
                         f"distributions (sums {sums}): pass --outputs logits")
    if outputs == "logits" and looks_probs:
        raise ValueError(f"the spec says {source} outputs logits, but its rows on a dummy batch are probability "
                         "distributions (a softmax would be applied twice): pass --outputs probs")
    resolved = "probs" if looks_probs else "logits"
    return k, ModelSpec(**{**spec.to_dict(), "outputs": resolved})


def _check_forward(model: nn.Module, spec: ModelSpec, *, source: str, name: str) -> None:
    """A modelsteal checkpoint's classes against the spec's class names."""
    k = int(getattr(model, "num_classes", 0) or 0)
    if spec.classes is not None and k and len(spec.classes) != k:
        raise ValueError(f"{source} answers {k} classes but the spec names {len(spec.classes)}")
