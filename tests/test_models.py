"""Every registered architecture builds, runs and exposes the prunable layers the method expects."""

from __future__ import annotations

import pytest
import torch
from tests.cli import compose_config
from torch import nn

from phicenter import models
from phicenter.config import ConfigError, settings
from phicenter.method import pruning


@pytest.mark.parametrize("name", sorted(n for n in models.MODELS if n not in ("vgg16_pretrained", "custom")))
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
    assert [tuple(l.weight.shape) for n, l in c6.items() if not n.startswith("conv")] == [
        (256, 256 * 4 * 4),
        (256, 256),
        (10, 256),
    ]
    vgg = pruning.prunable_layers(models.build("vgg16", (3, 32, 32), 10))
    assert len(vgg) == 14 and vgg["out"].in_features == 512


@pytest.mark.parametrize("init", ["kaiming_normal", "glorot_normal"])
def test_init_schemes(init):
    net = models.build("fc_lot", (1, 28, 28), 10, init=init, seed=0)
    w = net.fc1.weight
    expected = (2 / 784) ** 0.5 if init == "kaiming_normal" else (2 / (784 + 300)) ** 0.5
    assert float(w.std()) == pytest.approx(expected, rel=0.02)
    assert float(net.fc1.bias.abs().max()) == 0.0


def test_batchnorm_gamma_uniform_is_drawn_after_the_weights():
    """open_lth's BatchNorm init: gamma ~ U(0, 1), beta = 0; the Conv/Linear weights are those of gamma = 1,
    so the two inits differ in gamma only; theta0 is a function of (shapes, init, batchnorm_init, seed)."""
    ones = models.build("resnet20", (3, 32, 32), 10, init="kaiming_normal", seed=5)
    uni = models.build("resnet20", (3, 32, 32), 10, init="kaiming_normal", batchnorm_init="uniform", seed=5)
    again = models.build("resnet20", (3, 32, 32), 10, init="kaiming_normal", batchnorm_init="uniform", seed=5)
    other = models.build("resnet20", (3, 32, 32), 10, init="kaiming_normal", batchnorm_init="uniform", seed=6)
    a, b = ones.state_dict(), uni.state_dict()
    bn = {n for n, m in uni.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bn) == 21  # stem + 9 blocks x 2 + 2 projection shortcuts
    gammas = torch.cat([b[f"{n}.weight"] for n in bn])
    assert gammas.numel() == 16 * 7 + 32 * 7 + 64 * 7 and float(gammas.min()) >= 0 and float(gammas.max()) < 1
    # U(0, 1): mean 1/2, variance 1/12; 784 draws give a standard error of 0.0103 on the mean
    assert float(gammas.mean()) == pytest.approx(0.5, abs=0.04)
    assert float(gammas.var()) == pytest.approx(1 / 12, rel=0.15)
    for key in a:
        same = torch.equal(a[key], b[key])
        if key.endswith(".weight") and key.rsplit(".", 1)[0] in bn:
            assert not same and torch.all(a[key] == 1), key  # gamma: 1 against U(0, 1)
        else:
            assert same, key  # weights, beta = 0, running statistics: identical
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in b.items())
    assert not torch.equal(b["bn.weight"], other.state_dict()["bn.weight"])
    # the weights' init itself is open_lth's: Kaiming normal, std sqrt(2 / fan_in); the last three 3x3 convs
    # (fan_in 64 * 9 = 576) hold 3 x 36,864 weights
    w = torch.cat([uni.blocks[i].conv2.weight.flatten() for i in (6, 7, 8)])
    assert float(w.std()) == pytest.approx((2 / 576) ** 0.5, rel=0.02)
    with pytest.raises(ConfigError, match="model.batchnorm_init must be ones or uniform, got 'normal'"):
        settings(compose_config("model=vgg16", "model.batchnorm_init=normal"))  # checked once, by the schema


def test_bad_names():
    with pytest.raises(ValueError, match="unknown model 'nope'; choices: conv1d, conv2"):
        models.build("nope", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="model.init must be one of"):
        models.build("fc_lot", (1, 8, 8), 10, init="bogus")


# Parameters for 10 classes (fc_lot on 1x28x28, the rest on 3x32x32): total and prunable (Conv/Linear weights).
# resnet20: open_lth's cifar_resnet_20 test (272,474); resnet18: the CIFAR ResNet-18 (11.17 M); vgg16_pretrained:
# VGG16's 13 convs (14,714,688) + a 512 -> 10 head; fc_lot: 784*300 + 300*100 + 100*10 + biases; conv1d runs
# along each of the 32 rows.
PARAMETERS = {
    "fc_lot": (266_610, 266_200),
    "conv2": (4_301_642, 4_300_992),
    "conv4": (2_425_930, 2_425_024),
    "conv6": (2_262_602, 2_261_184),
    "conv1d": (87_594, 87_520),  # 3x5 x 32 + 32x5 x 32 + (32 x 32 x 8) x 10 weights, + biases
    "vgg16": (14_728_266, 14_715_584),
    "vgg16_pretrained": (14_719_818, 14_715_584),
    "resnet20": (272_474, 270_896),
    "resnet18": (11_173_962, 11_164_352),
}
NO_DOWNLOAD = {"vgg16_pretrained": {"pretrained": False}}


