"""Datasets that need no files: scikit-learn's 8×8 digits and seeded synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from phicenter.data.options import DigitsOptions, SyntheticOptions
from phicenter.data.registry import register_dataset
from phicenter.method import seeding


@register_dataset
def digits(root: Path, test_size: int = DigitsOptions.test_size, split_seed: int = DigitsOptions.split_seed, **_):
    """scikit-learn's bundled 8×8 handwritten digits (real data, no network); values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=seeding.generator(split_seed, "digits-test"))
    te, tr = perm[:test_size], perm[test_size:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


@register_dataset
def synthetic(
    root: Path,
    n_train: int = SyntheticOptions.n_train,
    n_test: int = SyntheticOptions.n_test,
    num_classes: int = SyntheticOptions.num_classes,
    shape=SyntheticOptions.shape,
    noise: float = SyntheticOptions.noise,
    seed: int = SyntheticOptions.seed,
    **_,
):
    """Seeded class prototypes plus noise: learnable, tiny, any shape (tests and CIFAR-shaped benches)."""
    g = seeding.generator(seed, "synthetic")
    protos = torch.rand((num_classes, *shape), generator=g) * 255
    n = n_train + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = (protos[y] + noise * torch.randn((n, *shape), generator=g)).clamp(0, 255).round().to(torch.uint8)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}
