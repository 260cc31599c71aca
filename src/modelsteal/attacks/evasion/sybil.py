"""Sybil: one attack spread across many client keys, each key under a stateful detector's radar.

A stateful detector such as PRADA (Juuti et al., EuroS&P 2019) judges each *client* by the stream of its own
queries, and its test only runs once that stream is long enough (PRADA: more than ``min_stream`` = 100
distances; a client's first query of each class gives none). An attacker who holds many API keys runs the
unchanged attack and sends its queries through the keys in turn, so that no key's stream grows long (or
structured) enough to be flagged. Atli et al. (*Extraction of Complex DNN Models: Real Threat or Boogeyman?*,
Sec. 5) note that "highly distributed Sybil attacks are unlikely to be detected" by stateful analysis;
Kariyappa et al. (CVPR 2020, Sec. 3.1) name attacks "involving multiple colluding adversarial users" among
those that defeat detectors analysing each user's query distribution.

Algorithm (the inner attack is untouched; only the routing of its queries changes):

1. choose ``K`` keys and a per-key cap ``C`` (``clients`` and/or ``max_per_key``; by default ``C = 100``,
   PRADA's default ``min_stream``, so a key never sends enough queries to be tested);
2. run the inner attack with a budget of ``min(B, K·C)``;
3. the ``j``-th query row it sends (0-based, over the whole run) goes to key ``⌊j / C⌋`` (``assign=
   "contiguous"``: fill one key, then the next) or ``j mod K`` (``"round-robin"``); each key's rows keep
   their order.

Keys: with a :class:`~modelsteal.PredictionAPI` (which accepts any ``client`` name) the keys are named
``{key_prefix}{i}``. Over HTTP one :class:`~modelsteal.serve.client.HTTPBlackBox` holds one key, so pass
:class:`KeyPool` ``(boxes)``, one box per key: its names are used, in order, and ``K`` may not exceed them.

Given the same seed, the inner attack makes exactly the queries it makes alone (the same generator drives it),
so with a detector that does not change answers the clone is the inner attack's clone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.attacks.evasion._wrapping import DetectionLog, build_inner, flag_count
from modelsteal.blackbox import BlackBox, QueryBudget

ASSIGNMENTS = ("contiguous", "round-robin")
#: the per-key cap when neither ``clients`` nor ``max_per_key`` is given: PRADA's default ``min_stream``
DEFAULT_CAP = 100


def _positive(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"sybil {name} must be an integer >= 1 or none, got {value!r}")
    return int(value)


class KeyPool:
    """One :class:`~modelsteal.BlackBox` over several single-key black boxes (an
    :class:`~modelsteal.serve.client.HTTPBlackBox` per API key): ``query(x, client=name)`` is answered by the
    box called ``name``. ``names`` default to ``sybil-0 … sybil-(n−1)``.

    Example::

        pool = KeyPool([HTTPBlackBox(url, key) for key in keys])
        Sybil(attack="jbda", seed_set=x_seed)(pool, budget=5_000)   # key i answers the rows of sybil-i
    """

    def __init__(self, boxes: Sequence[BlackBox], *, names: Sequence[str] | None = None) -> None:
        boxes = list(boxes)
        if not boxes:
            raise ValueError("KeyPool needs at least one black box")
        names = [f"sybil-{i}" for i in range(len(boxes))] if names is None else [str(n) for n in names]
        if len(names) != len(boxes) or len(set(names)) != len(names):
            raise ValueError(f"KeyPool needs one distinct name per box: {len(boxes)} boxes, names {names}")
        shapes = {(b.num_classes, tuple(b.input_shape)) for b in boxes}
        if len(shapes) != 1:
            raise ValueError(f"KeyPool boxes answer differently shaped queries: {sorted(shapes)}")
        self.names = names
        self._boxes = dict(zip(names, boxes, strict=True))
        self.num_classes = boxes[0].num_classes
        self.input_shape = tuple(boxes[0].input_shape)

    def box(self, client: str) -> BlackBox:
        """The box that holds key ``client`` (``ValueError`` for a name not in the pool)."""
        if client not in self._boxes:
            raise ValueError(f"KeyPool has no key {client!r}; its keys: {', '.join(self.names)}")
        return self._boxes[client]

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return self.box(client).query(x)

    def flags(self, client: str) -> int | None:
        """The flags that key ``client``'s API reports for it (``None`` when it reports none)."""
        return flag_count(self.box(client), "default")


class _KeyRouter:
    """The black box the inner attack sees: sends its ``j``-th row to key ``key_of(j)`` through ``log``."""

    def __init__(self, log: DetectionLog, keys: list[str], *, cap: int, assign: str) -> None:
        self.log = log
        self.keys = keys
        self.cap = cap
        self.assign = assign
        self.sent = 0
        self.num_classes = log.num_classes
        self.input_shape = log.input_shape

    def key_index(self, rows: Tensor) -> Tensor:
        """Key index of each global row index in ``rows``."""
        return rows // self.cap if self.assign == "contiguous" else rows % len(self.keys)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        which = self.key_index(torch.arange(self.sent, self.sent + len(x)))
        out: Tensor | None = None
        for k in dict.fromkeys(which.tolist()):  # keys in the order of their first row in this batch
            rows = (which == k).nonzero().flatten()
            answers = self.log.query(x[rows], client=self.keys[k])
            if out is None:
                out = answers.new_empty((len(x), answers.shape[1]))
            out[rows.to(out.device)] = answers
        self.sent += len(x)
        return out if out is not None else torch.empty(0, self.num_classes)


