"""DAWN: dynamic adversarial watermarking of the API's answers (Szyller et al., 2019, arXiv:1906.00830).

The API answers a keyed fraction ``rate`` (``r``) of the queries with a wrong label, so that a clone trained on
its answers learns them, and records those queries; later, a suspect that agrees with the wrong labels on the
recorded queries far more often than chance was trained on the API's answers
(:class:`modelsteal.ownership.dawn.DAWNVerifier`).

Per query ``x`` (one row), with ``q(x) = round(x / quantum)`` the quantised input and
``h = HMAC-SHA256(key, q(x))``:

- *selection*: ``x`` is watermarked when ``u(h) < r``, ``u`` the first 8 bytes of ``h`` read as a fraction of
  ``2**64``: the same input is always selected or never (an attacker cannot average repeated queries), a
  fraction ``r`` of distinct inputs is selected, and another key selects other inputs;
- *wrong label*: ``w = (y + s) mod K`` with ``y`` the victim's top-1 label and the shift ``s = 1 + (v(h) mod
  (K − 1))`` from the next 8 bytes, i.e. a keyed permutation of the classes without fixed points, drawn per
  input. The answer swaps the probabilities of ``y`` and ``w`` (a probability vector that looks like any other,
  with ``w`` on top; under ``label-only`` output, just the label ``w``).

Robustness of the selection: the hash sees ``q(x)``, so any re-encoding that leaves every value in its
quantisation cell keeps the selection and the wrong label. With the default ``quantum = 1/255`` an 8-bit image
(values ``k/255``) can be stored as PNG, converted to float16/float32, or moved by any change smaller than half a
quantum per value (``< 0.5/255``), and it hashes the same. A value that crosses a cell boundary — a change of
half a quantum or more (JPEG, resizing, added noise), or a tiny change to a value lying exactly on a boundary —
gives another hash: the query is then selected afresh with probability ``r``. A larger ``quantum`` tolerates more
but makes near-identical inputs share a selection.

Cost to the defender: a selected query whose top-1 was right becomes wrong, so accuracy drops by ``r`` times the
victim's accuracy (≈ ``r``), and nothing else changes.

Records: each client's watermarked queries (quantised input and wrong label, deduplicated) are kept in memory and
exposed as ``state_dict(client)`` / ``load_state_dict(client, state)`` (JSON: lists of integers), which a server's
store can persist after each request. With ``records=PATH`` the defense also appends each new watermarked query to
the JSON-lines file ``PATH`` (a header line, then one line per query), so that ``modelsteal attack --defense dawn
--defense-option records=wm.jsonl`` leaves the file ``modelsteal verify --method dawn --records wm.jsonl`` reads
(:func:`load_records`).

Example::

    dawn = DAWN(rate=0.05, key="my secret")
    api = PredictionAPI(victim, defense=dawn)
    y = api.query(x, client="alice")             # 5% of distinct rows answered with a wrong label
    state = dawn.state_dict("alice")             # {"inputs": [[...]], "labels": [...], ...}
    dawn.save_records("wm.jsonl")                # what the verifier reads
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.defenses.base import Defense, register_defense

RECORDS_FORMAT = "modelsteal-dawn-records-v1"
_TWO64 = float(2**64)


def key_fingerprint(key: str) -> str:
    """A short public fingerprint of ``key`` (written with the records; the key itself never is)."""
    return hashlib.sha256(b"modelsteal-dawn-fingerprint\x00" + key.encode()).hexdigest()[:16]


def quantise(x: Tensor, *, quantum: float) -> np.ndarray:
    """``round(x / quantum)`` as ``(N, D)`` int64 rows on the CPU (what is hashed and recorded)."""
    q = torch.round(x.detach().double().reshape(len(x), -1) / quantum)
    return q.to(torch.int64).cpu().numpy()


def digests(q: np.ndarray, *, key: str) -> list[bytes]:
    """``HMAC-SHA256(key, row)`` of each quantised row (its little-endian int64 bytes)."""
    k = key.encode()
    rows = np.ascontiguousarray(q.astype("<i8", copy=False))
    return [hmac.new(k, row.tobytes(), hashlib.sha256).digest() for row in rows]


def selected(hashes: Sequence[bytes], *, rate: float) -> np.ndarray:
    """Which rows are watermarked: the first 8 bytes of each digest, as a fraction of 2**64, below ``rate``."""
    return np.array([int.from_bytes(h[:8], "little") / _TWO64 < rate for h in hashes], dtype=bool)


def shifts(hashes: Sequence[bytes], *, num_classes: int) -> np.ndarray:
    """The keyed shift ``s ∈ {1, …, K−1}`` of each row: the wrong label is ``(y + s) mod K``."""
    return np.array([1 + int.from_bytes(h[8:16], "little") % (num_classes - 1) for h in hashes], dtype=np.int64)


@dataclass
class _ClientRecords:
    """One client's watermarked queries, keyed by digest (a repeated input is recorded once)."""

    inputs: dict[bytes, list[int]]
    labels: dict[bytes, int]
    answered: int = 0


