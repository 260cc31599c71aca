"""Datasets: a registry of image datasets with explicit train/validation/test splits."""

from modelsteal.data.idx import read_idx, write_idx
from modelsteal.data.patches import sample_patches
from modelsteal.data.registry import (
    DatasetNotFoundError,
    DatasetSplits,
    available_datasets,
    load_dataset,
    register_dataset,
)

__all__ = [
    "DatasetNotFoundError",
    "DatasetSplits",
    "available_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "sample_patches",
    "write_idx",
]
