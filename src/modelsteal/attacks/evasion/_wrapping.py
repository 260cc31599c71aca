"""Parts shared by the attacks that evade a stateful detector: the inner attack they wrap, and a log of which
client keys the API flagged, after how many queries.

Private to :mod:`modelsteal.attacks.evasion` (Sybil, interleaving, PRADA-aware JBDA).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import Tensor

from modelsteal._registry import check_options, constructor_parameters
from modelsteal.attacks.base import Attack, attack_class
from modelsteal.blackbox import BlackBox

#: what a wrapper hands its inner attack itself (from its own options and data)
INNER_PROVIDED = ("transfer_set", "transfer_labels", "seed_set", "clone", "train", "labels", "query_batch_size",
                  "device", "progress")


def build_inner(attack: str | Attack, *, options: dict[str, Any] | None, wrapper: Attack,
                data: dict[str, Tensor | None], explicit_base: bool) -> Attack:
    """The wrapped attack: an :class:`Attack` instance as given, or the registered attack ``attack`` built with
    ``options``, the ``data`` its constructor asks for (``seed_set``, ``transfer_set``, …) and the wrapper's
    own base options (clone, train, labels, query batch size, device). One-line ``ValueError`` for an unknown
    name, a wrong option, missing data, or options given beside an instance."""
    if isinstance(attack, Attack):
        if options or explicit_base:
            raise ValueError(f"{wrapper.name}: attack is an Attack instance; give its options to it, not to "
                             f"{wrapper.name} (attack_options / clone / train / labels / device)")
        return attack
    if not isinstance(attack, str):
        raise ValueError(f"{wrapper.name}: attack must be a registered attack name or an Attack, got {attack!r}")
    cls = attack_class(attack)
    if cls.modality != "images":
        raise ValueError(f"{wrapper.name}: attack {attack!r} is not an image attack and cannot be wrapped")
    options = dict(options or {})
    check_options(cls, options, kind="attack", provided=INNER_PROVIDED)
    params = constructor_parameters(cls) or {}
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in params and v is not None}
    missing = [k for k, v in data.items() if k in params and v is None and params[k].default is params[k].empty]
    if missing:
        raise ValueError(f"{wrapper.name}: attack {attack!r} needs {', '.join(missing)}")
    base = {"clone": wrapper.clone_spec, "train": wrapper.train_config, "labels": wrapper.labels,
            "query_batch_size": wrapper.query_batch_size, "device": wrapper.device, "progress": wrapper.progress}
    return cls(**kwargs, **base, **options)


def flag_count(blackbox: Any, client: str) -> int | None:
    """How many of ``client``'s queries the API behind ``blackbox`` has flagged, or ``None`` when it does not
    say: :meth:`~modelsteal.PredictionAPI.flags` in process, ``usage()["flagged"]`` of an
    :class:`~modelsteal.serve.client.HTTPBlackBox` (its one key), through any wrappers with ``.blackbox``."""
    while not hasattr(blackbox, "flags") and hasattr(blackbox, "blackbox"):
        blackbox = blackbox.blackbox
    if hasattr(blackbox, "flags"):
        flags = blackbox.flags(client)
        return None if flags is None else int(flags)
    if hasattr(blackbox, "usage"):
        flagged = blackbox.usage().get("flagged")
        return None if flagged is None else int(flagged)
    return None


class DetectionLog:
    """A :class:`~modelsteal.BlackBox` that forwards every batch and notes, per client key, the queries sent
    and the key's query count when the API first reported a flag for it.

    The flag count is read after each batch, so ``queries_to_flag`` is the key's count at the end of the
    batch holding its first flagged query: exact with batches of one row, otherwise an upper bound within one
    batch (``query_batch_size``). ``order`` lists the keys in the order they first queried.
    """

    def __init__(self, blackbox: BlackBox) -> None:
        self.blackbox = blackbox
        self.num_classes = blackbox.num_classes
        self.input_shape = tuple(blackbox.input_shape)
        self.sent: Counter[str] = Counter()
        self.total = 0
        self.first_flag: dict[str, int] = {}
        self.first_flag_total: int | None = None
        self.watched: bool | None = None  # whether the API reports flags (None until the first batch)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        out = self.blackbox.query(x, client=client)
        self.sent[client] += len(x)
        self.total += len(x)
        if client not in self.first_flag and self.watched is not False:
            flags = flag_count(self.blackbox, client)
            self.watched = flags is not None
            if flags:
                self.first_flag[client] = self.sent[client]
                if self.first_flag_total is None:
                    self.first_flag_total = self.total
        return out

    def report(self, keys: list[str] | None = None) -> dict[str, Any]:
        """For ``keys`` (default: those that queried, in order): ``keys`` (how many), ``queries_per_key``, and
        when the API reports flags (``detector`` True): ``detected`` (a key was flagged), ``flagged_keys``,
        ``queries_to_flag`` per key (``None``: never flagged) and ``queries_to_detection`` (all keys' queries
        together when the first flag came)."""
        keys = list(self.sent) if keys is None else keys
        out: dict[str, Any] = {"keys": len(keys), "queries_per_key": [self.sent[k] for k in keys],
                               "detector": bool(self.watched)}
        if self.watched:
            out.update({
                "detected": bool(self.first_flag),
                "flagged_keys": len(self.first_flag),
                "queries_to_flag": [self.first_flag.get(k) for k in keys],
                "queries_to_detection": self.first_flag_total,
            })
        return out
