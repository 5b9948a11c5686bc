"""CIFAR-10 and CIFAR-100: torchvision's pickled batches read directly, decoded once into phicenter's cache.

The batches are pickles, and a pickle can run code. They are read by a restricted unpickler that resolves only
what a CIFAR batch holds (dicts, lists, strings, numbers, numpy arrays: `_reconstruct`/`_frombuffer`, `ndarray`
and non-object `dtype`, under numpy 1.x's and 2.x's module names, and `_codecs.encode` for latin-1, which a
Python 3 pickle of protocol 2 writes bytes with); anything else is refused as a DataError naming the file, and
nothing of it runs. That is the safety measure, and it holds for every file. The published MD5 (torchvision's
list) is checked in addition, but only for a batch that holds the published number of images: the tests, and
anyone who writes a small set in this format, use generated batches that no published hash can match."""

from __future__ import annotations

import hashlib
import importlib
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


# The published batches: file name -> (MD5, number of images), as torchvision checks them (datasets.CIFAR10/100).
PUBLISHED = {
    "cifar-10-batches-py/data_batch_1": ("c99cafc152244af753f735de768cd75f", 10000),
    "cifar-10-batches-py/data_batch_2": ("d4bba439e000b95fd0a9bffe97cbabec", 10000),
    "cifar-10-batches-py/data_batch_3": ("54ebc095f3ab1f0389bbae665268c751", 10000),
    "cifar-10-batches-py/data_batch_4": ("634d18415352ddfa80567beed471001a", 10000),
    "cifar-10-batches-py/data_batch_5": ("482c414d41f54cd18b22e5b47cb7c3cb", 10000),
    "cifar-10-batches-py/test_batch": ("40351d587109b95175f43aff81a1287e", 10000),
    "cifar-100-python/train": ("16019d7e3df5f24257cddd939b257f8d", 50000),
    "cifar-100-python/test": ("f0ef6b0ae62326f3e7ffdfab6717acfc", 10000),
}


class Refused(pickle.UnpicklingError):
    """The batch asks for something a CIFAR batch never holds; it was not created, nor anything after it."""


def _latin1(text, encoding="utf-8", errors="strict"):
    """`_codecs.encode` as protocol-2 pickles of bytes use it: a str to its latin-1 bytes, nothing else."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1") and errors == "strict"):
        raise Refused(f"_codecs.encode of {type(text).__name__} as {encoding!r}")
    return text.encode("latin1")


def _dtype(*args):
    """numpy.dtype, for plain dtypes only: an object dtype would let the array hold arbitrary objects."""
    d = np.dtype(*args)
    if d.hasobject:
        raise Refused(f"an object dtype ({d})")
    return d


def _numpy(name: str):
    """numpy's own helper `name` (in numpy._core under 2.x, numpy.core under 1.x)."""
    for module in ("numpy._core.multiarray", "numpy._core.numeric", "numpy.core.multiarray", "numpy.core.numeric"):
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if found is not None:
            return found
    raise ImportError(f"numpy has no {name}")


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch's pickle names (under numpy 1.x's and 2.x's module names)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy("_reconstruct")
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _numpy("_frombuffer")
        raise Refused(f"{module}.{name}")


def _check_published(file: Path, n: int) -> None:
    """A batch of the published size must be the published file (the generated small ones are not checked)."""
    rel = f"{file.parent.name}/{file.name}"
    if rel not in PUBLISHED or n != PUBLISHED[rel][1]:
        return
    md5 = hashlib.md5(file.read_bytes(), usedforsecurity=False).hexdigest()
    if md5 != PUBLISHED[rel][0]:
        raise DataError(f"{file}: MD5 {md5} is not the published {PUBLISHED[rel][0]}; delete it and download again")


def _read_cifar_batch(file: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as torchvision reads it: 'data' N×3072 uint8 (CHW order), labels a list. Read by
    the restricted unpickler: a file that asks for anything else is refused before any of it runs."""
    try:
        with open(file, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except Refused as e:
        raise DataError(
            f"{file}: holds code or objects a CIFAR batch never does ({e}); refused, nothing of it was run; "
            "delete it and download again"
        ) from None
    except Exception as e:
        raise DataError(
            f"{file}: not a readable CIFAR batch ({type(e).__name__}: {e}); delete it and download again"
        ) from None
    try:
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(entry[label_key], dtype=np.int64)
    except Exception as e:
        raise DataError(
            f"{file}: not a readable CIFAR batch ({type(e).__name__}: {e}); delete it and download again"
        ) from None
    if len(x) != len(y):
        raise DataError(f"{file}: {len(x)} images but {len(y)} labels")
    _check_published(file, len(x))
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
