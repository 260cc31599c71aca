"""What a prediction API answers to the queries its detector flags: a small contract and its registry.

:class:`~modelsteal.PredictionAPI` (``detector=D, response=R``) flags each sub-batch on the victim's
undefended posteriors, lets the defense answer every row, then hands the flagged rows' answers to the
response, which replaces them before the output format applies:

- ``none``: answer normally; the flag is only counted (``api.flags(client)``);
- ``shuffle``: a random permutation of each flagged row's probability vector (Atli et al., *Extraction of
  Complex DNN Models: Real Threat or Boogeyman?*, Sec. 5.3 and Table 5: "incorrect API outputs are
  constructed via random shuffling of the complete probability vector"), drawn from a ``torch.Generator``
  the response owns, so a seeded API answers reproducibly; rows stay on the simplex;
- ``misinform``: the softmax of a misinformation model (``Misinform(model=net)``, a Python object, like
  MAD's surrogate: not settable from the command line or YAML);
- ``refuse``: the whole batch is refused with :class:`~modelsteal.blackbox.QueryRefusedError` (raised by
  the API, which knows how many of the batch's rows were flagged) and, like a budget refusal, not counted.

Example::

    api = PredictionAPI(victim, detector=det, response=make_response("shuffle", seed=0))
    y = api.query(x)          # flagged rows: permuted probability vectors
    api.flags("default")      # how many of this client's queries were flagged
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal._simplex import check_simplex


class Response(ABC):
    """Replaces the answers of flagged rows. Subclasses implement :meth:`respond` for the flagged rows only.

    Class attributes: ``name`` (registry name) and ``refuses`` (the API refuses a batch holding a flagged row
    instead of answering it; :meth:`respond` is then never called).
    """

    name: ClassVar[str] = ""
    refuses: ClassVar[bool] = False

    def bind(self, *, input_shape: Sequence[int], num_classes: int) -> None:  # noqa: B027
        """Called once by :class:`~modelsteal.PredictionAPI` with what it serves; the default ignores it."""

    @final
    def __call__(self, x: Tensor, answers: Tensor, flags: Tensor, *, client: str = "default") -> Tensor:
        """``answers`` ``(N, K)`` with the rows where ``flags`` ``(N,)`` is true replaced by :meth:`respond`
        (checked to stay on the simplex); unflagged rows are returned untouched."""
        if flags.shape != (answers.shape[0],) or x.shape[0] != answers.shape[0]:
            raise ValueError(f"response expects x with N rows, answers (N, K) and flags (N,); got "
                             f"{tuple(x.shape)}, {tuple(answers.shape)} and {tuple(flags.shape)}")
        flags = flags.to(device=answers.device, dtype=torch.bool)
        if not bool(flags.any()):
            return answers
        flagged = answers[flags]
        replaced = check_simplex(self.respond(x[flags.to(x.device)], flagged, client=client), like=flagged)
        out = answers.clone()
        out[flags] = replaced.to(device=out.device, dtype=out.dtype)
        return out

    @abstractmethod
    def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
        """Answers ``(M, K)`` for the ``M`` flagged queries ``x`` whose normal answers are ``answers``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_RESPONSES: Registry[type[Response]] = Registry("response", package="modelsteal.detectors.responses")


def register_response(name: str) -> Callable[[type[Response]], type[Response]]:
    """Class decorator adding a response to the registry under ``name``."""
    return _RESPONSES.register(name)


def available_responses() -> list[str]:
    """Names of every registered response."""
    return _RESPONSES.names()


def make_response(name: str, **options: Any) -> Response:
    """Build the response ``name`` with ``options`` (a wrong option is a one-line ``ValueError`` listing the
    valid ones; an unknown name lists the known responses)."""
    return _RESPONSES.build(name, **options)


@register_response("none")
class AnswerNormally(Response):
    """Answer flagged queries like any other: the detector only counts them."""

    def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
        return answers


@register_response("shuffle")
class Shuffle(Response):
    """A uniformly random permutation of each flagged row (Atli et al., Table 5's "incorrect prediction
    vector"): same values, scattered over the classes, so the row stays on the simplex.

    Args:
        seed: seeds the response's own ``torch.Generator`` (on the CPU; the permutations move to the answers'
            device), so two APIs built with the same seed shuffle the same queries the same way.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
        perm = torch.rand(answers.shape, generator=self.generator).argsort(dim=1)  # one permutation per row
        return answers.gather(1, perm.to(answers.device))

    def __repr__(self) -> str:
        return f"Shuffle(seed={self.seed})"


@register_response("misinform")
class Misinform(Response):
    """Answer flagged queries with ``softmax(model(x))`` of a misinformation model (e.g. Adaptive
    Misinformation's f̂, trained to put little mass on the true class).

    Args:
        model: the misinformation model, with the victim's input shape and number of classes; a Python object
            (the command line and YAML cannot give it). Inputs are moved to its device, answers back.
    """

    def __init__(self, *, model: nn.Module | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"misinform needs model=<an nn.Module>, got {type(model).__name__}")
        self.model = model.eval()

    def _device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def bind(self, *, input_shape: Sequence[int], num_classes: int) -> None:
        """Check, with one forward pass of a zero input, that the model answers ``num_classes`` classes."""
        with torch.no_grad():
            k = self.model(torch.zeros(1, *input_shape, device=self._device())).shape[-1]
        if k != num_classes:
            raise ValueError(f"the misinformation model answers {k} classes; the API serves {num_classes}")

    def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
        with torch.no_grad():
            out = torch.softmax(self.model(x.to(self._device())), dim=1)
        return out.to(device=answers.device, dtype=answers.dtype)

    def __repr__(self) -> str:
        return f"Misinform(model={type(self.model).__name__})"


@register_response("refuse")
class Refuse(Response):
    """Refuse a batch that holds a flagged query: :class:`~modelsteal.PredictionAPI` raises
    :class:`~modelsteal.blackbox.QueryRefusedError` (HTTP 403 ``query_refused`` over the server) and counts
    neither its queries nor its flags."""

    refuses = True

    def respond(self, x: Tensor, answers: Tensor, *, client: str) -> Tensor:
        raise RuntimeError("the refuse response answers nothing: PredictionAPI refuses the batch before this")
