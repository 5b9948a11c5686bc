"""MNIST-1D (Greydanus 2020): signals of 40 points, 10 classes, generated here from the mnist1d package's
own templates with its make_dataset; nothing is downloaded (its get_dataset, which may download the published
pickle, is never called). How hard it is to classify is set by the transforms' scales (dataset.corr_noise_scale,
iid_noise_scale, shear_scale, max_translation, scale_coeff), how much of it there is by num_samples.

The signals come as uint8 images N×1×1×40, as every reader's do: make_dataset's standardised floats mapped
linearly from their [min, max] onto 0..255 (a rounding error under 0.2 % of that range; the pipeline then
standardises them again with the train split's mean and std). Where data_dir exists they are cached in
`<data_dir>/phicenter-cache/` under a digest of the recipe (generating takes about a second per 5000)."""

from __future__ import annotations

import random
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from phicenter.data.cache import cached_generated
from phicenter.data.errors import DataError
from phicenter.data.options import Mnist1dOptions
from phicenter.data.registry import register_dataset

LENGTH = 40  # points per signal (mnist1d's final_seq_length)
CLASSES = 10  # mnist1d's templates: the digits 0..9


def _args(**options):
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(options, final_seq_length=LENGTH, shuffle_seq=False)
    args.pop("url")  # make_dataset never reads it; nothing here downloads
    return args


def generate(**options) -> dict[str, np.ndarray]:
    """mnist1d.data.make_dataset with these settings (float signals), the global random and numpy states it
    seeds left as they were."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    states = random.getstate(), np.random.get_state()
    try:
        return make_dataset(ObjectView(_args(**options)))
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def to_uint8(*signals: np.ndarray) -> list[torch.Tensor]:
    """Each N×L float array as N×1×1×L uint8, one linear map from the arrays' joint [min, max] onto 0..255."""
    lo = min(float(s.min()) for s in signals)
    hi = max(float(s.max()) for s in signals)
    scale = 255.0 / max(hi - lo, 1e-12)
    return [torch.from_numpy(np.rint((s - lo) * scale).astype(np.uint8)).view(len(s), 1, 1, -1) for s in signals]


def _check(options: dict) -> None:
    """make_dataset draws num_samples // 10 signals per class, then puts train_split of them first."""
    n = options["num_samples"] // CLASSES * CLASSES
    if not 0 < int(n * options["train_split"]) < n:
        raise DataError(
            f"dataset.num_samples={options['num_samples']} with train_split={options['train_split']} "
            f"leaves a split empty ({options['num_samples'] // CLASSES} signals per class)"
        )


def _make(options: dict) -> dict[str, torch.Tensor]:
    try:
        d = generate(**options)
    except ImportError:
        raise DataError("dataset=mnist1d needs the mnist1d package: pip install mnist1d") from None
    x_train, x_test = to_uint8(d["x"], d["x_test"])
    labels = [torch.from_numpy(np.asarray(y)).long() for y in (d["y"], d["y_test"])]
    return {"x_train": x_train, "y_train": labels[0], "x_test": x_test, "y_test": labels[1]}


@register_dataset
def mnist1d(
    root: Path,
    num_samples: int = Mnist1dOptions.num_samples,
    train_split: float = Mnist1dOptions.train_split,
    corr_noise_scale: float = Mnist1dOptions.corr_noise_scale,
    iid_noise_scale: float = Mnist1dOptions.iid_noise_scale,
    shear_scale: float = Mnist1dOptions.shear_scale,
    max_translation: int = Mnist1dOptions.max_translation,
    scale_coeff: float = Mnist1dOptions.scale_coeff,
    seed: int = Mnist1dOptions.seed,
    **_,
):
    """MNIST-1D generated with these settings: train_split of num_samples to train, the rest to test."""
    options = {
        "num_samples": int(num_samples),
        "train_split": float(train_split),
        "corr_noise_scale": float(corr_noise_scale),
        "iid_noise_scale": float(iid_noise_scale),
        "shear_scale": float(shear_scale),
        "max_translation": int(max_translation),
        "scale_coeff": float(scale_coeff),
        "seed": int(seed),
    }
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = None
    _check(options)
    recipe = dict(options, mnist1d=version, length=LENGTH)
    return cached_generated(root, "mnist1d", recipe, lambda: _make(options))
