"""Architectures, one constructor each: f(input_shape, num_classes, **options) -> nn.Module, registered under
its function's name with its options declared in phicenter.models.options (their defaults are the declared
ones)."""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from phicenter.models.options import (
    INITS,
    MODEL_OPTIONS,
    BatchNormOptions,
    Conv1dOptions,
    FcLotOptions,
    ModelOptions,
    Vgg16PretrainedOptions,
)

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn):
    """Registers an architecture under its function's name, which must have its options declared."""
    if fn.__name__ not in MODEL_OPTIONS:
        raise TypeError(f"model {fn.__name__!r}: declare its options in phicenter.models.options.MODEL_OPTIONS")
    MODELS[fn.__name__] = fn
    return fn


@register_model
def fc_lot(input_shape, num_classes, hidden=FcLotOptions.hidden):
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


@register_model
def conv1d(input_shape, num_classes, channels=Conv1dOptions.channels, kernel_size=Conv1dOptions.kernel_size):
    """1-D convolutions along the last axis of C×H×L inputs (signals: C×1×L, as dataset=mnist1d gives): per
    entry of `channels` a conv of kernel_size with 'same' padding, ReLU and max-pool by 2; then one linear
    layer to the classes. Each conv is a Conv2d with a 1×kernel_size kernel, so pruning, init, cohorts and
    compaction treat it as every other conv."""
    c, h, w = input_shape
    layers = []
    for i, width in enumerate(channels, 1):
        conv = nn.Conv2d(c, width, (1, kernel_size), padding=(0, kernel_size // 2))
        layers += [(f"conv{i}", conv), (f"relu{i}", nn.ReLU()), (f"pool{i}", nn.MaxPool2d((1, 2)))]
        c, w = width, (w + 2 * (kernel_size // 2) - kernel_size + 1) // 2
        if w < 1:
            raise ValueError(f"conv1d: {len(channels)} pools leave nothing of a signal of {input_shape[-1]} points")
    layers += [("flatten", nn.Flatten()), ("out", nn.Linear(c * h * w, num_classes))]
    return nn.Sequential(OrderedDict(layers))


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
            layers += [
                (f"conv{i}", nn.Conv2d(c, v, 3, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(v)),
                (f"relu{i}", nn.ReLU()),
            ]
            c = v
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("out", nn.Linear(c, num_classes))]
    return nn.Sequential(OrderedDict(layers))


@register_model
def vgg16_pretrained(
    input_shape,
    num_classes,
    weights_path: str | None = Vgg16PretrainedOptions.weights_path,
    pretrained: bool = Vgg16PretrainedOptions.pretrained,
    batch_norm: bool = Vgg16PretrainedOptions.batch_norm,
    verify_weights: bool = Vgg16PretrainedOptions.verify_weights,
):
    """torchvision's VGG16 (batch_norm: VGG16-BN) convolutional layers with ImageNet weights (or a local weights
    file), then a CIFAR-sized head: global average pooling and one linear layer to the classes."""
    from torchvision.models import vgg

    if input_shape[0] != 3:
        raise ValueError(f"vgg16_pretrained needs 3-channel images, the dataset has {input_shape[0]}")
    state = _vgg16_state(bool(batch_norm), weights_path, pretrained, verify_weights)
    if state is None:
        features = vgg.make_layers(vgg.cfgs["D"], batch_norm=bool(batch_norm))
    else:  # skip a random init that the weights would overwrite
        with torch.device("meta"):
            features = vgg.make_layers(vgg.cfgs["D"], batch_norm=bool(batch_norm))
        feats = {k[len("features.") :]: v.contiguous() for k, v in state.items() if k.startswith("features.")}
        try:
            features.load_state_dict(feats, assign=True)
        except RuntimeError:
            arch = "vgg16_bn" if batch_norm else "vgg16"
            raise ValueError(
                f"model.weights_path: not a torchvision {arch} state dict (model.batch_norm={bool(batch_norm)})"
            ) from None
    net = nn.Sequential(
        OrderedDict(
            [
                ("features", features),
                ("gap", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("out", nn.Linear(512, num_classes)),
            ]
        )
    )
    net.fresh_modules = [net.out]  # model.init applies to the new head only
    return net


def _vgg16_state(batch_norm: bool, weights_path, pretrained: bool, verify: bool) -> dict | None:
    """The ImageNet state dict: from weights_path (checked against torchvision's published hash unless verify
    is false), else downloaded by torchvision (which checks the hash), else None (pretrained=false)."""
    import torchvision

    weights = (torchvision.models.VGG16_BN_Weights if batch_norm else torchvision.models.VGG16_Weights).IMAGENET1K_V1
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.weights_path: no file at {path}")
        if verify:
            verify_weights_file(path, weights.url)
        return torch.load(path, map_location="cpu", weights_only=True)
    if not pretrained:
        return None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no network: say what to do instead
        name = Path(weights.url).name
        raise RuntimeError(
            f"could not download the ImageNet weights {name} ({type(e).__name__}); "
            f"set model.weights_path to a local copy of {weights.url}"
        ) from None


def verify_weights_file(path: Path, url: str) -> None:
    """torchvision's weight files are named <name>-<first hex digits of their sha256>.pth; refuse a file whose
    sha256 does not start with the digits in `url`."""
    match = re.search(r"-([0-9a-f]{8,})\.pth$", url)
    if match is None:
        raise ValueError(f"no sha256 prefix in the weights URL {url}")
    expected = match.group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if not got.startswith(expected):
        raise ValueError(
            f"model.weights_path {path}: sha256 {got[: len(expected)]}... is not that of {Path(url).name} "
            f"({expected}...); use that file, or model.verify_weights=false for weights of your own"
        )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm around a shortcut; a 1x1 conv + BatchNorm projection when the shape changes."""

    def __init__(self, f_in: int, f_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, 1, stride=stride, bias=False), nn.BatchNorm2d(f_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return torch.relu(out)


class CifarResNet(nn.Module):
    """3x3 stem (no max-pool), stages of basic blocks (the first block of every stage after the first has
    stride 2), global average pooling, one linear layer `out`."""

    def __init__(self, in_channels: int, num_classes: int, widths, depths):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, f_in = [], widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                blocks.append(BasicBlock(f_in, width, stride=2 if stage > 0 and i == 0 else 1))
                f_in = width
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(f_in, num_classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.out(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model
def resnet20(input_shape, num_classes):
    """CIFAR ResNet-20 of He et al. (2016) as open_lth's cifar_resnet_20: 16/32/64 channels, 3 stages x 3 blocks,
    1x1 projection shortcuts where the shape changes (272,474 parameters for 10 classes)."""
    return CifarResNet(input_shape[0], num_classes, (16, 32, 64), (3, 3, 3))


@register_model
def resnet18(input_shape, num_classes):
    """ResNet-18 for CIFAR: 3x3 stem, no max-pool, 64/128/256/512 channels x 2 blocks (11,173,962 parameters for
    10 classes)."""
    return CifarResNet(input_shape[0], num_classes, (64, 128, 256, 512), (2, 2, 2, 2))


@register_model
def custom(input_shape, num_classes, _target_, **kwargs):
    """model=custom: your own constructor, by dotted path (phicenter.models.custom_net)."""
    from phicenter.models.custom_net import make

    return make(_target_, input_shape, num_classes, kwargs)


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """{"total": every trainable parameter, "prunable": the Conv/Linear weights that pruning masks}."""
    from phicenter.method.pruning import prunable_layers

    total = sum(p.numel() for p in net.parameters())
    prunable = sum(layer.weight.numel() for layer in prunable_layers(net).values())
    return {"total": int(total), "prunable": int(prunable)}


def init_weight_(weight: torch.Tensor, scheme: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a Conv/Linear weight from the named init distribution, in place."""
    if scheme == "torch_default":
        return nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if scheme == "kaiming_normal":
        return nn.init.kaiming_normal_(weight, nonlinearity="relu", generator=generator)
    if scheme == "glorot_normal":
        return nn.init.xavier_normal_(weight, generator=generator)
    raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {scheme!r}")


def build(
    name: str,
    input_shape,
    num_classes: int,
    init: str = ModelOptions.init,
    seed: int = 0,
    batchnorm_init: str = BatchNormOptions.batchnorm_init,
    **options,
) -> nn.Module:
    """theta0 depends only on (name, shapes, init, batchnorm_init, seed): paired runs share it exactly. The
    draws, all from the global RNG seeded with `seed` (restored afterwards): the constructor's (PyTorch's
    default init); then, unless init is torch_default, each Conv/Linear weight from `init` in module order
    (biases zeroed); then, with batchnorm_init=uniform, each BatchNorm gamma from U(0, 1) in module order
    (beta zeroed). The gammas come last, so the weights do not depend on batchnorm_init."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name](tuple(input_shape), num_classes, **options)
        fresh = list(getattr(model, "fresh_modules", model.modules()))
        for m in fresh:
            if init != "torch_default" and isinstance(m, (nn.Linear, nn.Conv2d)):
                init_weight_(m.weight.data, init)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in fresh:
            if batchnorm_init == "uniform" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)
    return model