@register_defense("dawn")
class DAWN(Defense):
    """Answer a keyed fraction ``rate`` of queries with a keyed wrong label and record them (module docstring).

    ``key``: the secret (HMAC key); ``quantum``: the quantisation step of the hashed input; ``records``: an
    optional JSON-lines file to which every new watermarked query is appended.
    """

    strength_param = "rate"
    example_strength = 0.5
    uses_input = True
    stateful = True  # per-client records: a server's batcher calls it once per request

    def __init__(self, *, rate: float = 0.05, key: str = "modelsteal-dawn", quantum: float = 1 / 255,
                 records: str | None = None) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
            raise ValueError(f"dawn's rate must be in [0, 1), got {rate!r}")
        if not isinstance(key, str) or not key:
            raise ValueError("dawn needs a non-empty key (the watermark's secret): pass --defense-option key=...")
        if isinstance(quantum, bool) or not isinstance(quantum, int | float) or not quantum > 0:
            raise ValueError(f"dawn's quantum must be > 0, got {quantum!r}")
        self.rate = float(rate)
        self.key = key
        self.quantum = float(quantum)
        self.records = None if records is None else str(records)
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self._clients: dict[str, _ClientRecords] = {}
        self._new: dict[str, list[tuple[list[int], int]]] = {}  # per client: recorded since take_new_records

    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"dawn needs at least 2 classes to give a wrong label, got {num_classes}")
        self.input_shape, self.num_classes = tuple(input_shape), int(num_classes)

    def check_classes(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"dawn needs at least 2 classes to give a wrong label, got {num_classes}")

    # -- answering -----------------------------------------------------------------------------------
    def watermark(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(selected, wrong)``: which rows of ``x`` are watermarked ``(N,)`` bool, and the wrong label of
        every row ``(N,)`` given the victim's top-1 ``labels`` (on ``x``'s device)."""
        k = int(self.num_classes or 0)
        if k < 2:
            raise ValueError("dawn is not bound to a model: use it inside a PredictionAPI")
        hashes = digests(quantise(x, quantum=self.quantum), key=self.key)
        sel = torch.as_tensor(selected(hashes, rate=self.rate), device=labels.device)
        s = torch.as_tensor(shifts(hashes, num_classes=k), device=labels.device)
        return sel, (labels + s) % k

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        top = probs.argmax(dim=1)
        sel, wrong = self.watermark(x, top)
        self._record(x, sel, wrong, client=client)
        out = probs.clone()
        rows = sel.nonzero().flatten()
        if len(rows):
            p_top, p_wrong = probs[rows, top[rows]], probs[rows, wrong[rows]]
            out[rows, top[rows]] = p_wrong
            out[rows, wrong[rows]] = p_top
        return out

    # -- records -------------------------------------------------------------------------------------
    def _record(self, x: Tensor, sel: Tensor, wrong: Tensor, *, client: str) -> None:
        rec = self._clients.setdefault(client, _ClientRecords(inputs={}, labels={}))
        rec.answered += len(x)
        rows = sel.nonzero().flatten().cpu()
        if not len(rows):
            return
        q = quantise(x[rows.to(x.device)], quantum=self.quantum)
        new = []
        for h, qi, w in zip(digests(q, key=self.key), q, wrong[rows.to(wrong.device)].cpu().tolist(), strict=True):
            if h not in rec.labels:
                rec.inputs[h], rec.labels[h] = qi.tolist(), int(w)
                new.append((qi.tolist(), int(w)))
        if new:
            self._new.setdefault(client, []).extend(new)
        if new and self.records is not None:
            self._append(new, client=client)

    def take_new_records(self, client: str) -> dict[str, Any] | None:
        """What ``client``'s queries added to the records since the last call (``None``: nothing), as JSON-safe
        ``{"header": …, "records": [[quantised input, wrong label], …]}``: what a server stores after each request
        (:meth:`~modelsteal.serve.store.Store.record_watermarks`), so the records survive restarts and are shared
        by workers; ``modelsteal keys watermarks`` writes them out as the file :func:`load_records` reads."""
        new = self._new.pop(client, None)
        if not new:
            return None
        return {"header": self._header(), "records": [[qi, w] for qi, w in new]}

    def _header(self) -> dict[str, Any]:
        return {"format": RECORDS_FORMAT, "key_fingerprint": key_fingerprint(self.key), "quantum": self.quantum,
                "rate": self.rate, "input_shape": list(self.input_shape or ()), "num_classes": self.num_classes}

    def _append(self, new: list[tuple[list[int], int]], *, client: str) -> None:
        path = Path(self.records)  # type: ignore[arg-type]
        fresh = not path.exists() or path.stat().st_size == 0
        with path.open("a") as f:
            if fresh:
                f.write(json.dumps(self._header()) + "\n")
            for qi, w in new:
                f.write(json.dumps({"client": client, "input": qi, "label": w}) + "\n")

    def clients(self) -> list[str]:
        """Clients with recorded answers."""
        return sorted(self._clients)

    def answered(self, client: str = "default") -> int:
        """Queries of ``client`` this defense answered (watermarked or not)."""
        rec = self._clients.get(client)
        return 0 if rec is None else rec.answered

    def state_dict(self, client: str) -> dict[str, Any]:
        """``client``'s recorded watermarked queries, JSON-safe: ``inputs`` (quantised rows), ``labels`` (the
        wrong labels), ``answered`` (all of the client's queries), and the header (format, key fingerprint,
        quantum, rate, shape, classes)."""
        rec = self._clients.get(client, _ClientRecords(inputs={}, labels={}))
        return {**self._header(), "inputs": list(rec.inputs.values()), "labels": list(rec.labels.values()),
                "answered": rec.answered}

    def load_state_dict(self, client: str, state: dict[str, Any]) -> None:
        """Restore ``client``'s records from :meth:`state_dict` (refused when made with another key/quantum)."""
        _check_header(state, key=self.key, quantum=self.quantum)
        q = np.asarray(state["inputs"], dtype=np.int64).reshape(len(state["labels"]), -1)
        hashes = digests(q, key=self.key)
        self._clients[client] = _ClientRecords(
            inputs={h: qi.tolist() for h, qi in zip(hashes, q, strict=True)},
            labels={h: int(w) for h, w in zip(hashes, state["labels"], strict=True)},
            answered=int(state.get("answered", 0)))

    def reset(self, client: str) -> None:
        """Forget ``client``'s records."""
        self._clients.pop(client, None)
        self._new.pop(client, None)

    def save_records(self, path: str | Path, *, clients: Sequence[str] | None = None) -> Path:
        """Write the records of ``clients`` (default: all) as the JSON-lines file :func:`load_records` reads."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with tmp.open("w") as f:
            f.write(json.dumps(self._header()) + "\n")
            for c in (self.clients() if clients is None else clients):
                st = self.state_dict(c)
                for qi, w in zip(st["inputs"], st["labels"], strict=True):
                    f.write(json.dumps({"client": c, "input": qi, "label": w}) + "\n")
        tmp.replace(path)
        return path


def _check_header(header: dict[str, Any], *, key: str | None, quantum: float | None) -> None:
    if header.get("format") != RECORDS_FORMAT:
        raise ValueError(f"not DAWN records (format {header.get('format')!r}, expected {RECORDS_FORMAT!r})")
    if key is not None and header.get("key_fingerprint") != key_fingerprint(key):
        raise ValueError("the DAWN records were made with another key: pass the key the defense used")
    if quantum is not None and float(header.get("quantum", -1)) != float(quantum):
        raise ValueError(f"the DAWN records use quantum {header.get('quantum')}, not {quantum}")


@dataclass(frozen=True)
class DAWNRecords:
    """Watermarked queries read back: ``inputs`` ``(M, *input_shape)`` (de-quantised), ``labels`` ``(M,)`` the
    wrong labels, with the header's ``quantum``, ``rate``, ``num_classes`` and ``key_fingerprint``."""

    inputs: Tensor
    labels: Tensor
    quantum: float
    rate: float
    num_classes: int
    key_fingerprint: str


