"""`dataset=npz`: your own data in one .npz file, read and checked whole before anything else is done with it.

The file is what numpy.savez writes: x_train, y_train, x_test, y_test, optionally x_val with y_val. Images
are uint8, N×H×W, N×C×H×W or N×H×W×C; labels are integers >= 0, one per image of their split. Anything else
is a DataError naming the file and the array, in one line (the command line refuses it with exit code 2).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from phicenter.data.errors import DataError
from phicenter.data.registry import _labels, _nchw, register_dataset

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
EXPECTED = "x_train, y_train, x_test, y_test; optional x_val, y_val"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def read(path: str | None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, each split's images and labels checked against each other."""
    if not path:
        raise DataError("dataset npz needs dataset.path=/path/to/file.npz")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path: no file at {file}")
    where = f"dataset.path: {file}"
    if not zipfile.is_zipfile(file):
        raise DataError(f"{where} is not an .npz file (the zip of arrays numpy.savez writes, with {EXPECTED})")
    arrays, missing, k = {}, [], None
    try:
        with np.load(file, allow_pickle=False) as f:
            missing = [name for name in REQUIRED if name not in f.files]
            for k in (REQUIRED + OPTIONAL) if not missing else ():
                if k in f.files:
                    arrays[k] = f[k]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        what = f": array {k}" if k else " as an .npz file"
        raise DataError(f"{where}{what} cannot be read ({_one_line(e)})") from None
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)} (expected {EXPECTED})")
    return checked(where, arrays)


def checked(where: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays of one dataset (REQUIRED present), each split's images and labels checked against each other:
    what dataset=npz reads from its file and dataset=custom gets from its target (phicenter.data.custom_reader)."""
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{where}: x_val and y_val must be given together")
    for split in ("train", "val", "test"):
        if f"x_{split}" in arrays:
            _check_split(where, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    return arrays


def _check_split(where: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    xk, yk = f"x_{split}", f"y_{split}"
    if x.dtype != np.uint8:
        raise DataError(f"{where}: {xk} must be uint8 images, got {x.dtype}")
    if x.ndim not in (3, 4):
        raise DataError(f"{where}: {xk} must be N×H×W, N×C×H×W or N×H×W×C, got shape {x.shape}")
    if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: {yk} must be one integer label per image, got {y.dtype} of shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{where}: {xk} has {len(x)} images but {yk} has {len(y)} labels")
    if split != "val" and not len(x):
        raise DataError(f"{where}: {xk} has no images")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: {yk} has a negative label ({y.min()})")


@register_dataset
def npz(root: Path, path: str | None = None, **_):
    """Your own data: one .npz with x_train, y_train, x_test, y_test (and optionally x_val, y_val), read and
    checked by phicenter.data.npzfile."""
    return {k: (_nchw(v) if k.startswith("x") else _labels(v)) for k, v in read(path).items()}
