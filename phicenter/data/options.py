"""Each dataset's options, declared once beside the readers (phicenter.data): what `dataset.KEY=...` may be and its
default. The schema (phicenter.config) checks a run's dataset group against the declaration its name picks, before
torch is imported, so this module is plain Python. A new dataset is its reader, its name here in DATASET_OPTIONS,
and its file in conf/dataset/."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from phicenter.spec import NonNegative, NonNegInt, OpenUnit, PosInt

frozen = dataclass(frozen=True, kw_only=True)


@frozen
class DatasetOptions:
    name: str  # dataset=NAME: the name that picked these options
    val_size: NonNegInt = 5000  # held out of train (unless the dataset brings a validation split)
    split_seed: NonNegInt = 0
    augment: bool = False  # random crop (4-pixel padding) + horizontal flip
    normalize: Literal["dataset", "imagenet"] = "dataset"
    pipeline: Literal["fast", "torchvision"] = "fast"
    num_workers: NonNegInt = 0  # DataLoader workers (pipeline=torchvision)


@frozen
class DownloadedOptions(DatasetOptions):
    download: bool = True  # through torchvision into data_dir


@frozen
class DigitsOptions(DatasetOptions):
    test_size: PosInt = 360
    val_size: NonNegInt = 180


@frozen
class SyntheticOptions(DatasetOptions):
    n_train: PosInt = 600
    n_test: PosInt = 200
    num_classes: PosInt = 10
    shape: tuple[PosInt, ...] = (1, 8, 8)
    noise: NonNegative = 60.0
    seed: NonNegInt = 0
    val_size: NonNegInt = 100


@frozen
class NpzOptions(DatasetOptions):
    path: str  # x_train, y_train, x_test, y_test (optional x_val, y_val)


@frozen
class Mnist1dOptions(DatasetOptions):
    """MNIST-1D (Greydanus 2020), generated from the mnist1d package's templates (mnist1d.data.make_dataset):
    its difficulty is these transforms' scales. Defaults: the package's own (its published dataset)."""

    num_samples: PosInt = 5000  # signals in all, split train_split / the rest into train / test
    train_split: OpenUnit = 0.8
    corr_noise_scale: NonNegative = 0.25  # correlated (Gaussian-filtered) noise
    iid_noise_scale: NonNegative = 0.02  # independent noise per point
    shear_scale: NonNegative = 0.75  # random linear shear of the signal
    max_translation: PosInt = 48  # circular shift drawn from [0, max_translation)
    scale_coeff: NonNegative = 0.4  # random stretch of the template
    seed: NonNegInt = 42  # the generator's seed (mnist1d's default)
    val_size: NonNegInt = 500  # held out of the train split


@frozen
class CustomOptions(DatasetOptions):
    """dataset=custom: your own loader by dotted path (phicenter.targets), called with every undeclared
    dataset.KEY (`+dataset.n=500`) as keywords; it returns the arrays an npz holds (phicenter.data.npzfile)."""

    PASS_THROUGH = "kwargs"  # undeclared keys go to the target, gathered here
    _target_: str  # mypkg.data.load
    kwargs: dict = field(default_factory=dict)  # the target's own keywords, as given


DATASET_OPTIONS: dict[str, type[DatasetOptions]] = {
    "mnist": DownloadedOptions,
    "cifar10": DownloadedOptions,
    "cifar100": DownloadedOptions,
    "digits": DigitsOptions,
    "synthetic": SyntheticOptions,
    "npz": NpzOptions,
    "custom": CustomOptions,
    "mnist1d": Mnist1dOptions,
}
NORMALIZE = typing.get_args(typing.get_type_hints(DatasetOptions)["normalize"])
PIPELINES = typing.get_args(typing.get_type_hints(DatasetOptions)["pipeline"])
