"""Datasets as uint8 tensors resident on the training device, batched by index with seeded permutations.

Every dataset loader returns raw uint8 images (N, C, H, W) and int64 labels; one registry maps names to
loaders. Splits, normalisation and augmentation are shared by all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from phicenter import seeding

DATASETS: dict[str, Callable[..., dict]] = {}


class DataError(ValueError):
    """A dataset that cannot be read: the message names the folder/file and what was expected."""


def register_dataset(fn):
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


def _torchvision(cls_name: str, root: Path, download: bool, expected: str) -> dict:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as e:  # missing files or no network: one clear line, no urllib traceback
        how = "download failed (no network?)" if download else "not found and dataset.download=false"
        raise DataError(f"{cls_name}: {how} in {root} (expected {expected}); put the files there, "
                        f"or set data_dir=... / PHICENTER_DATA_DIR [{type(e).__name__}]") from None
    return {"x_train": _nchw(train.data), "y_train": _labels(train.targets),
            "x_test": _nchw(test.data), "y_test": _labels(test.targets)}


@register_dataset
def mnist(root: Path, download: bool = True, **_):
    return _torchvision("MNIST", root, download, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte")


@register_dataset
def cifar10(root: Path, download: bool = True, **_):
    return _torchvision("CIFAR10", root, download, "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}")


@register_dataset
def cifar100(root: Path, download: bool = True, **_):
    return _torchvision("CIFAR100", root, download, "cifar-100-python/{train,test,meta}")


@register_dataset
def digits(root: Path, test_size: int = 360, split_seed: int = 0, **_):
    """scikit-learn's bundled 8×8 handwritten digits (real data, no network); values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=seeding.generator(split_seed, "digits-test"))
    te, tr = perm[:test_size], perm[test_size:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


@register_dataset
def synthetic(root: Path, n_train: int = 600, n_test: int = 200, num_classes: int = 10,
              shape=(1, 8, 8), noise: float = 60.0, seed: int = 0, **_):
    """Seeded class prototypes plus noise: learnable, tiny, any shape (tests and CIFAR-shaped benches)."""
    g = seeding.generator(seed, "synthetic")
    protos = torch.rand((num_classes, *shape), generator=g) * 255
    n = n_train + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = (protos[y] + noise * torch.randn((n, *shape), generator=g)).clamp(0, 255).round().to(torch.uint8)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


@register_dataset
def npz(root: Path, path: str | None = None, **_):
    """Your own data: one .npz with x_train, y_train, x_test, y_test (and optionally x_val, y_val)."""
    if not path:
        raise DataError("dataset npz needs dataset.path=/path/to/file.npz")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path: no file at {file}")
    with np.load(file) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise DataError(f"{file}: missing key(s) {', '.join(missing)} "
                            "(expected x_train, y_train, x_test, y_test; optional x_val, y_val)")
        out = {k: (_nchw(f[k]) if k.startswith("x") else _labels(f[k])) for k in f.files
               if k in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val")}
    if ("x_val" in out) != ("y_val" in out):
        raise DataError(f"{file}: x_val and y_val must be given together")
    return out


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


def load(name: str, root: str | Path, val_size: int = 5000, split_seed: int = 0, **options) -> Splits:
    """Read a dataset and hold a seeded validation split out of train (unless the dataset brings one)."""
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
    xf = x.double() / 255.0
    mean = xf.mean(dim=(0, 2, 3)).float()
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-6).float()
    return Splits(x, y, xv, yv, raw["x_test"], raw["y_test"], classes, mean, std)


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, for a whole uint8 batch in one gather."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=g).to(x.device)
    flip = (torch.rand((n, 1), generator=g) < 0.5).to(x.device)
    rows = dy + torch.arange(h, device=x.device)
    cols = dx + torch.arange(w, device=x.device)
    cols = torch.where(flip, cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


class Batches:
    """Batches by index from resident tensors: a permutation seeded by (seed, round, epoch), normalised
    (and optionally augmented) on the device. No worker processes, no per-sample transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 batch_size: int, shuffle: bool = False, augment: bool = False, seed: int = 0,
                 drop_last: bool = False):
        self.x, self.y = x, y
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last = drop_last
        self.round = self.epoch = 0

    def to(self, device) -> "Batches":
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def set_epoch(self, round_index: int, epoch: int) -> None:
        self.round, self.epoch = round_index, epoch

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        return (xb.float() / 255.0 - self.mean) / self.std

    def __iter__(self):
        n = len(self.y)
        g = seeding.generator(self.seed, "batches", self.round, self.epoch)
        order = torch.randperm(n, generator=g).to(self.x.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:
                idx = order[sl]
                xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = augment(xb, g)
            yield self.normalize(xb), yb
