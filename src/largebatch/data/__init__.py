"""Datasets: a registry of builders that return a :class:`DatasetBundle` on the device."""

from largebatch.data import idx, mnist1d  # noqa: F401  (registers the datasets)
from largebatch.data.base import DatasetBundle, Split, TensorSplit, stratified_subset
from largebatch.data.registry import (
    DATASETS,
    DataError,
    DatasetInfo,
    build_dataset,
    check_dataset_name,
)

from . import caltech101, cifar, image_folder  # noqa: F401  (registers the image datasets)

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetBundle",
    "DatasetInfo",
    "Split",
    "TensorSplit",
    "build_dataset",
    "check_dataset_name",
    "stratified_subset",
]