def load_records(path: str | Path, *, key: str | None = None, clients: Sequence[str] | None = None) -> DAWNRecords:
    """Read a records file written by :class:`DAWN` (``records=`` or :meth:`DAWN.save_records`), keeping the
    rows of ``clients`` (default: all), deduplicated. With ``key``, the file must carry that key's fingerprint
    and every row's wrong label must be the one the key gives (a tampered or mixed file is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DAWN records {path} do not exist (the dawn defense writes them with "
                                "records=PATH, or DAWN.save_records(PATH))")
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
        rows = [json.loads(line) for line in lines[1:] if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"DAWN records {path} are not JSON lines: {e}") from None
    _check_header(header, key=key, quantum=None)
    want = None if clients is None else set(clients)
    seen: dict[tuple[int, ...], int] = {}
    for r in rows:
        if want is None or r["client"] in want:
            seen.setdefault(tuple(r["input"]), int(r["label"]))
    shape = tuple(header["input_shape"])
    q = np.asarray(list(seen), dtype=np.int64).reshape(len(seen), -1)
    labels = np.asarray(list(seen.values()), dtype=np.int64)
    quantum, k = float(header["quantum"]), int(header["num_classes"])
    if key is not None and len(q):
        _check_labels(q, labels, key=key, rate=float(header["rate"]), num_classes=k)
    x = torch.as_tensor(q, dtype=torch.float64).mul(quantum).float().reshape(len(q), *shape)
    return DAWNRecords(inputs=x, labels=torch.as_tensor(labels), quantum=quantum, rate=float(header["rate"]),
                       num_classes=k, key_fingerprint=str(header["key_fingerprint"]))


def _check_labels(q: np.ndarray, labels: np.ndarray, *, key: str, rate: float, num_classes: int) -> None:
    """Every recorded row must be one that ``key`` selects at ``rate`` (recomputed from its quantised input),
    and every label a class."""
    if not selected(digests(q, key=key), rate=rate).all():
        raise ValueError("the DAWN records hold queries this key does not watermark: a mixed or edited file")
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ValueError(f"the DAWN records hold labels outside 0..{num_classes - 1}")
