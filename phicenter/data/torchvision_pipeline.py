"""The torchvision pipeline: a standard DataLoader over a Dataset with per-sample PIL transforms.

For comparison (phicenter.bench) and as the shape a streaming dataset would take. The sample order comes from
the same seeded permutation as the fast pipeline's, so with augmentation off both give the same batches."""

from __future__ import annotations

import math

import torch

from phicenter.data.batches import _grouped
from phicenter.data.shards import batches_per_epoch, shard, shard_size
from phicenter.method import seeding


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