@register_attack("sybil")
class Sybil(Attack):
    """Any registered attack (``attack``) with its queries spread over many client keys.

    Example::

        attack = Sybil(attack="jbda", seed_set=x_seed, max_per_key=100, clone="lenet")
        result = attack(api, budget=3_200, seed=0)      # 32 keys of 100 queries, api.queries("sybil-7") == 100
        result.info["queries_per_key"], result.info["detected"]

    Args:
        attack: the inner attack, a registered name (built with ``attack_options``, this wrapper's ``clone``,
            ``train``, ``labels``, ``query_batch_size``, ``device`` and the data it asks for) or an
            :class:`Attack` instance (then give its options to it).
        clients: number of keys ``K`` (``None``: ``⌈B / max_per_key⌉``).
        max_per_key: queries per key at most ``C`` (``None``: ``⌈B / K⌉``; both ``None``: ``C = 100``).
        assign: ``"contiguous"`` or ``"round-robin"`` (see the module docstring).
        key_prefix: names of the keys on an API that accepts client names (ignored for a :class:`KeyPool`).
        seed_set, transfer_set, transfer_labels: the attacker's data, handed to the inner attack if it asks.

    ``info`` holds the inner attack's info plus ``inner``, ``keys``, ``max_per_key``, ``assign``,
    ``queries_per_key`` and, when the API reports flags, ``detected``, ``flagged_keys``, ``queries_to_flag``
    (per key, ``None`` when never flagged) and ``queries_to_detection`` (all keys' queries when the first flag
    came). Flags are read after each batch, so these counts are exact for ``query_batch_size=1`` and upper
    bounds within one batch otherwise.
    """

    reported_info: ClassVar[tuple[str, ...]] = ("keys", "max_per_key", "detected", "flagged_keys",
                                                "queries_to_detection")

    def __init__(
        self,
        *,
        attack: str | Attack = "jbda",
        attack_options: dict[str, Any] | None = None,
        clients: int | None = None,
        max_per_key: int | None = None,
        assign: str = "contiguous",
        key_prefix: str = "sybil-",
        seed_set: Tensor | None = None,
        transfer_set: Tensor | None = None,
        transfer_labels: Tensor | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        self.clients = _positive(clients, "clients")
        self.max_per_key = _positive(max_per_key, "max_per_key")
        if assign not in ASSIGNMENTS:
            raise ValueError(f"sybil assign must be one of {', '.join(ASSIGNMENTS)}, got {assign!r}")
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"sybil key_prefix must be a non-empty string, got {key_prefix!r}")
        self.assign = assign
        self.key_prefix = key_prefix
        data = {"seed_set": seed_set, "transfer_set": transfer_set, "transfer_labels": transfer_labels}
        self.inner = build_inner(attack, options=attack_options, wrapper=self, data=data, explicit_base=bool(base))

    def plan(self, budget: int) -> tuple[int, int]:
        """``(K, C)``: the number of keys and the per-key cap for a budget of ``budget`` queries."""
        if self.clients is None and self.max_per_key is None:
            return math.ceil(budget / DEFAULT_CAP), DEFAULT_CAP
        if self.clients is None:
            return math.ceil(budget / self.max_per_key), self.max_per_key
        cap = self.max_per_key if self.max_per_key is not None else math.ceil(budget / self.clients)
        return self.clients, cap

    def _keys(self, victim: QueryBudget, n: int) -> list[str]:
        pool = victim.blackbox
        if isinstance(pool, KeyPool):
            if n > len(pool.names):
                raise ValueError(f"sybil needs {n} keys but the KeyPool holds {len(pool.names)}: pass more "
                                 "boxes, or set clients / max_per_key")
            return pool.names[:n]
        return [f"{self.key_prefix}{i}" for i in range(n)]

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        n_keys, cap = self.plan(victim.remaining)
        keys = self._keys(victim, n_keys)
        log = DetectionLog(victim)
        router = _KeyRouter(log, keys, cap=cap, assign=self.assign)
        result = self.inner.run(QueryBudget(router, budget=min(victim.remaining, n_keys * cap)), generator=generator)
        info = {**result.info, "inner": self.inner.name, "max_per_key": cap, "assign": self.assign,
                **log.report(keys)}
        return StealResult(clone=result.clone, queries=victim.used, transfer_x=result.transfer_x,
                           transfer_y=result.transfer_y, info=info)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "attack": self.name, "inner": self.inner.name, "clients": self.clients,
                "max_per_key": self.max_per_key, "assign": self.assign}
