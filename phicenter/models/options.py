"""Each architecture's options, declared once beside the architectures (phicenter.models.nets): what
`model.KEY=...` may be and its default. The schema (phicenter.config) checks a run's model group against the
declaration its name picks, before torch is imported, so this module is plain Python. A new architecture is its
constructor in nets.py, its name here in MODEL_OPTIONS, and its file in conf/model/."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from phicenter.spec import PosInt

frozen = dataclass(frozen=True, kw_only=True)

Init = Literal["torch_default", "kaiming_normal", "glorot_normal"]


@frozen
class ModelOptions:
    name: str  # model=NAME: the name that picked these options
    init: Init = "torch_default"  # Conv/Linear weights' init distribution (a pretrained model: its new head)


@frozen
class FcLotOptions(ModelOptions):
    hidden: tuple[PosInt, ...] = (300, 100)


@frozen
class Conv1dOptions(ModelOptions):
    channels: tuple[PosInt, ...] = (32, 32)  # one 1-D conv (+ ReLU, max-pool by 2) per entry
    kernel_size: PosInt = 5  # along the signal; 'same' padding (odd sizes keep the length)


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


@frozen
class CustomOptions(BatchNormOptions):
    """model=custom: your own constructor by dotted path (phicenter.targets), called with in_shape, num_classes
    and every undeclared model.KEY (`+model.width=64`) as keywords; it returns an nn.Module."""

    PASS_THROUGH = "kwargs"  # undeclared keys go to the target, gathered here
    _target_: str  # mypkg.nets.make_net
    kwargs: dict = field(default_factory=dict)  # the target's own keywords, as given


MODEL_OPTIONS: dict[str, type[ModelOptions]] = {
    "fc_lot": FcLotOptions,
    "conv2": ModelOptions,
    "conv4": ModelOptions,
    "conv6": ModelOptions,
    "conv1d": Conv1dOptions,
    "vgg16": BatchNormOptions,
    "vgg16_pretrained": Vgg16PretrainedOptions,
    "resnet20": ResNetOptions,
    "resnet18": ResNetOptions,
    "custom": CustomOptions,
}
INITS = typing.get_args(Init)
BATCHNORM_INITS = typing.get_args(BatchNormInit)
