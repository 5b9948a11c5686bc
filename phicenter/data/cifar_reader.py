"""CIFAR-10 and CIFAR-100: torchvision's pickled batches read directly, decoded once into phicenter's cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from phicenter.data.cache import cached
from phicenter.data.errors import DataError
from phicenter.data.options import DownloadedOptions
from phicenter.data.registry import _missing, register_dataset

CIFAR = {  # name: (torchvision class, folder, train files, test files, meta file, label key)
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "batches.meta",
        "labels",
    ),
    "cifar100": ("CIFAR100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels"),
}


def cifar_files(name: str) -> tuple[str, ...]:
    _, folder, train, test, meta, _ = CIFAR[name]
    return tuple(f"{folder}/{f}" for f in (*train, *test, meta))


def _read_cifar_batch(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as torchvision reads it: 'data' N×3072 uint8 (CHW order), labels a list."""
    try:
        with open(file, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as e:
        raise DataError(
            f"{file}: not a readable CIFAR batch ({type(e).__name__}: {e}); delete it and download again"
        ) from None
    if len(x) != len(y):
        raise DataError(f"{file}: {len(x)} images but {len(y)} labels")
    return x, y


def _decode_cifar(name: str, root: Path, download: bool) -> dict:
    cls_name, folder, train, test, meta, label_key = CIFAR[name]
    expected = f"{folder}/{{{','.join((*train, *test, meta))}}}"
    if not all((root / f).is_file() for f in cifar_files(name)):
        if not download:
            raise _missing(cls_name, root, download, expected)
        import torchvision

        try:  # torchvision downloads and checks the archive's MD5
            getattr(torchvision.datasets, cls_name)(str(root), train=True, download=True)
        except Exception as e:
            raise _missing(cls_name, root, download, expected, e) from None
    out = {}
    for split, files in (("train", train), ("test", test)):
        parts = [_read_cifar_batch(root / folder / f, label_key) for f in files]
        out[f"x_{split}"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        out[f"y_{split}"] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return out


@register_dataset
def cifar10(root: Path, download: bool = DownloadedOptions.download, **_):
    return cached(root, "cifar10", cifar_files("cifar10"), lambda: _decode_cifar("cifar10", root, download))


@register_dataset
def cifar100(root: Path, download: bool = DownloadedOptions.download, **_):
    return cached(root, "cifar100", cifar_files("cifar100"), lambda: _decode_cifar("cifar100", root, download))
