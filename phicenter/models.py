"""Architectures, one constructor each: f(input_shape, num_classes, **options) -> nn.Module."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}
INITS = ("torch_default", "kaiming_normal", "glorot_normal")


def register_model(fn):
    MODELS[fn.__name__] = fn
    return fn


@register_model
def fc_lot(input_shape, num_classes, hidden=(300, 100)):
    """LeNet-300-100 of the lottery-ticket papers; input size taken from the dataset."""
    sizes = [math.prod(input_shape), *hidden]
    layers = [("flatten", nn.Flatten())]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
        layers += [(f"fc{i}", nn.Linear(a, b)), (f"relu{i}", nn.ReLU())]
    layers.append(("out", nn.Linear(sizes[-1], num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _conv_net(input_shape, num_classes, widths, fc=(256, 256)):
    """Frankle & Carbin's Conv-2/4/6: pairs of 3x3 'same' convs, 2x2 max-pool after each pair."""
    c, h, w = input_shape
    layers = []
    for i, width in enumerate(widths, 1):
        layers += [(f"conv{i}", nn.Conv2d(c, width, 3, padding=1)), (f"relu_c{i}", nn.ReLU())]
        c = width
        if i % 2 == 0:
            layers.append((f"pool{i // 2}", nn.MaxPool2d(2)))
            h, w = h // 2, w // 2
    layers.append(("flatten", nn.Flatten()))
    sizes = [c * h * w, *fc]
    for i, (a, b) in enumerate(zip(sizes, sizes[1:]), 1):
        layers += [(f"fc{i}", nn.Linear(a, b)), (f"relu_f{i}", nn.ReLU())]
    layers.append(("out", nn.Linear(sizes[-1], num_classes)))
    return nn.Sequential(OrderedDict(layers))


@register_model
def conv2(input_shape, num_classes):
    return _conv_net(input_shape, num_classes, (64, 64))


@register_model
def conv4(input_shape, num_classes):
    return _conv_net(input_shape, num_classes, (64, 64, 128, 128))


@register_model
def conv6(input_shape, num_classes):
    return _conv_net(input_shape, num_classes, (64, 64, 128, 128, 256, 256))


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


@register_model
def vgg16(input_shape, num_classes):
    """CIFAR VGG-16 with BatchNorm; global average pooling and one linear head."""
    c = input_shape[0]
    layers, i, p = [], 0, 0
    for v in VGG16:
        if v == "M":
            p += 1
            layers.append((f"pool{p}", nn.MaxPool2d(2)))
        else:
            i += 1
            layers += [(f"conv{i}", nn.Conv2d(c, v, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(v)),
                       (f"relu{i}", nn.ReLU())]
            c = v
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("out", nn.Linear(c, num_classes))]
    return nn.Sequential(OrderedDict(layers))


@register_model
def vgg16_pretrained(input_shape, num_classes, weights_path: str | None = None, pretrained: bool = True):
    """torchvision's VGG16 with ImageNet weights (or a local weights file); head replaced for the classes."""
    import torchvision

    if input_shape[0] != 3:
        raise ValueError(f"vgg16_pretrained needs 3-channel images, the dataset has {input_shape[0]}")
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.weights_path: no file at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    elif pretrained:
        try:
            state = torchvision.models.VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as e:  # no network: say what to do instead
            raise RuntimeError("could not download VGG16 ImageNet weights "
                               f"({type(e).__name__}); set model.weights_path to a local vgg16 state_dict") from None
    else:
        state = None
    if state is None:
        net = torchvision.models.vgg16(weights=None)
    else:  # skip a random init of 138M parameters that the weights would overwrite
        with torch.device("meta"):
            net = torchvision.models.vgg16(weights=None)
        net.load_state_dict(state, assign=True)
    net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
    net.fresh_modules = [net.classifier[6]]  # model.init applies to the new head only
    return net


def init_weight_(weight: torch.Tensor, scheme: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a Conv/Linear weight from the named init distribution, in place."""
    if scheme == "torch_default":
        return nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if scheme == "kaiming_normal":
        return nn.init.kaiming_normal_(weight, nonlinearity="relu", generator=generator)
    if scheme == "glorot_normal":
        return nn.init.xavier_normal_(weight, generator=generator)
    raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {scheme!r}")


def build(name: str, input_shape, num_classes: int, init: str = "torch_default", seed: int = 0,
          **options) -> nn.Module:
    """theta0 depends only on (name, shapes, init, seed): paired runs share it exactly."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    if init not in INITS:
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name](tuple(input_shape), num_classes, **options)
        if init != "torch_default":
            for m in getattr(model, "fresh_modules", model.modules()):
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    init_weight_(m.weight.data, init)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
    return model
