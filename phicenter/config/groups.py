"""The config groups chosen by name: each model's, dataset's, optimizer's and LR schedule's options, declared in
phicenter.spec's notation (`model=fc_lot` takes FcLotOptions' keys). The schema (config.schema) checks a run's
group against the declaration its name picks. Plain Python: no torch, Hydra or OmegaConf."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from phicenter.spec import NonNegative, NonNegInt, PosInt, Positive, Range, Unit

frozen = dataclass(frozen=True, kw_only=True)

# ------------------------------------------------------------------ models (conf/model/*.yaml)

Init = Literal["torch_default", "kaiming_normal", "glorot_normal"]


@frozen
class ModelOptions:
    name: str  # model=NAME: the name that picked these options
    init: Init = "torch_default"  # Conv/Linear weights' init distribution (a pretrained model: its new head)


@frozen
class FcLotOptions(ModelOptions):
    hidden: tuple[PosInt, ...] = (300, 100)


BatchNormInit = Literal["ones", "uniform"]


@frozen
class BatchNormOptions(ModelOptions):
    """Models with BatchNorm layers."""

    batchnorm_init: BatchNormInit = "ones"  # gamma = 1 (PyTorch's) | gamma ~ U(0, 1) (open_lth's); beta = 0


@frozen
class ResNetOptions(BatchNormOptions):
    init: Init = "kaiming_normal"


@frozen
class Vgg16PretrainedOptions(ModelOptions):
    pretrained: bool = True  # false: the same network, randomly initialised
    weights_path: str | None = None  # a local copy of torchvision's weights file
    batch_norm: bool = False  # torchvision's vgg16_bn and its weights
    verify_weights: bool = True  # refuse a weights_path whose sha256 is not torchvision's


MODEL_OPTIONS: dict[str, type[ModelOptions]] = {
    "fc_lot": FcLotOptions,
    "conv2": ModelOptions,
    "conv4": ModelOptions,
    "conv6": ModelOptions,
    "vgg16": BatchNormOptions,
    "vgg16_pretrained": Vgg16PretrainedOptions,
    "resnet20": ResNetOptions,
    "resnet18": ResNetOptions,
}

# ------------------------------------------------------------------ datasets (conf/dataset/*.yaml)


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


DATASET_OPTIONS: dict[str, type[DatasetOptions]] = {
    "mnist": DownloadedOptions,
    "cifar10": DownloadedOptions,
    "cifar100": DownloadedOptions,
    "digits": DigitsOptions,
    "synthetic": SyntheticOptions,
    "npz": NpzOptions,
}

# ------------------------------------------------------------------ optimizers: torch's keyword arguments

Beta = Annotated[float, Range("[0, 1)")]


@frozen
class AdamFamily:
    name: str  # optim=NAME: the name that picked these options
    lr: NonNegative = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: NonNegative = 1e-8
    weight_decay: NonNegative = 0.0
    amsgrad: bool = False
    foreach: bool | None = None
    maximize: bool = False
    capturable: bool = False
    differentiable: bool = False
    fused: bool | None = None  # true: torch's fused implementation where the device has one


@frozen
class AdamOptions(AdamFamily):
    decoupled_weight_decay: bool = False


@frozen
class AdamWOptions(AdamFamily):
    weight_decay: NonNegative = 1e-2


@frozen
class SGDOptions:
    name: str  # optim=NAME: the name that picked these options
    lr: NonNegative = 1e-3
    momentum: NonNegative = 0.0
    dampening: float = 0.0
    weight_decay: NonNegative = 0.0
    nesterov: bool = False
    maximize: bool = False
    foreach: bool | None = None
    differentiable: bool = False
    fused: bool | None = None


OPTIMIZERS: dict[str, type] = {"adam": AdamOptions, "adamw": AdamWOptions, "sgd": SGDOptions}

# ------------------------------------------------------------------ LR schedules, per round


@frozen
class NoOptions:
    name: str  # schedule=NAME: the name that picked these options


@frozen
class MultiStepOptions:
    name: str  # schedule=NAME: the name that picked these options
    at: tuple[Unit, ...] = (0.5, 0.75)  # milestones, as fractions of the round's epochs
    gamma: Positive = 0.1


SCHEDULES: dict[str, type] = {"none": NoOptions, "multistep": MultiStepOptions, "cosine": NoOptions}
