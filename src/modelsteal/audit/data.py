"""The audit's data: the attacker's pool (any transfer source, or several joined) and the owner's test set.

A SOURCE on the command line is ``sample-patches``; a dataset name, optionally with a split (``mnist``,
``dataset:mnist:test``); or ``image-folder:PATH`` (or a directory path: ``PATH/<class>/*.png``). The pool is
built by :func:`~modelsteal.experiment.transfer.build_transfer_set`, shaped like the target's inputs; the test set
is a labelled split whose labels must be classes of the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from modelsteal.data import available_datasets, load_dataset
from modelsteal.experiment.config import TransferConfig
from modelsteal.experiment.transfer import build_transfer_set

#: pool inputs held out of every attacker's reach, on which a clone's agreement is measured without --test
HOLDOUT = 1000
#: in-distribution seeds of the JB family, taken from the test set (and removed from it) when there is one
SEED_SIZE = 100


def parse_source(text: str, *, default_split: str = "train") -> TransferConfig:
    """A SOURCE string as a :class:`~modelsteal.experiment.config.TransferConfig` (the whole of it: no size cap)."""
    raw = str(text).strip()
    if raw == "sample-patches":
        return TransferConfig(source="sample-patches")
    head, _, rest = raw.partition(":")
    if head == "image-folder" or (not rest and Path(raw).is_dir()):
        path = rest if head == "image-folder" else raw
        if not path or not Path(path).is_dir():
            raise ValueError(f"image-folder source {raw!r}: {path or '(no path)'} is not a directory of "
                             "<class>/<image> files")
        return TransferConfig(source="dataset", dataset="image-folder", data_dir=path, split="all")
    if head == "dataset":
        head, _, rest = rest.partition(":")
    name = head.strip().lower().replace("_", "-")
    if name not in available_datasets():
        raise ValueError(f"unknown source {raw!r}; use sample-patches, image-folder:PATH, or a dataset "
                         f"NAME[:SPLIT] of: {', '.join(available_datasets())}")
    split = rest or default_split
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"source {raw!r}: split must be train, val, test or all, got {split!r}")
    return TransferConfig(source="dataset", dataset=name, split=split)


def reference_data(meta: dict[str, Any], input_shape: tuple[int, ...]) -> Any:
    """What :func:`build_transfer_set` is handed as the victim's data: the target's own dataset when its
    metadata names one that loads here (so ``--pool digits`` reuses it), else a stand-in with the input shape."""
    name = meta.get("dataset")
    if name:
        try:
            data = load_dataset(name, seed=int(meta.get("data_seed", 0) or 0))
        except (FileNotFoundError, ValueError):
            data = None
        if data is not None and tuple(data.input_shape) == tuple(input_shape):
            return data
    return SimpleNamespace(name="", input_shape=tuple(input_shape))


def build_pool(sources: list[str], *, reference: Any) -> tuple[Tensor, Tensor | None]:
    """The attacker's pool from one or several SOURCEs, joined (classes numbered one source after another;
    labels ``None`` when any source has none). A source whose inputs do not fit the target is a ``ValueError``."""
    if not sources:
        raise ValueError("--pool needs at least one SOURCE")
    xs, ys, offset = [], [], 0
    for s in sources:
        cfg = parse_source(s)
        try:
            x, y = build_transfer_set(cfg, victim_data=reference)
        except ValueError as e:
            raise ValueError(f"--pool {s}: {e}") from None
        if tuple(x.shape[1:]) != tuple(reference.input_shape):
            raise ValueError(f"--pool {s} has inputs {tuple(x.shape[1:])}, the target takes "
                             f"{tuple(reference.input_shape)}")
        xs.append(x)
        if y is not None:
            ys.append(y + offset)
            offset = int(ys[-1].max()) + 1
    labels = torch.cat(ys) if len(ys) == len(xs) else None
    return torch.cat(xs).contiguous(), labels


@dataclass
class AuditData:
    """The data of one audit: the attackers' ``pool`` (held-out inputs removed) with its labels or clusters,
    the JB family's ``seeds``, and the evaluation inputs ``eval_x`` with their labels ``eval_y`` (``None``:
    measured as agreement with the target) and a one-line ``eval_description``."""

    pool: Tensor
    pool_labels: Tensor
    seeds: Tensor
    eval_x: Tensor
    eval_y: Tensor | None
    eval_description: str
    pool_description: str


def load_test(source: str, *, reference: Any, num_classes: int) -> tuple[Tensor, Tensor]:
    """The owner's labelled test set from SOURCE (a dataset's ``test`` split by default); a ``ValueError`` when
    its inputs do not fit the target or a label is not one of the target's ``num_classes`` classes."""
    cfg = parse_source(source, default_split="test")
    if cfg.source != "dataset":
        raise ValueError(f"--test {source}: needs labelled data (a dataset or image-folder:PATH)")
    if cfg.dataset != getattr(reference, "name", None):
        _check_test_shape(source, load_dataset(cfg.dataset, data_dir=cfg.data_dir), reference=reference)
    try:
        x, y = build_transfer_set(cfg, victim_data=reference)
    except ValueError as e:
        raise ValueError(f"--test {source}: {e}") from None
    if y is None:
        raise ValueError(f"--test {source} has no labels")
    if tuple(x.shape[1:]) != tuple(reference.input_shape):
        raise ValueError(f"--test {source} has inputs {tuple(x.shape[1:])}, the target takes "
                         f"{tuple(reference.input_shape)}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"--test {source} has labels {lo}..{hi}, outside the target's {num_classes} classes "
                         f"(0..{num_classes - 1})")
    return x, y


