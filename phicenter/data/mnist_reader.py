"""MNIST: torchvision's reader, decoded once into phicenter's cache."""

from __future__ import annotations

from pathlib import Path

from phicenter.data.cache import cached
from phicenter.data.options import DownloadedOptions
from phicenter.data.registry import _labels, _missing, _nchw, register_dataset

MNIST_FILES = (
    "MNIST/raw/train-images-idx3-ubyte",
    "MNIST/raw/train-labels-idx1-ubyte",
    "MNIST/raw/t10k-images-idx3-ubyte",
    "MNIST/raw/t10k-labels-idx1-ubyte",
)


def _decode_mnist(root: Path, download: bool) -> dict:
    """Through torchvision's own MNIST reader (which also downloads)."""
    import torchvision

    try:
        train = torchvision.datasets.MNIST(str(root), train=True, download=download)
        test = torchvision.datasets.MNIST(str(root), train=False, download=download)
    except Exception as e:  # missing files or no network: one clear line, no urllib traceback
        raise _missing("MNIST", root, download, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", e) from None
    return {
        "x_train": _nchw(train.data),
        "y_train": _labels(train.targets),
        "x_test": _nchw(test.data),
        "y_test": _labels(test.targets),
    }


@register_dataset
def mnist(root: Path, download: bool = DownloadedOptions.download, **_):
    return cached(root, "mnist", MNIST_FILES, lambda: _decode_mnist(root, download))
