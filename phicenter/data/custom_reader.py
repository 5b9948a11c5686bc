"""`dataset=custom`: your own data from the callable `dataset._target_` names (phicenter.targets), called with
every undeclared `dataset.KEY` as a keyword. It returns what an .npz of dataset=npz holds (a dict or any
mapping): x_train, y_train, x_test, y_test, optionally x_val with y_val, checked as that file is
(phicenter.data.npzfile). A target that fails or returns anything else is a DataError in one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from phicenter import targets
from phicenter.data.errors import DataError
from phicenter.data.npzfile import EXPECTED, OPTIONAL, REQUIRED, _one_line, checked
from phicenter.data.options import CustomOptions
from phicenter.data.registry import _labels, _nchw, register_dataset

OWN = frozenset(f.name for f in dataclasses.fields(CustomOptions))  # phicenter's options, not the target's


def _arrays(where: str, out) -> dict[str, np.ndarray]:
    if not isinstance(out, Mapping):
        raise DataError(f"{where}: returned {type(out).__name__!r}, not a mapping of arrays ({EXPECTED})")
    missing = [k for k in REQUIRED if k not in out]
    if missing:
        raise DataError(f"{where}: returned no {', '.join(missing)} (expected {EXPECTED})")
    arrays = {}
    for k in (*REQUIRED, *OPTIONAL):
        if k in out:
            try:
                arrays[k] = np.asarray(out[k])
            except Exception as e:
                raise DataError(f"{where}: {k} is not an array ({_one_line(e)})") from None
    return arrays


@register_dataset
def custom(root: Path, _target_: str, **options):
    """Your own data: the target's arrays, checked as dataset=npz checks its file."""
    fn = targets.resolve(_target_, "dataset")
    where = f"dataset._target_={_target_}"
    try:
        out = fn(**{k: v for k, v in options.items() if k not in OWN})
    except Exception as e:  # the user's code: one line, with what it raised
        raise DataError(f"{where}: calling it failed ({_one_line(e)})") from None
    arrays = checked(where, _arrays(where, out))
    return {k: (_nchw(v) if k.startswith("x") else _labels(v)) for k, v in arrays.items()}