def _check_test_shape(source: str, data: Any, *, reference: Any) -> None:
    """A test set measures the target on its own task: a dataset whose inputs have another shape is refused,
    never resized to fit (the attacker's pool may be; its labels are then checked against the classes)."""
    shape, want = tuple(data.input_shape), tuple(reference.input_shape)
    if shape != want:
        raise ValueError(f"--test {source} has {'x'.join(map(str, shape))} inputs, the target takes "
                         f"{'x'.join(map(str, want))}: a test set must be the target's own kind of data (it is never "
                         "resized; resized data can go in --pool)")


def cluster_labels(x: Tensor, *, clusters: int, seed: int = 0) -> Tensor:
    """Classes for an unlabelled pool, for the adaptive attacker's action tree: k-means on the flattened inputs
    (scikit-learn's ``MiniBatchKMeans``; Orekondy et al.'s adaptive strategy needs a labelled pool, and the
    clusters stand in for its classes)."""
    from sklearn.cluster import MiniBatchKMeans

    flat = x.reshape(len(x), -1).numpy()
    km = MiniBatchKMeans(n_clusters=min(clusters, len(x)), random_state=seed, n_init=1, batch_size=1024)
    return torch.as_tensor(km.fit_predict(flat), dtype=torch.long)


def prepare_data(pool_sources: list[str], test_source: str | None, *, meta: dict[str, Any],
                 input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> AuditData:
    """Pool, seeds and evaluation set of an audit, every input check done (before any query or training)."""
    reference = reference_data(meta, input_shape)
    pool, labels = build_pool(pool_sources, reference=reference)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)
    hold = min(HOLDOUT, len(pool) // 10)
    held, kept = order[:hold], order[hold:]
    if len(kept) == 0:
        raise ValueError(f"--pool has {len(pool)} inputs: too few to hold some out and attack with the rest")
    eval_y: Tensor | None
    if test_source is not None:
        tx, ty = load_test(test_source, reference=reference, num_classes=num_classes)
        perm = torch.randperm(len(tx), generator=g)
        n_seed = min(SEED_SIZE, len(tx) // 2)
        seeds, eval_x, eval_y = tx[perm[:n_seed]], tx[perm[n_seed:]], ty[perm[n_seed:]]
        eval_description = (f"accuracy on {test_source} ({len(eval_x)} labelled inputs; {n_seed} more seed the JB "
                            "family)")
    else:
        eval_x, eval_y = pool[held], None
        seeds = pool[kept[:SEED_SIZE]]
        eval_description = f"agreement with the target on {hold} held-out pool inputs (no --test: no labels)"
        if hold == 0:
            raise ValueError("--pool is too small to hold out inputs for the agreement measure; pass --test")
    x_pool = pool[kept].contiguous()
    pool_labels = labels[kept] if labels is not None else cluster_labels(x_pool, clusters=max(10, num_classes),
                                                                         seed=seed)
    desc = f"{' + '.join(pool_sources)} ({len(x_pool)} inputs" + (", labelled)" if labels is not None else
                                                                 ", k-means clusters as classes)")
    return AuditData(pool=x_pool, pool_labels=pool_labels, seeds=seeds.contiguous(), eval_x=eval_x.contiguous(),
                     eval_y=eval_y, eval_description=eval_description, pool_description=desc)
