"""Datasets as uint8 tensors resident on the training device, batched by index with seeded permutations.

Every dataset loader returns raw uint8 images (N, C, H, W) and int64 labels; one registry maps names to
loaders. Splits, normalisation and augmentation are shared by all of them. Datasets that take real decoding
(MNIST, CIFAR) are decoded once and cached as uint8 tensors in `<data_dir>/phicenter-cache/`.

Two pipelines serve batches (`dataset.pipeline`): `fast` (Batches: resident tensors, batched augmentation and
normalisation on the device, no workers) and `torchvision` (a standard DataLoader over a Dataset with
per-sample PIL transforms, for comparison). Both draw the same seeded permutation, so with augmentation off
they give the same batches.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from phicenter.data import npzfile
from phicenter.data.cache import CACHE_DIR, CACHE_VERSION, cache_path, cached  # noqa: F401 (re-exported)
from phicenter.data.errors import DataError
from phicenter.data.shards import batches_per_epoch, shard, shard_size
from phicenter.data.transforms import NORMALIZE, augment, augment_draws, channel_stats, statistics  # noqa: F401 (re-exported)
from phicenter.method import seeding

log = logging.getLogger("phicenter")

DATASETS: dict[str, Callable[..., dict]] = {}


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


def _missing(what: str, root: Path, download: bool, expected: str, err: Exception | None = None) -> DataError:
    how = "download failed (no network?)" if download else "not found and dataset.download=false"
    tail = f" [{type(err).__name__}]" if err is not None else ""
    return DataError(
        f"{what}: {how} in {root} (expected {expected}); put the files there, "
        f"or set data_dir=... / PHICENTER_DATA_DIR{tail}"
    )


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
def mnist(root: Path, download: bool = True, **_):
    return cached(root, "mnist", MNIST_FILES, lambda: _decode_mnist(root, download))


@register_dataset
def cifar10(root: Path, download: bool = True, **_):
    return cached(root, "cifar10", cifar_files("cifar10"), lambda: _decode_cifar("cifar10", root, download))


@register_dataset
def cifar100(root: Path, download: bool = True, **_):
    return cached(root, "cifar100", cifar_files("cifar100"), lambda: _decode_cifar("cifar100", root, download))


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
def synthetic(
    root: Path,
    n_train: int = 600,
    n_test: int = 200,
    num_classes: int = 10,
    shape=(1, 8, 8),
    noise: float = 60.0,
    seed: int = 0,
    **_,
):
    """Seeded class prototypes plus noise: learnable, tiny, any shape (tests and CIFAR-shaped benches)."""
    g = seeding.generator(seed, "synthetic")
    protos = torch.rand((num_classes, *shape), generator=g) * 255
    n = n_train + n_test
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = (protos[y] + noise * torch.randn((n, *shape), generator=g)).clamp(0, 255).round().to(torch.uint8)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


@register_dataset
def npz(root: Path, path: str | None = None, **_):
    """Your own data: one .npz with x_train, y_train, x_test, y_test (and optionally x_val, y_val), read and
    checked by phicenter.data.npzfile."""
    return {k: (_nchw(v) if k.startswith("x") else _labels(v)) for k, v in npzfile.read(path).items()}


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
    name: str, root: str | Path, val_size: int = 5000, split_seed: int = 0, normalize: str = "dataset", **options
) -> Splits:
    """Read a dataset and hold a seeded validation split out of train (unless the dataset brings one).

    normalize="dataset": inputs are normalised with the train split's per-channel mean and std; "imagenet":
    with torchvision's ImageNet statistics (for ImageNet-pretrained weights; 3-channel images only)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choices: {', '.join(sorted(DATASETS))}")
    if normalize not in NORMALIZE:
        raise DataError(f"dataset.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
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


class Group:
    """`count` consecutive batches of one epoch, each made only when the loop reaches it (hot in cache, and
    never k batches in memory at once). Groups are consumed in order, each one fully, as a loop does;
    anything else is an error rather than a silently different order."""

    def __init__(self, stream: _Stream, start: int, count: int):
        self.stream, self.start, self.count = stream, start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        if self.stream.position != self.start:
            raise RuntimeError(
                f"batch group starting at {self.start} consumed out of order "
                f"(the epoch is at batch {self.stream.position})"
            )
        for _ in range(self.count):
            yield self.stream.next()


class _Stream:
    def __init__(self, batches, position: int = 0):
        self.batches, self.position = batches, position

    def next(self):
        self.position += 1
        return next(self.batches)


def spans(total: int, group: int, start: int = 0):
    """(first batch, count) of each item of an epoch of `total` batches in groups of `group`: the groups keep
    their places, and batches before `start` (where a round that starts mid-epoch starts) are left out, so the
    epoch has as many items as a whole one, the first ones shorter or empty."""
    for lo in range(0, total, group):
        first = max(lo, start)
        yield first, max(0, min(lo + group, total) - first)


def _grouped(batches, group: int, total: int, start: int = 0):
    """Lists of the batches of each span (`batches` yields those from `start` on); else each batch itself."""
    if group <= 1 and start == 0:
        yield from batches
        return
    it = iter(batches)
    for _, count in spans(total, max(1, group), start):
        yield [next(it) for _ in range(count)]


class Batches:
    """Batches by index from resident tensors: a permutation seeded by (seed, round, epoch), normalised
    (and optionally augmented) on the device. No worker processes, no per-sample transforms.

    Yields (x, y) pairs; with group=k > 1, Groups of k consecutive pairs (iterables, made lazily; CohortModule
    takes one optimizer step per pair), so a training loop's per-item overhead is paid once per k steps.
    An epoch started at batch j (`set_epoch(..., start=j)`) yields Groups in the places of a whole epoch's
    (spans) holding its batches j.., augmentation included."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        group: int = 1,
    ):
        self.x, self.y = x, y
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last, self.group = drop_last, max(1, int(group))
        self.round = self.epoch = self.start = 0
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> Batches:
        """From now on, yield only this process's shard of each epoch's order (data.shards)."""
        self.rank, self.world = int(rank), int(world)
        return self

    def to(self, device) -> Batches:
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def set_epoch(self, round_index: int, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch` of round `round_index`, from its batch `start` on."""
        self.round, self.epoch, self.start = round_index, epoch, int(start)

    def n_batches(self) -> int:
        return batches_per_epoch(len(self.y), self.batch_size, self.world, self.drop_last)

    def __len__(self) -> int:
        return math.ceil(self.n_batches() / self.group)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std in place, the very arithmetic of ToTensor + Normalize (bit-identical)."""
        return xb.float().div_(255.0).sub_(self.mean).div_(self.std)

    def __iter__(self):
        if self.group == 1 and self.start == 0:
            return self._batches()
        return self._groups()

    def _groups(self):
        stream = _Stream(self._batches(), self.start)
        for first, count in spans(self.n_batches(), self.group, self.start):
            yield Group(stream, first, count)

    def _batches(self):
        g = seeding.generator(self.seed, "batches", self.round, self.epoch)
        order = torch.randperm(len(self.y), generator=g) if self.shuffle else None
        if self.world > 1:
            order = shard(torch.arange(len(self.y)) if order is None else order, self.rank, self.world)
        n = shard_size(len(self.y), self.world)
        order = None if order is None else order.to(self.x.device)
        for i in range(self.n_batches()):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if i < self.start:  # left out; its augmentation draws are drawn, so the next batches get theirs
                if self.augment:
                    augment_draws(hi - lo, g)
                continue
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:  # index_select copies whole rows: ~10x faster than x[idx] for small batches
                idx = order[lo:hi]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.augment:
                xb = augment(xb, g)
            yield self.normalize(xb), yb


# ---------------------------------------------------------------------------------------------------------
# The torchvision pipeline: a standard DataLoader over a Dataset with per-sample PIL transforms. For comparison
# (phicenter.bench) and as the shape a streaming dataset would take. The sample order comes from the same
# seeded permutation as Batches, so with augmentation off both pipelines give the same batches.


class SeededOrder(torch.utils.data.Sampler):
    """Indices in Batches' order (seeded by (seed, round, epoch)) from the `skip`-th on; len: the whole epoch."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = False):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.round = self.epoch = self.skip = 0
        self.rank, self.world = 0, 1

    def set_epoch(self, round_index: int, epoch: int, skip: int = 0) -> None:
        self.round, self.epoch, self.skip = round_index, epoch, int(skip)

    def __len__(self) -> int:
        return shard_size(self.n, self.world)

    def __iter__(self):
        g = seeding.generator(self.seed, "batches", self.round, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        return iter(shard(order, self.rank, self.world)[self.skip :].tolist())


class ImageDataset(torch.utils.data.Dataset):
    """torchvision-style: each item is one PIL image through per-sample transforms (RandomCrop with 4-pixel
    padding and RandomHorizontalFlip when augmenting, then ToTensor and Normalize).

    With `seeded` (the default), each sample's augmentation draws from the torch RNG seeded by
    (seed, round, epoch, index), so runs are repeatable with any number of workers; seeded=False is the
    plain unseeded pipeline most code uses (the bench's baseline)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        augment: bool = False,
        seed: int = 0,
        seeded: bool = True,
        pad: int = 4,
    ):
        from torchvision import transforms as T

        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()  # N×H×W×C, as PIL wants
        if self.images.shape[-1] == 1:
            self.images = self.images[..., 0]
        self.targets = y.tolist()
        self.augment, self.seed, self.seeded = augment, seed, seeded
        self.round = self.epoch = 0
        steps = [T.RandomCrop(tuple(x.shape[2:]), padding=pad), T.RandomHorizontalFlip()] if augment else []
        steps += [T.ToTensor(), T.Normalize(mean.tolist(), std.tolist())]
        self.transform = T.Compose(steps)

    def set_epoch(self, round_index: int, epoch: int) -> None:
        self.round, self.epoch = round_index, epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        if self.augment and self.seeded:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seeding.derive(self.seed, "augment", self.round, self.epoch, i))
                return self.transform(img), self.targets[i]
        return self.transform(img), self.targets[i]


class LoaderBatches:
    """A DataLoader behind the interface the round loop uses (set_epoch(round, epoch), to(device), len)."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        group: int = 1,
    ):
        self.dataset, self.group, self.batch_size, self.start = dataset, max(1, int(group)), batch_size, 0
        self.order = SeededOrder(len(dataset), seed, shuffle)
        self._kw = {"batch_size": batch_size, "sampler": self.order, "num_workers": num_workers}
        self.loader = torch.utils.data.DataLoader(dataset, pin_memory=pin_memory, **self._kw)

    def to(self, device) -> LoaderBatches:
        """Batches are made on the CPU and moved per step by Lightning; for CUDA, in pinned memory."""
        pin = torch.device(device).type == "cuda"
        if pin != self.loader.pin_memory:
            self.loader = torch.utils.data.DataLoader(self.dataset, pin_memory=pin, **self._kw)
        return self

    def set_epoch(self, round_index: int, epoch: int, start: int = 0) -> None:
        """As Batches.set_epoch (augmentation is seeded per sample: batches left out change no other)."""
        self.start = int(start)
        self.order.set_epoch(round_index, epoch, self.start * self.batch_size)
        self.dataset.set_epoch(round_index, epoch)

    def shard(self, rank: int, world: int) -> LoaderBatches:
        self.order.rank, self.order.world = int(rank), int(world)
        return self

    def n_batches(self) -> int:
        return batches_per_epoch(self.order.n, self.batch_size, self.order.world)

    def __len__(self) -> int:
        return math.ceil(self.n_batches() / self.group)

    def __iter__(self):  # a generator: the epoch is read at the first batch, after set_epoch
        yield from _grouped(self.loader, self.group, self.n_batches(), self.start)


PIPELINES = ("fast", "torchvision")


def make_loaders(
    splits: Splits,
    batch_size: int,
    *,
    seed: int = 0,
    augment: bool = False,
    eval_batch_size: int | None = None,
    pipeline: str = "fast",
    num_workers: int = 0,
    group: int = 1,
):
    """(train, val, test) iterables of normalised float batches; only train is shuffled and augmented,
    and only train is grouped (lists of `group` batches, for CohortModule)."""
    eval_bs = eval_batch_size or batch_size
    s = splits
    if pipeline == "fast":
        return (
            Batches(
                s.x_train, s.y_train, s.mean, s.std, batch_size, shuffle=True, augment=augment, seed=seed, group=group
            ),
            Batches(s.x_val, s.y_val, s.mean, s.std, eval_bs),
            Batches(s.x_test, s.y_test, s.mean, s.std, eval_bs),
        )
    if pipeline == "torchvision":

        def dl(x, y, bs, train):
            ds = ImageDataset(x, y, s.mean, s.std, augment=augment and train, seed=seed)
            return LoaderBatches(ds, bs, shuffle=train, seed=seed, num_workers=num_workers, group=group if train else 1)

        return (
            dl(s.x_train, s.y_train, batch_size, True),
            dl(s.x_val, s.y_val, eval_bs, False),
            dl(s.x_test, s.y_test, eval_bs, False),
        )
    raise DataError(f"dataset.pipeline must be one of {', '.join(PIPELINES)}, got {pipeline!r}")


STEPS_PER_CALL = 16  # optimizer steps per Lightning training_step call (group) in the round loop


def eval_batch_size(cfg, batch_size: int) -> int:
    """The batch of validation and test: eval_batch_size (default 1000), never below the training batch."""
    return max(int(batch_size), int(cfg.get("eval_batch_size") or 1000))


def loaders(cfg, splits: Splits, batch_size: int, seed: int, group: int = 1):
    """make_loaders for a run's config: dataset.pipeline (fast|torchvision), dataset.augment,
    dataset.num_workers (torchvision only), eval_batch_size; train grouped by `group`."""
    ds = cfg.dataset
    return make_loaders(
        splits,
        batch_size,
        seed=seed,
        augment=bool(ds.get("augment", False)),
        eval_batch_size=eval_batch_size(cfg, batch_size),
        pipeline=str(ds.get("pipeline", "fast")),
        num_workers=int(ds.get("num_workers") or 0),
        group=group,
    )