def test_every_registered_model_has_its_count():
    assert set(PARAMETERS) == set(models.MODELS) - {"custom"}  # model=custom: tests/test_custom_target.py


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts_and_cpu_forward(name):
    shape = (1, 28, 28) if name == "fc_lot" else (3, 32, 32)
    net = models.build(name, shape, 10, seed=0, **NO_DOWNLOAD.get(name, {}))
    total, prunable = PARAMETERS[name]
    assert models.parameter_counts(net) == {"total": total, "prunable": prunable}
    pruning.attach_masks(net)  # the same counts once the masks are in place
    assert models.parameter_counts(net) == {"total": total, "prunable": prunable}
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(2, *shape)).shape == (2, 10)


def test_resnets_match_the_papers():
    r20 = pruning.prunable_layers(models.build("resnet20", (3, 32, 32), 10))
    convs = [l for n, l in r20.items() if isinstance(l, nn.Conv2d) and l.kernel_size == (3, 3)]
    assert len(convs) == 19 and [c.out_channels for c in convs] == [16] * 7 + [32] * 6 + [64] * 6
    shortcuts = [n for n, l in r20.items() if isinstance(l, nn.Conv2d) and l.kernel_size == (1, 1)]
    assert shortcuts == ["blocks.3.shortcut.0", "blocks.6.shortcut.0"]  # where the shape changes
    assert list(r20)[-1] == "out" and r20["out"].in_features == 64
    r18 = models.build("resnet18", (3, 32, 32), 100)
    assert models.parameter_counts(r18)["total"] == 11_220_132
    assert r18.conv.kernel_size == (3, 3) and not any(isinstance(m, nn.MaxPool2d) for m in r18.modules())


def _vgg16_state(batch_norm: bool) -> dict:
    """torchvision's vgg16(_bn) state dict at 0.125 everywhere, each tensor one stored number (a few KB)."""
    import torchvision

    arch = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in arch(weights=None).state_dict().items()}
    return {k: torch.full((), 0.125).expand(s) for k, s in shapes.items()}


def test_vgg16_pretrained_from_local_weights(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(_vgg16_state(False), path)
    assert path.stat().st_size < 1_000_000
    net = models.build(
        "vgg16_pretrained", (3, 32, 32), 100, init="kaiming_normal", weights_path=str(path), verify_weights=False
    )
    assert float(net.features[0].weight.min()) == float(net.features[0].weight.max()) == 0.125  # kept
    assert net.features[0].weight.is_contiguous()
    assert net.out.out_features == 100 and float(net.out.bias.abs().max()) == 0.0  # the fresh head
    assert models.parameter_counts(net)["total"] == 14_765_988
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 100)
    with pytest.raises(FileNotFoundError, match="no file at"):
        models.build("vgg16_pretrained", (3, 32, 32), 10, weights_path=str(tmp_path / "missing.pth"))
    # batch_norm=true wants vgg16_bn's weights: the plain vgg16 file is refused in one line
    with pytest.raises(ValueError, match="not a torchvision vgg16_bn state dict"):
        models.build("vgg16_pretrained", (3, 32, 32), 10, weights_path=str(path), batch_norm=True, verify_weights=False)
    bn = tmp_path / "vgg16_bn.pth"
    torch.save(_vgg16_state(True), bn)
    net = models.build("vgg16_pretrained", (3, 32, 32), 10, weights_path=str(bn), batch_norm=True, verify_weights=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 13


@pytest.mark.parametrize("batch_norm, name", [(False, "vgg16-397923af.pth"), (True, "vgg16_bn-6c64b313.pth")])
def test_vgg16_pretrained_refuses_weights_that_are_not_torchvisions(tmp_path, batch_norm, name):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not the ImageNet weights")
    with pytest.raises(ValueError, match=f"is not that of {name}.*model.verify_weights=false") as err:
        models.build("vgg16_pretrained", (3, 32, 32), 10, weights_path=str(path), batch_norm=batch_norm)
    assert "\n" not in str(err.value)


def test_verify_weights_file_accepts_the_published_prefix(tmp_path):
    import hashlib

    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    models.verify_weights_file(path, f"https://example.org/w-{digest[:8]}.pth")  # no error
    with pytest.raises(ValueError, match="sha256"):
        models.verify_weights_file(path, f"https://example.org/w-{'0' * 8}.pth")


def test_conv1d_on_signals_prunes_whole_filters():
    """conv1d on 1x1x40 signals (dataset=mnist1d): 1x5 kernels, two pools by 2 leave 10 points of 32 channels;
    structured pruning (prune.method=structured) removes whole filters and the out columns that read them."""
    from phicenter.method import units

    net = models.build("conv1d", (1, 1, 40), 10, seed=0)
    assert [tuple(l.weight.shape) for l in pruning.prunable_layers(net).values()] == [
        (32, 1, 1, 5),
        (32, 32, 1, 5),
        (10, 320),
    ]
    assert models.parameter_counts(net) == {"total": 8554, "prunable": 8480}
    pruning.attach_masks(net)
    w = units.Wiring(net)
    assert set(w.removable) == {"conv1", "conv2"} and set(w.kept) == {"out"}
    layers = pruning.prunable_layers(net)
    masks = {n: torch.ones_like(pruning.mask_of(l).mask, dtype=torch.float32) for n, l in layers.items()}
    masks["conv2"][3] = 0  # filter 3 of conv2: its 10 flattened points, out's columns 30..39
    closed = w.close(masks)
    cols = closed["out"].bool().all(0)
    assert (~cols).nonzero().flatten().tolist() == list(range(30, 40)) and bool(closed["conv1"].bool().all())
    with pytest.raises(ValueError, match="leave nothing of a signal of 3 points"):
        models.build("conv1d", (1, 1, 3), 10)
