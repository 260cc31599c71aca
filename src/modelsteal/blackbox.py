"""The black-box contract: inputs in, posteriors out.

Everything that answers queries is a :class:`BlackBox` — the in-process :class:`PredictionAPI` here and the
HTTP client in :mod:`modelsteal.serve.client` — and every attack only ever talks to one, through a
:class:`QueryBudget` that enforces the number of queries it may spend. A *query* is one input row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from modelsteal._simplex import check_simplex
from modelsteal.batching import answer_in_batches
from modelsteal.models.builders import model_device
from modelsteal.outputs import OutputFormat, make_output

if TYPE_CHECKING:
    from modelsteal.defenses.base import Defense
    from modelsteal.detectors.base import Detector
    from modelsteal.detectors.responses import Response


class BudgetExceededError(RuntimeError):
    """Raised before a query batch would take a client past its query budget."""


class QueryRefusedError(RuntimeError):
    """A detector flagged rows of a batch and the API's response is ``refuse``: the whole batch is refused,
    and neither its queries nor its flags are counted (like a budget refusal). ``flagged`` of the batch's
    ``rows`` were flagged by ``detector`` (``None`` when unknown). An attack that is refused attaches what it
    had bought so far as ``partial`` (:class:`~modelsteal.attacks.base.PartialResult`: the answered queries)
    before the error reaches its caller."""

    def __init__(self, message: str, *, flagged: int | None = None, rows: int | None = None,
                 detector: str | None = None) -> None:
        super().__init__(message)
        self.flagged = flagged
        self.rows = rows
        self.detector = detector
        self.partial: Any = None


@runtime_checkable
class BlackBox(Protocol):
    """A prediction API: ``query`` maps a batch ``(N, *input_shape)`` to answers ``(N, num_classes)``."""

    num_classes: int
    input_shape: tuple[int, ...]

    def query(self, x: Tensor, *, client: str = "default") -> Tensor: ...


def as_batch(x: Tensor, input_shape: Sequence[int] | None, *, finite: bool = True) -> Tensor:
    """``x`` as a floating ``(N, *input_shape)`` batch: one example gains the batch axis, another shape is a
    ``ValueError``; with ``finite`` (all APIs but the tree oracle, whose NaN is a missing feature) NaN and Inf
    are refused before they reach a model."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    if input_shape is not None:
        shape = tuple(input_shape)
        if tuple(x.shape[1:]) != shape:
            if tuple(x.shape) == shape:
                x = x.unsqueeze(0)
            else:
                raise ValueError(f"query batch has shape {tuple(x.shape)}; expected (N, {', '.join(map(str, shape))})")
    if finite and x.numel() and not bool(torch.isfinite(x).all()):
        rows = (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero().flatten()
        raise ValueError(f"query batch holds NaN or Inf in {rows.numel()} row(s), the first at row {int(rows[0])}")
    return x


class QueryCounter:
    """Per-client query accounting shared by every black box that answers in this process or sends queries.

    One query is one input row. :meth:`reserve` raises :class:`BudgetExceededError` before a batch that would
    take ``client`` past the optional per-client ``budget`` (nothing is answered or counted then);
    :meth:`record` counts rows once they are answered. :class:`PredictionAPI` and the tree oracle of
    :mod:`modelsteal.attacks.tramer` reserve a whole batch and record it after every sub-batch succeeded (a
    batch that fails is not counted); the HTTP client records each request the server answered and leaves the
    budget to the server (the ledger counts the same rows: a request retried after its answer was lost in
    transit carries the same idempotency key, and the server replays it without counting it again).
    """

    def __init__(self, *, budget: int | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = budget
        self._counts: Counter[str] = Counter()

    def queries(self, client: str = "default") -> int:
        """Number of queries (input rows) answered for ``client``."""
        return self._counts[client]

    def clients(self) -> list[str]:
        """The clients with answered queries, in the order they first queried."""
        return [c for c, n in self._counts.items() if n]

    @property
    def total_queries(self) -> int:
        """Queries answered for all clients together."""
        return sum(self._counts.values())

    def queries_left(self, client: str = "default") -> int | None:
        """Queries ``client`` may still make (``None`` without a budget); ``remaining`` on a single-client
        :class:`QueryBudget`."""
        return None if self.budget is None else self.budget - self._counts[client]

    def reserve(self, client: str, n: int) -> None:
        """Refuse (``BudgetExceededError``) a batch of ``n`` rows that would exceed ``client``'s budget."""
        left = self.queries_left(client)
        if left is not None and n > left:
            raise BudgetExceededError(
                f"client {client!r} asked for {n} queries with {left} of its budget of {self.budget} left"
            )

    def record(self, client: str, n: int) -> None:
        """Count ``n`` answered rows for ``client``."""
        self._counts[client] += int(n)


@dataclass
class RequestAnswer:
    """One request's part of :meth:`PredictionAPI.query_many`: its ``(n, K)`` ``answers`` (``None`` when refused),
    how many of its rows the detector ``flagged``, the :class:`QueryRefusedError` when the ``refuse`` response
    refused it, and what a stateful defense recorded while answering it (``records``, or ``None``)."""

    answers: Tensor | None
    flagged: int
    refused: QueryRefusedError | None = None
    records: dict | None = None


class PredictionAPI(QueryCounter):
    """A model behind a prediction API, optionally defended and watched by a detector.

    ``query(x)`` runs the victim in evaluation mode, turns logits into posteriors ``y = softmax(z)``; a
    ``detector`` (fitted and calibrated) flags rows on these undefended posteriors; the defense maps
    ``(x, y)`` to defended posteriors ``ỹ`` (rows checked to stay on the simplex); the ``response``
    (:mod:`modelsteal.detectors.responses`: ``none``, ``shuffle``, ``misinform``, or ``refuse``, which raises
    :class:`QueryRefusedError` for the whole batch) replaces the flagged rows' answers; then the output
    format applies (probs, top-k, label-only, rounded). Queries and flags are counted per client
    (:meth:`queries`, :meth:`flags`), and an optional per-client ``budget`` raises
    :class:`BudgetExceededError` before the batch that would exceed it.

    Example::

        api = PredictionAPI(victim, defense=MAD(epsilon=0.5), output="probs", budget=10_000)
        y = api.query(x)          # (N, K)
        api.queries("default")    # N
        guarded = PredictionAPI(victim, detector=det, response="shuffle")   # det fitted and calibrated
        guarded.flags("default")  # flagged queries of this client
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        defense: Defense | None = None,
        detector: Detector | None = None,
        response: str | Response = "none",
        output: str | OutputFormat = "probs",
        budget: int | None = None,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        batch_size: int = 512,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(budget=budget)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = model.to(self.device).eval()
        self.output = make_output(output)
        self.batch_size = batch_size
        meta_shape = getattr(model, "input_shape", None)
        self.input_shape: tuple[int, ...] = tuple(input_shape or meta_shape or ())
        if not self.input_shape:
            raise ValueError("input_shape is unknown: pass input_shape=(C, H, W) or a model with .input_shape")
        self.num_classes = int(num_classes or getattr(model, "num_classes", 0) or self._infer_classes())
        if self.output.kind == "top-k" and self.output.k > self.num_classes:
            raise ValueError(f"output top-{self.output.k} asks for more classes than the model has "
                             f"({self.num_classes}); use top-1 to top-{self.num_classes}")
        self.defense = defense
        if defense is not None:
            defense.bind(self.model, input_shape=self.input_shape, num_classes=self.num_classes)
        self.detector, self.response = _detector_and_response(detector, response)
        self.response.bind(input_shape=self.input_shape, num_classes=self.num_classes)
        self._flags: Counter[str] = Counter()
        self._first_flag: dict[str, int] = {}
        self._sent = 0  # rows of every client seen by the detector, refused ones included
        self.first_flag_total: int | None = None  #: the position of the first flagged row among all clients' rows

    def _infer_classes(self) -> int:
        with torch.no_grad():
            return int(self.model(torch.zeros(1, *self.input_shape, device=self.device)).shape[1])

    # -- answering ----------------------------------------------------------------------------------
    def _empty(self) -> Tensor:
        return torch.empty(0, self.num_classes, device=self.device)

    @torch.no_grad()
    def _softmax(self, xb: Tensor) -> Tensor:
        return torch.softmax(self.model(xb.to(self.device)), dim=1)

    def posteriors(self, x: Tensor) -> Tensor:
        """Undefended posteriors ``softmax(F_V(x))`` (not counted: for evaluation, not for callers)."""
        return answer_in_batches(as_batch(x, self.input_shape), self.batch_size, self._softmax, empty=self._empty)

    def flags(self, client: str = "default") -> int:
        """Number of ``client``'s answered queries that the detector flagged (0 without a detector)."""
        return self._flags[client]

    @property
    def total_flags(self) -> int:
        """Flagged queries of all clients together."""
        return sum(self._flags.values())

    def first_flag(self, client: str = "default") -> int | None:
        """The 1-based position, in ``client``'s stream of queries, of its first flagged query (``None``: none
        yet): its "queries to detection", exact whatever the batch size. A refused batch's rows count as sent
        for this position (the detector has seen them), though they are not counted as queries."""
        return self._first_flag.get(client)

    @property
    def flagged_clients(self) -> list[str]:
        """The clients with a flagged query, in the order they were first flagged."""
        return list(self._first_flag)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        """Answer a batch of queries ``(N, *input_shape) -> (N, K)`` and count ``N`` queries for ``client``.

        The whole batch is refused before anything runs when it would exceed ``client``'s budget, and counted
        only once every sub-batch has been answered (a defense that raises leaves the count unchanged). With
        the ``refuse`` response, a batch holding a flagged row raises :class:`QueryRefusedError` once every
        sub-batch is scored (rows after the first flag are scored, not answered); neither its queries nor its
        flags are counted (a stateful detector has still seen them)."""
        x = as_batch(x, self.input_shape)
        self.reserve(client, len(x))
        flagged = 0
        seen = 0  # rows of this batch scored so far

        def answer(xb: Tensor) -> Tensor:
            nonlocal flagged, seen
            xb = xb.to(self.device)
            probs = self._softmax(xb)
            flags = None if self.detector is None else self.detector.flag(xb, probs, client=client)
            if flags is not None:
                self._note_first_flag(client, flags, offset=seen)
                seen += len(xb)
                flagged += int(flags.sum())
                if flagged and self.response.refuses:
                    return self._empty()
            if self.defense is not None:
                probs = self.defense(xb, probs, client=client)
            if flags is not None:
                probs = self.response(xb, probs, flags, client=client)
            return self.output(check_simplex(probs))

        out = answer_in_batches(x, self.batch_size, answer, empty=self._empty)
        if flagged and self.response.refuses:
            name = getattr(self.detector, "name", "") or type(self.detector).__name__
            raise QueryRefusedError(f"query refused: detector {name!r} flagged {flagged} of the batch's {len(x)} "
                                    f"rows as suspicious", flagged=flagged, rows=len(x), detector=name)
        self.record(client, len(x))
        self._flags[client] += flagged
        return out

    def query_many(self, requests: Sequence[tuple[str, Tensor]], *,
                   on_scored: Callable[[int], None] | None = None) -> list[RequestAnswer]:
        """Answer several clients' requests ``[(client, x), ...]`` as one batch, what a server's dynamic batcher
        does: one model forward over all their rows, one defense call for a defense without per-client state
        (MAD, AM, ...; a ``stateful`` one such as DAWN is called per request, in order), one output call, and
        each request gets exactly its own rows back. The result is what :meth:`query` would give for the
        requests one after another, in this order:

        - a stateful detector (PRADA) scores each request's rows on its client's state in arrival order
          (``on_scored(i)`` is called right after request ``i`` is scored: the server saves its state change
          there), a stateless one scores all rows at once;
        - with the ``refuse`` response a request holding a flagged row gets ``refused`` (the error, not raised)
          and no answer; the other requests are answered;
        - queries, flags and first-flag positions are counted per client as :meth:`query` counts them.

        ``RequestAnswer.records`` holds what a stateful defense recorded for that request
        (:meth:`~modelsteal.defenses.Defense.take_new_records`, taken right after it). Budgets are the
        caller's (an API with a ``budget`` is refused). An exception from the model, the defense or the output
        fails every request of the batch and counts none.
        """
        if self.budget is not None:
            raise ValueError("query_many answers requests whose budgets the caller checked: build the "
                             "PredictionAPI with budget=None")
        xs = [as_batch(x, self.input_shape) for _, x in requests]
        clients = [c for c, _ in requests]
        bounds = [0]
        for x in xs:
            bounds.append(bounds[-1] + len(x))
        if not xs:
            return []
        x_all = torch.cat(xs).to(self.device)
        probs = answer_in_batches(x_all, self.batch_size, self._softmax, empty=self._empty)
        spans = [slice(bounds[i], bounds[i + 1]) for i in range(len(xs))]
        flags: Tensor | None = None
        if self.detector is not None:
            if self.detector.stateful:  # each client's state sees its requests in arrival order
                parts = []
                for i, sp in enumerate(spans):
                    parts.append(self.detector.flag(x_all[sp], probs[sp], client=clients[i]).to(self.device))
                    if on_scored is not None:
                        on_scored(i)
                flags = torch.cat(parts)
            else:
                flags = torch.cat([self.detector.flag(xb, pb).to(self.device) for xb, pb in
                                   zip(x_all.split(self.batch_size), probs.split(self.batch_size), strict=True)])
        counts = [0 if flags is None else int(flags[sp].sum()) for sp in spans]
        refused = [bool(n) and self.response.refuses for n in counts]
        kept = [i for i in range(len(xs)) if not refused[i]]
        records: list[dict | None] = [None] * len(xs)
        answers: list[Tensor | None] = [None] * len(xs)
        if kept:
            idx = torch.cat([torch.arange(spans[i].start, spans[i].stop) for i in kept]).to(self.device)
            xk, pk = x_all[idx], probs[idx]
            local = [0]
            for i in kept:
                local.append(local[-1] + len(xs[i]))
            if self.defense is not None:
                if self.defense.stateful:
                    out = []
                    for j, i in enumerate(kept):
                        sp = slice(local[j], local[j + 1])
                        out.append(self.defense(xk[sp], pk[sp], client=clients[i]))
                        records[i] = self.defense.take_new_records(clients[i])
                    pk = torch.cat(out)
                else:
                    pk = torch.cat([self.defense(xb, pb, client=clients[kept[0]]) for xb, pb in
                                    zip(xk.split(self.batch_size), pk.split(self.batch_size), strict=True)])
            if flags is not None:
                pk = pk.clone()
                for j, i in enumerate(kept):
                    if counts[i]:  # only a request with a flagged row is touched by the response
                        sp = slice(local[j], local[j + 1])
                        pk[sp] = self.response(xk[sp], pk[sp], flags[spans[i]], client=clients[i])
            yk = self.output(check_simplex(pk))
            for j, i in enumerate(kept):
                answers[i] = yk[local[j]: local[j + 1]]
        results = []
        name = "" if self.detector is None else (self.detector.name or type(self.detector).__name__)
        for i, client in enumerate(clients):  # bookkeeping in arrival order, as query() would have done it
            n = len(xs[i])
            error = None
            if flags is not None:
                self._note_first_flag(client, flags[spans[i]], offset=0)
            if refused[i]:
                error = QueryRefusedError(f"query refused: detector {name!r} flagged {counts[i]} of the batch's {n} "
                                          f"rows as suspicious", flagged=counts[i], rows=n, detector=name)
            else:
                self.record(client, n)
                self._flags[client] += counts[i]
            results.append(RequestAnswer(answers=answers[i], flagged=counts[i], refused=error, records=records[i]))
        return results

    def _note_first_flag(self, client: str, flags: Tensor, *, offset: int) -> None:
        """Remember where ``client``'s (and any client's) first flagged row is: ``flags`` are the rows after the
        first ``offset`` of the current batch, itself after the client's answered queries."""
        hit = flags.nonzero().flatten()
        if len(hit) and client not in self._first_flag:
            self._first_flag[client] = self.queries(client) + offset + int(hit[0]) + 1
        if len(hit) and self.first_flag_total is None:
            self.first_flag_total = self._sent + int(hit[0]) + 1
        self._sent += len(flags)

    def __repr__(self) -> str:
        d = "none" if self.defense is None else repr(self.defense)
        det = "" if self.detector is None else f"detector={self.detector!r}, response={self.response!r}, "
        return f"PredictionAPI(defense={d}, {det}output={self.output.describe()}, budget={self.budget})"


def _detector_and_response(detector: Detector | None, response: str | Response) -> tuple[Detector | None, Response]:
    """Check the detector is usable (fitted and calibrated) and build the response; one-line ``ValueError``
    (:class:`~modelsteal.detectors.base.NotFittedError`) otherwise, before any query."""
    from modelsteal.detectors.base import Detector, NotFittedError
    from modelsteal.detectors.responses import AnswerNormally, Response, make_response

    if detector is not None:
        if not isinstance(detector, Detector):
            raise ValueError(f"detector must be a modelsteal Detector, got {type(detector).__name__}")
        name = detector.name or type(detector).__name__
        if not detector.fitted:
            raise NotFittedError(f"detector {name!r} is not fitted: call fit(victim, data) before serving it")
        if detector.threshold is None:
            raise NotFittedError(f"detector {name!r} has no threshold: call calibrate(x_val, tnr=...) before "
                                 "serving it")
    resp = response if isinstance(response, Response) else make_response(response)
    if detector is None and not isinstance(resp, AnswerNormally):
        raise ValueError(f"response {resp!r} acts on flagged queries, but no detector flags any: pass detector=")
    return detector, resp


class QueryBudget:
    """Wraps any :class:`BlackBox` and refuses queries beyond ``budget`` (what attacks are handed).

    ``used`` counts the rows answered through this wrapper; a batch that would exceed the budget raises
    :class:`BudgetExceededError` before anything is sent, so the budget is never exceeded. With ``keep``, every
    answered batch is kept (by reference) for :meth:`answered`: what an attack had bought when it was refused.
    """

    def __init__(self, blackbox: BlackBox, *, budget: int, client: str = "default", keep: bool = False) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.blackbox = blackbox
        self.budget = int(budget)
        self.client = client
        self.used = 0
        self.keep = keep
        self._kept: list[tuple[Tensor, Tensor]] = []
        self.num_classes = blackbox.num_classes
        self.input_shape = tuple(blackbox.input_shape)

    @property
    def remaining(self) -> int:
        """Queries left: ``budget − used`` (a property, as on :class:`~modelsteal.serve.store.ClientInfo`)."""
        return self.budget - self.used

    def query(self, x: Tensor, *, client: str | None = None) -> Tensor:
        n = int(x.shape[0])
        if n > self.remaining:
            raise BudgetExceededError(f"attack asked for {n} queries with {self.remaining} of {self.budget} left")
        out = self.blackbox.query(x, client=client or self.client)
        self.used += n
        if self.keep:
            self._kept.append((torch.as_tensor(x).detach(), out.detach()))  # references: the attack keeps them too
        return out

    def answered(self) -> tuple[Tensor, Tensor]:
        """The inputs and answers of every answered batch so far, in order (``keep=True``; else a ``ValueError``)."""
        if not self.keep:
            raise ValueError("this QueryBudget keeps no answers: make it with keep=True")
        if not self._kept:
            return torch.empty(0, *self.input_shape), torch.empty(0, self.num_classes)
        return torch.cat([x.cpu() for x, _ in self._kept]), torch.cat([y.cpu() for _, y in self._kept])
