"""Every registered architecture builds, runs and exposes the prunable layers the method expects."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from phicenter import models
from phicenter.method import pruning


@pytest.mark.parametrize("name", sorted(n for n in models.MODELS if n != "vgg16_pretrained"))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shape_and_prunable_layers(name, shape):
    net = models.build(name, shape, 7, seed=0)
    assert net(torch.zeros(2, *shape)).shape == (2, 7)
    layers = pruning.prunable_layers(net)
    assert list(layers)[-1] == "out" and isinstance(layers["out"], nn.Linear)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layers.values())


def test_architectures_match_the_papers():
    fc = models.build("fc_lot", (1, 28, 28), 10)
    assert [tuple(l.weight.shape) for l in pruning.prunable_layers(fc).values()] == [(300, 784), (100, 300), (10, 100)]
    c6 = pruning.prunable_layers(models.build("conv6", (3, 32, 32), 10))
    assert [l.out_channels for n, l in c6.items() if n.startswith("conv")] == [64, 64, 128, 128, 256, 256]
    assert [tuple(l.weight.shape) for n, l in c6.items() if not n.startswith("conv")] == \
        [(256, 256 * 4 * 4), (256, 256), (10, 256)]
    vgg = pruning.prunable_layers(models.build("vgg16", (3, 32, 32), 10))
    assert len(vgg) == 14 and vgg["out"].in_features == 512


@pytest.mark.parametrize("init", ["kaiming_normal", "glorot_normal"])
def test_init_schemes(init):
    net = models.build("fc_lot", (1, 28, 28), 10, init=init, seed=0)
    w = net.fc1.weight
    expected = (2 / 784) ** 0.5 if init == "kaiming_normal" else (2 / (784 + 300)) ** 0.5
    assert float(w.std()) == pytest.approx(expected, rel=0.02)
    assert float(net.fc1.bias.abs().max()) == 0.0


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model 'nope'; choices: conv2"):
        models.build("nope", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="model.init must be one of"):
        models.build("fc_lot", (1, 8, 8), 10, init="bogus")


def test_vgg16_pretrained_from_local_weights(tmp_path):
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    path = tmp_path / "vgg16.pth"
    torch.save({k: torch.full(s, 0.125) for k, s in shapes.items()}, path)
    net = models.build("vgg16_pretrained", (3, 32, 32), 100, init="kaiming_normal", weights_path=str(path))
    assert float(net.features[0].weight.min()) == float(net.features[0].weight.max()) == 0.125  # kept
    assert net.classifier[6].out_features == 100 and float(net.classifier[6].bias.abs().max()) == 0.0
    with pytest.raises(FileNotFoundError, match="no file at"):
        models.build("vgg16_pretrained", (3, 32, 32), 10, weights_path=str(tmp_path / "missing.pth"))
