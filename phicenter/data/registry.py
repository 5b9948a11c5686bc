"""The one registry of datasets, and what every reader shares.

A reader takes the data root (and its `dataset.*` options) and returns raw uint8 images (N, C, H, W) and int64
labels: x_train, y_train, x_test, y_test, optionally x_val and y_val. `register_dataset` names it after the
function; phicenter.data.splits reads through it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from phicenter.data.errors import DataError
from phicenter.data.options import DATASET_OPTIONS

DATASETS: dict[str, Callable[..., dict]] = {}


def register_dataset(fn):
    """Registers a reader under its function's name, which must have its options declared (data.options)."""
    if fn.__name__ not in DATASET_OPTIONS:
        raise TypeError(f"dataset {fn.__name__!r}: declare its options in phicenter.data.options.DATASET_OPTIONS")
    DATASETS[fn.__name__] = fn
    return fn


def _nchw(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x))
    if x.dtype != torch.uint8:
        raise DataError(f"images must be uint8, got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.dim() == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4:
        raise DataError(f"images must be N×H×W or N×C×H×W, got shape {tuple(x.shape)}")
    return x.contiguous()


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y)).long().flatten()


def _missing(what: str, root: Path, download: bool, expected: str, err: Exception | None = None) -> DataError:
    how = "download failed (no network?)" if download else "not found and dataset.download=false"
    tail = f" [{type(err).__name__}]" if err is not None else ""
    return DataError(
        f"{what}: {how} in {root} (expected {expected}); put the files there, "
        f"or set data_dir=... / PHICENTER_DATA_DIR{tail}"
    )
