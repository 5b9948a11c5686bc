"""A dataset read through the registry and split: train, a seeded validation split held out of it, test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from phicenter.data.errors import DataError
from phicenter.data.options import DatasetOptions
from phicenter.data.registry import DATASETS
from phicenter.data.transforms import statistics
from phicenter.method import seeding


@dataclass
class Splits:
    """uint8 images and int64 labels of each split, plus the per-channel statistics of the train split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def load(
    name: str,
    root: str | Path,
    val_size: int = DatasetOptions.val_size,
    split_seed: int = DatasetOptions.split_seed,
    normalize: str = DatasetOptions.normalize,
    **options,
) -> Splits:
    """Read a dataset and hold a seeded validation split out of train (unless the dataset brings one).

    normalize="dataset": inputs are normalised with the train split's per-channel mean and std; "imagenet":
    with torchvision's ImageNet statistics (for ImageNet-pretrained weights; 3-channel images only)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}")
    raw = DATASETS[name](Path(root).expanduser().resolve(), split_seed=split_seed, **options)
    x, y = raw["x_train"], raw["y_train"]
    if len(x) != len(y) or len(raw["x_test"]) != len(raw["y_test"]):
        raise DataError(f"{name}: images and labels differ in length")
    if "x_val" in raw:
        xv, yv = raw["x_val"], raw["y_val"]
    else:
        if not 0 <= val_size < len(y):
            raise DataError(f"dataset.val_size={val_size} must be in [0, {len(y)}) for {name}")
        perm = torch.randperm(len(y), generator=seeding.generator(split_seed, "val-split"))
        xv, yv = x[perm[:val_size]], y[perm[:val_size]]
        x, y = x[perm[val_size:]], y[perm[val_size:]]
    classes = int(max(y.max(), raw["y_test"].max(), yv.max() if len(yv) else 0)) + 1
    if normalize == "imagenet" and x.shape[1] != 3:
        raise DataError(f"dataset.normalize=imagenet needs 3-channel images, {name} has {x.shape[1]}")
    mean, std = statistics(x, normalize)
    return Splits(x, y, xv, yv, raw["x_test"], raw["y_test"], classes, mean, std)
