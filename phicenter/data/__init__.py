"""Datasets as uint8 tensors resident on the training device, batched by index with seeded permutations.

Every dataset reader returns raw uint8 images (N, C, H, W) and int64 labels; one registry maps names to
readers (registry; a module per family: mnist_reader, cifar_reader, bundled, npzfile, mnist1d_reader). The
splits (splits), normalisation and augmentation (transforms) are shared by all of them. Datasets that take real
decoding (MNIST, CIFAR) or generating (MNIST-1D) are made once and cached as uint8 tensors in
`<data_dir>/phicenter-cache/` (cache).

Two pipelines serve batches (`dataset.pipeline`, pipelines): `fast` (batches.Batches: resident tensors,
batched augmentation and normalisation on the device, no workers) and `torchvision` (torchvision_pipeline: a
standard DataLoader over a Dataset with per-sample PIL transforms, for comparison). Both draw the same seeded
permutation, so with augmentation off they give the same batches.

Each dataset's options are declared in `options` (plain Python: the command line checks them before torch is
imported). Importing the package imports nothing else: a name is loaded from its module on first use.
"""

from __future__ import annotations

import importlib

# the modules whose names the package re-exports; the readers register their datasets when imported
MODULES = (
    "options",
    "errors",
    "registry",
    "bundled",
    "cifar_reader",
    "mnist_reader",
    "npzfile",
    "custom_reader",
    "mnist1d_reader",
    "cache",
    "transforms",
    "splits",
    "batches",
    "pipelines",
    "torchvision_pipeline",
)


def __getattr__(name: str):
    options = importlib.import_module(f"{__name__}.options")
    if hasattr(options, name):
        return getattr(options, name)
    modules = [importlib.import_module(f"{__name__}.{m}") for m in MODULES]  # every reader registered
    for module in modules:
        if name in getattr(module, "__dict__", {}) and not name.startswith("_"):
            return module.__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "custom",
    "digits",
    "eval_batch_size",
    "load",
    "loaders",
    "make_loaders",
    "mnist",
    "mnist1d",
    "npz",
    "path_batches",
    "register_dataset",
    "spans",
    "statistics",
    "synthetic",
]
