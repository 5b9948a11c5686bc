"""Datasets as uint8 tensors resident on the training device, batched by index with seeded permutations.

Every dataset reader returns raw uint8 images (N, C, H, W) and int64 labels; one registry maps names to
readers (registry; a module per family: mnist_reader, cifar_reader, bundled, npzfile). The splits (splits),
normalisation and augmentation (transforms) are shared by all of them. Datasets that take real decoding (MNIST,
CIFAR) are decoded once and cached as uint8 tensors in `<data_dir>/phicenter-cache/` (cache).

Two pipelines serve batches (`dataset.pipeline`, pipelines): `fast` (batches.Batches: resident tensors,
batched augmentation and normalisation on the device, no workers) and `torchvision` (torchvision_pipeline: a
standard DataLoader over a Dataset with per-sample PIL transforms, for comparison). Both draw the same seeded
permutation, so with augmentation off they give the same batches.
"""

from __future__ import annotations

from phicenter.data import bundled, cifar_reader, mnist_reader, npzfile  # noqa: F401 (each registers its datasets)
from phicenter.data.batches import Batches, Group, spans
from phicenter.data.bundled import digits, synthetic
from phicenter.data.cache import CACHE_DIR, CACHE_VERSION, cache_path, cached
from phicenter.data.cifar_reader import CIFAR, cifar10, cifar100, cifar_files
from phicenter.data.errors import DataError
from phicenter.data.mnist_reader import MNIST_FILES, mnist
from phicenter.data.npzfile import npz
from phicenter.data.pipelines import PIPELINES, STEPS_PER_CALL, eval_batch_size, loaders, make_loaders, path_batches
from phicenter.data.registry import DATASETS, register_dataset
from phicenter.data.splits import Splits, load
from phicenter.data.torchvision_pipeline import ImageDataset, LoaderBatches, SeededOrder
from phicenter.data.transforms import NORMALIZE, augment, augment_draws, channel_stats, statistics

__all__ = [
    "CACHE_DIR",
    "CACHE_VERSION",
    "CIFAR",
    "DATASETS",
    "MNIST_FILES",
    "NORMALIZE",
    "PIPELINES",
    "STEPS_PER_CALL",
    "Batches",
    "DataError",
    "Group",
    "ImageDataset",
    "LoaderBatches",
    "SeededOrder",
    "Splits",
    "augment",
    "augment_draws",
    "cache_path",
    "cached",
    "channel_stats",
    "cifar10",
    "cifar100",
    "cifar_files",
    "digits",
    "eval_batch_size",
    "load",
    "loaders",
    "make_loaders",
    "mnist",
    "npz",
    "path_batches",
    "register_dataset",
    "spans",
    "statistics",
    "synthetic",
]
