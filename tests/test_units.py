"""How units are wired (method.units): which units structured pruning removes in every registered architecture,
what leaves with a removed unit (for every strategy), that it stays gone through training, and the effective
sparsity counted by hand."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from phicenter import models
from phicenter.engine.module import make_optimizer
from phicenter.method import pruning, units
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import STRATEGIES, build

ADD = "its output enters a residual addition"
OUT = "its output is the network's output"


def chain(names, norms=None, last_flat=True, head="out"):
    """Removable layers of a plain chain: each read by the next; the last by `head` (through a flatten)."""
    norms = norms or [None] * len(names)
    out = {}
    for i, (n, bn) in enumerate(zip(names, norms)):
        reader = (names[i + 1], False) if i + 1 < len(names) else (head, last_flat)
        out[n] = ((bn,) if bn else (), (reader,))
    return out


def resnet(blocks: int, shortcuts: tuple[int, ...]):
    removable = {f"blocks.{i}.conv1": ((f"blocks.{i}.bn1",), ((f"blocks.{i}.conv2", False),)) for i in range(blocks)}
    kept = {
        "conv": ADD,
        **{f"blocks.{i}.conv2": ADD for i in range(blocks)},
        **{f"blocks.{i}.shortcut.0": ADD for i in shortcuts},
        "out": OUT,
    }
    return removable, kept


CONV_FC = ["fc1", "fc2"]
VGG_D = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # features index of each conv, no BN
VGG_D_BN = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # with BN (conv, BN, ReLU per conv)


def conv_net(convs: int):
    names = [f"conv{i}" for i in range(1, convs + 1)]
    removable = chain(names, head="fc1")
    removable.update(chain(CONV_FC, last_flat=False))
    return removable, {"out": OUT}


# (builder options, removable layers: (BatchNorms, readers), kept layers: why), worked out from models/nets.py
WIRING = {
    "fc_lot": [({}, chain(["fc1", "fc2"], last_flat=False), {"out": OUT})],
    "conv2": [({}, *conv_net(2))],
    "conv4": [({}, *conv_net(4))],
    "conv6": [({}, *conv_net(6))],
    "conv1d": [({}, chain(["conv1", "conv2"]), {"out": OUT})],
    "vgg16": [({}, chain([f"conv{i}" for i in range(1, 14)], [f"bn{i}" for i in range(1, 14)]), {"out": OUT})],
    "vgg16_pretrained": [
        ({"pretrained": False}, chain([f"features.{i}" for i in VGG_D]), {"out": OUT}),
        (
            {"pretrained": False, "batch_norm": True},
            chain([f"features.{i}" for i in VGG_D_BN], [f"features.{i + 1}" for i in VGG_D_BN]),
            {"out": OUT},
        ),
    ],
    "resnet20": [({}, *resnet(9, (3, 6)))],
    "resnet18": [({}, *resnet(8, (2, 4, 6)))],
}


def test_every_registered_model_is_wired():
    assert set(WIRING) == set(models.MODELS) - {"custom"}  # model=custom: any net, wired by torch.fx as it comes


@pytest.mark.parametrize("name, case", [(n, i) for n, cases in WIRING.items() for i in range(len(cases))])
def test_wiring_of_each_model(name, case):
    options, removable, kept = WIRING[name][case]
    net = models.build(name, (3, 32, 32), 10, **options)
    pruning.attach_masks(net)
    w = units.Wiring(net)
    assert {n: (r.norms, r.readers) for n, r in w.removable.items()} == removable
    assert w.kept == kept
    assert set(w.removable) | set(w.kept) == set(pruning.prunable_layers(net))
    assert units.effective_sparsity(net, w) == (0.0, dict.fromkeys(pruning.prunable_layers(net), 0.0))


def test_a_removed_conv_filter_takes_its_flattened_columns():
    """conv2 on 3x32x32: conv2's 64 filters are read by fc1 through a 2x2 max-pool and a flatten: 16 x 16 = 256
    columns each. Filter 5 removed -> fc1 columns 1280..1535 masked, nothing else."""
    net = models.build("conv2", (3, 32, 32), 10)
    pruning.attach_masks(net)
    w = units.Wiring(net)
    masks = {
        n: torch.ones_like(pruning.mask_of(l).mask, dtype=torch.float32)
        for n, l in pruning.prunable_layers(net).items()
    }
    masks["conv2"][5] = 0
    closed = w.close(masks)
    cols = closed["fc1"].bool().all(0)
    assert cols.shape == (64 * 256,) and (~cols).nonzero().flatten().tolist() == list(range(1280, 1536))
    assert bool(closed["fc1"][:, ~cols].eq(0).all()) and bool(closed["conv1"].bool().all())


# ---------------------------------------------------------------- effective sparsity by hand


def set_masks(net, masks: dict, fills: dict | None = None):
    for name, layer in pruning.prunable_layers(net).items():
        mf = pruning.mask_of(layer)
        mf.mask.copy_(torch.as_tensor(masks[name], dtype=torch.bool).view_as(mf.mask))
        if fills and name in fills:
            mf.fill.copy_(torch.as_tensor(fills[name], dtype=torch.float32).view_as(mf.fill))


def mlp_432():
    """4-3-2 MLP. Layer 0 masks: unit 0 reads inputs 0, 1; unit 1 reads nothing; unit 2 reads inputs 2, 3.
    Layer 2 masks: output 0 reads units 1, 2; output 1 reads unit 2. Biases 0.1, 0.2, 0.3."""
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    pruning.attach_masks(net)
    set_masks(net, {"0": [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], "2": [[0, 1, 1], [0, 0, 1]]})
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
    return net


def test_effective_sparsity_of_a_432_mlp_by_hand():
    net = mlp_432()
    w = units.Wiring(net)
    # pruned: 8 of 12, 3 of 6 -> 11 of 18
    assert pruning.sparsity(pruning.prunable_layers(net))[0] == pytest.approx(11 / 18)
    # unit 0 is read by no output: its 2 incoming weights are dead too. Unit 1 reads nothing but its bias 0.2
    # makes it a constant: output 0's weight from it still acts. Layer 0: 2 of 12 act; layer 2: 3 of 6.
    total, per = units.effective_sparsity(net, w)
    assert per == {"0": pytest.approx(10 / 12), "2": pytest.approx(3 / 6)} and total == pytest.approx(13 / 18)
    assert w.effective(net)["0"].tolist() == [[False] * 4, [False] * 4, [False, False, True, True]]
    # with unit 1's bias at 0 it emits 0: output 0's weight from it is dead as well
    with torch.no_grad():
        net[0].bias[1] = 0
    total, per = units.effective_sparsity(net, w)
    assert per == {"0": pytest.approx(10 / 12), "2": pytest.approx(4 / 6)} and total == pytest.approx(14 / 18)
    # a pruned weight frozen at a non-zero value (strategy.pruned_fill=trained) is in the forward pass: unit 1
    # reads input 0 through it, so it acts, and so does the weight out of unit 1
    set_masks(
        net,
        {"0": [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]], "2": [[0, 1, 1], [0, 0, 1]]},
        {"0": [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0, 0, 0]]},
    )
    total, per = units.effective_sparsity(net, w)
    assert per == {"0": pytest.approx(9 / 12), "2": pytest.approx(3 / 6)} and total == pytest.approx(12 / 18)


def conv_flatten():
    """Conv2d(2, 3, 1, no bias) -> BatchNorm2d(3) -> ReLU -> Flatten -> Linear(12, 2) on 2x2x2 inputs."""
    net = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 3, 1, bias=False),
            bn=nn.BatchNorm2d(3),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(12, 2),
        )
    )
    pruning.attach_masks(net)
    fc = torch.zeros(2, 12)
    fc[0, [0, 1]] = 1  # output 0 reads columns 0, 1 (channel 0)
    fc[1, 8:12] = 1  # output 1 reads channel 2's four columns
    set_masks(net, {"conv": [[1, 1], [0, 0], [1, 0]], "fc": fc})
    with torch.no_grad():
        net.bn.weight.copy_(torch.tensor([1.0, 0.0, 0.0]))
        net.bn.bias.copy_(torch.tensor([0.5, 0.0, 0.3]))
        net.bn.running_mean.copy_(torch.tensor([0.0, 0.7, 0.0]))
    return net


def test_effective_sparsity_of_a_conv_net_with_a_flatten_by_hand():
    net = conv_flatten()
    w = units.Wiring(net)
    assert w.removable["conv"] == units.Removable("conv", ("bn",), (("fc", True),))
    # pruned: conv 3 of 6, fc 18 of 24 -> 21 of 30
    assert pruning.sparsity(pruning.prunable_layers(net))[0] == pytest.approx(21 / 30)
    # channel 0: alive and gamma 1 -> acts. Channel 1: gamma = beta = 0 -> silent (its running mean does not
    # matter with gamma 0). Channel 2: gamma 0, beta 0.3 -> a constant: its conv weight cannot act, but fc's
    # four columns of it can. conv: 2 of 6 act; fc: 2 + 4 of 24.
    total, per = units.effective_sparsity(net, w)
    assert per == {"conv": pytest.approx(4 / 6), "fc": pytest.approx(18 / 24)} and total == pytest.approx(22 / 30)
    eff = w.effective(net)
    assert eff["conv"].flatten(1).tolist() == [[True, True], [False, False], [False, False]]
    assert eff["fc"].nonzero().tolist() == [[0, 0], [0, 1], [1, 8], [1, 9], [1, 10], [1, 11]]
    with torch.no_grad():
        net.bn.bias[2] = 0  # channel 2 silent: fc's columns of it are dead too
    total, per = units.effective_sparsity(net, w)
    assert per == {"conv": pytest.approx(4 / 6), "fc": pytest.approx(22 / 24)} and total == pytest.approx(26 / 30)


class Residual(nn.Module):
    """x -> a -> h; out(relu(b(h) + h)): a's units enter the addition directly and through b."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)

    def forward(self, x):
        h = self.a(x)
        return self.out(torch.relu(self.b(h) + h))


def test_effective_sparsity_across_a_residual_addition_by_hand():
    net = Residual()
    pruning.attach_masks(net)
    set_masks(net, {"a": [[1, 1], [1, 1]], "b": [[0, 0], [0, 0]], "out": [[1, 0]]})
    w = units.Wiring(net)
    assert w.removable == {} and w.kept == {"a": ADD, "b": ADD, "out": OUT}
    # b is empty, but the shortcut carries a's units to the addition; out reads channel 0 only, so a's unit 0
    # acts (2 weights) and unit 1 does not. a: 2 of 4 dead, b: 4 of 4, out: 1 of 2 -> 7 of 10
    total, per = units.effective_sparsity(net, w)
    assert per == {"a": 0.5, "b": 1.0, "out": 0.5} and total == pytest.approx(7 / 10)
    with pytest.raises(ValueError, match="no unit of this network can be removed .*a: its output enters a residual"):
        IMP(net, build("mask0"), IMPConfig(method="structured"))
    IMP(Residual(), build("mask0"), IMPConfig())  # magnitude pruning has nothing to remove


def test_an_op_the_wiring_cannot_follow_is_refused_in_one_line():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(2, 2), nn.Linear(2, 1)

        def forward(self, x):
            return self.out(torch.sigmoid(self.a(x)))  # sigmoid(0) = 0.5: a silent unit would speak

    wiring = units.Wiring(Gate())  # magnitude pruning needs no graph: only what does is refused
    assert "cannot follow units through" in wiring.unread and "sigmoid" in wiring.unread
    assert wiring.removable == {} and set(wiring.kept) == {"a", "out"}
    with pytest.raises(ValueError, match="cannot follow units through .*sigmoid"):
        wiring.effective(Gate())
    cfg = IMPConfig(method="structured")
    with pytest.raises(ValueError, match="structured needs the network.s graph: .*cannot follow units through") as e:
        IMP(Gate(), build("mask0"), cfg)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- a removed unit is gone, for every strategy


def small():
    """conv (2 -> 3, 1x1) -> BN -> ReLU -> flatten (3 x 2 x 2 = 12) -> fc (12 -> 4) -> ReLU -> out (4 -> 2)."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(2, 3, 1),
            bn=nn.BatchNorm2d(3),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc=nn.Linear(12, 4),
            relu2=nn.ReLU(),
            out=nn.Linear(4, 2),
        )
    )


def train_small_by_hand(net):
    """Filter L1 norms 1.5, 0.15, 1.4; fc unit L1 norms 1.2, 6, 0.6, 3.6; every bias and BN parameter non-zero.
    Base 0.6: conv loses round(0.4 * 3) = 1 filter (1), fc round(0.4 * 4) = 2 units (2, then 0)."""
    with torch.no_grad():
        pruning.raw_weight(net.conv).copy_(torch.tensor([[1.0, -0.5], [0.1, 0.05], [-0.8, 0.6]]).view(3, 2, 1, 1))
        fc = torch.tensor([0.1, 0.5, 0.05, 0.3])[:, None] * torch.tensor([1.0, -1.0] * 6)
        pruning.raw_weight(net.fc).copy_(fc)
        pruning.raw_weight(net.out).copy_(torch.tensor([[0.3, -0.2, 0.4, 0.1], [-0.5, 0.6, 0.2, -0.3]]))
        net.conv.bias.copy_(torch.tensor([0.1, 0.2, 0.3]))
        net.bn.weight.copy_(torch.tensor([1.5, 2.0, 0.5]))
        net.bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
        net.bn.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
        net.bn.running_var.copy_(torch.tensor([1.0, 2.0, 3.0]))
        net.fc.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
        net.out.bias.copy_(torch.tensor([0.05, -0.05]))
    pruning.reapply_masks(net)  # as after every optimizer step


def removed_small(name: str):
    net = small()
    imp = IMP(net, build(name), IMPConfig(base=0.6, method="structured", phi=0.01))
    train_small_by_hand(net)
    imp.advance(1)
    return net, imp


def poke_removed(net):
    """Change everything a removed unit still owns: its bias, BN channel, own and outgoing raw weights."""
    with torch.no_grad():
        net.conv.bias[1] = 5.0
        net.bn.weight[1], net.bn.bias[1], net.bn.running_mean[1] = 3.0, 2.0, 7.0
        pruning.raw_weight(net.conv)[1] = 9.0
        pruning.raw_weight(net.fc)[:, 4:8] = 4.0
        pruning.raw_weight(net.fc)[[0, 2]] = 3.0
        net.fc.bias[[0, 2]] = 3.0
        pruning.raw_weight(net.out)[:, [0, 2]] = 4.0
    pruning.reapply_masks(net)  # as after every optimizer step


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"random_mask"}))
def test_a_removed_unit_is_gone_for_every_strategy(name):
    net, imp = removed_small(name)
    keep = {n: pruning.mask_of(layer).mask for n, layer in imp.layers.items()}
    assert keep["conv"].flatten(1).all(1).tolist() == [True, False, True]
    fc_cols = torch.tensor([True] * 4 + [False] * 4 + [True] * 4)
    assert torch.equal(keep["fc"], torch.tensor([False, True, False, True])[:, None] & fc_cols)
    assert torch.equal(keep["out"], torch.tensor([[False, True, False, True]] * 2))
    # gone from the forward pass under every strategy (standard's frozen fill included)
    assert bool(net.conv.weight[1].eq(0).all()) and bool(net.fc.weight[:, 4:8].eq(0).all())
    assert bool(net.fc.weight[[0, 2]].eq(0).all()) and bool(net.out.weight[:, [0, 2]].eq(0).all())
    # bias and BN channel 0, also where rewind_other put theta0's values back
    assert (net.conv.bias[1].item(), net.bn.weight[1].item(), net.bn.bias[1].item()) == (0.0, 0.0, 0.0)
    assert net.fc.bias[[0, 2]].tolist() == [0.0, 0.0]
    assert net.bn.weight[[0, 2]].ne(0).all() and net.fc.bias[[1, 3]].ne(0).all()
    # pruned = effective sparsity: conv 2 of 6, fc 32 of 48, out 4 of 8 -> 38 of 62
    assert pruning.sparsity(imp.layers)[0] == pytest.approx(38 / 62)
    assert units.effective_sparsity(net, imp.wiring)[0] == pytest.approx(38 / 62)

    x = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(net)
    poke_removed(net)
    for train in (True, False):
        torch.testing.assert_close(net.train(train)(x), twin.train(train)(x), rtol=0, atol=0)


def test_random_mask_removes_as_many_random_units_and_they_are_gone():
    """random_mask under structured pruning: the units it removes are drawn at random, as many per layer as
    magnitude pruning removes (1 of 3 filters, 2 of 4 neurons), and each is gone from the forward pass."""
    net, imp = removed_small("random_mask")
    keep = {n: pruning.mask_of(layer).mask for n, layer in imp.layers.items()}
    conv_alive = keep["conv"].flatten(1).all(1)
    fc_alive = keep["fc"].any(1)
    assert int(conv_alive.sum()) == 2 and int(fc_alive.sum()) == 2
    assert torch.equal(keep["conv"].flatten(1).any(1), conv_alive)  # whole filters, nothing partial
    fc_cols = conv_alive.repeat_interleave(4)
    assert torch.equal(keep["fc"], fc_alive[:, None] & fc_cols)
    assert torch.equal(keep["out"], fc_alive.expand(2, 4))
    assert pruning.sparsity(imp.layers)[0] == pytest.approx(38 / 62)
    assert units.effective_sparsity(net, imp.wiring)[0] == pytest.approx(38 / 62)
    gone_filter = int((~conv_alive).nonzero()[0])
    gone_rows = (~fc_alive).nonzero().flatten().tolist()
    x = torch.randn(5, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    twin = copy.deepcopy(net)
    with torch.no_grad():  # everything a removed unit still owns
        net.conv.bias[gone_filter] = 5.0
        pruning.raw_weight(net.conv)[gone_filter] = 9.0
        pruning.raw_weight(net.fc)[:, 4 * gone_filter : 4 * gone_filter + 4] = 4.0
        pruning.raw_weight(net.fc)[gone_rows] = 3.0
        net.fc.bias[gone_rows] = 3.0
        pruning.raw_weight(net.out)[:, gone_rows] = 4.0
    pruning.reapply_masks(net)
    for train in (True, False):
        torch.testing.assert_close(net.train(train)(x), twin.train(train)(x), rtol=0, atol=0)


def test_standard_is_mask0_under_structured_pruning():
    """Every weight structured pruning takes belongs to a removed unit or reads one: none stays frozen at its
    trained value, so standard's one difference from mask0 is gone."""
    standard, _ = removed_small("standard")
    mask0, _ = removed_small("mask0")
    for (k, a), (_, b) in zip(standard.state_dict().items(), mask0.state_dict().items()):
        assert torch.equal(a, b), k


def test_removed_units_stay_removed_in_later_rounds():
    net, imp = removed_small("mask1")
    train_small_by_hand(net)  # "training" writes every raw value and bias again
    imp.advance(2)  # 2 filters left: round(0.8) = 1 more goes; fc: round(0.8) = 1
    assert pruning.mask_of(net.conv).mask.flatten(1).any(1).tolist() == [True, False, False]
    assert net.conv.bias.tolist()[1:] == [0.0, 0.0] and net.bn.weight.tolist()[1:] == [0.0, 0.0]
    assert net.bn.bias.tolist()[1:] == [0.0, 0.0] and bool(net.fc.weight[:, 4:].eq(0).all())
    assert pruning.mask_of(net.fc).mask.any(1).tolist() == [False, True, False, False]


OPTIMIZERS = [
    {"name": "adam", "lr": 1e-2, "fused": True},
    {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1, "fused": True},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1, "fused": True},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "fused": False},
]


@pytest.mark.parametrize("optim", OPTIMIZERS, ids=lambda o: f"{o['name']}-{o.get('weight_decay', 0)}-{o['fused']}")
@pytest.mark.parametrize("name", ["mask1", "lrr", "standard"])
def test_a_removed_units_bias_and_batchnorm_stay_zero_through_training(name, optim):
    """Every weight that reads a removed unit is 0, so its bias, gamma and beta get a gradient of exactly 0;
    with the round's fresh optimizer (no momentum yet), weight decay of 0 is 0: they never move."""
    net, imp = removed_small(name)
    opt, _ = make_optimizer(net.parameters(), optim, None, 1)
    g = torch.Generator().manual_seed(2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(25):
        x, y = torch.randn(8, 2, 2, 2, generator=g), torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net.train()(x), y).backward()
        assert net.conv.bias.grad[1].item() == 0.0 and net.fc.bias.grad[[0, 2]].eq(0).all()
        assert net.bn.weight.grad[1].item() == 0.0 and net.bn.bias.grad[1].item() == 0.0
        opt.step()
    assert (net.conv.bias[1].item(), net.bn.weight[1].item(), net.bn.bias[1].item()) == (0.0, 0.0, 0.0)
    assert net.fc.bias[[0, 2]].tolist() == [0.0, 0.0]
    assert not torch.equal(net.fc.bias[[1, 3]], before["fc.bias"][[1, 3]])  # the others trained
    assert not torch.equal(net.bn.weight[[0, 2]], before["bn.weight"][[0, 2]])
    assert units.effective_sparsity(net, imp.wiring)[0] == pytest.approx(38 / 62)


def test_a_structured_resnet_run_records_both_sparsities(tmp_path):
    """The engine end to end: resnet20 on tiny synthetic data, SGD with momentum and weight decay, mask1
    (BatchNorm rewound to theta0 every round). The trained net of the last round has every removed unit's
    BatchNorm channel at 0 and every weight that reads it masked; results.json holds both sparsities."""
    from tests.cli import TINY_IMAGES, compose_config

    from phicenter.engine.loop import run
    from phicenter.engine.rundir import checkpoint_path

    cfg = compose_config(
        "experiment=cifar10_resnet20",
        *TINY_IMAGES,
        "epochs=1",
        "prune.iterations=2",
        "prune.method=structured",
        "strategy=mask1",
        "threads=1",
        "checkpoint.keep_all=true",
        "round_store.enabled=false",
    )
    res = run(cfg, tmp_path)
    assert res["status"] == "complete"
    net = models.build("resnet20", (3, 8, 8), 5)
    pruning.attach_masks(net)
    net.load_state_dict(torch.load(checkpoint_path(tmp_path, 2), weights_only=True)["model"])
    layers, wiring = pruning.prunable_layers(net), units.Wiring(net)
    for i in range(9):
        gone = ~pruning.mask_of(layers[f"blocks.{i}.conv1"]).mask.flatten(1).any(1)
        width = gone.numel()
        first = width - pruning.n_to_prune(width, 0.8)  # two rounds at base 0.8
        assert int(gone.sum()) == width - (first - pruning.n_to_prune(first, 0.8))
        bn = net.get_submodule(f"blocks.{i}.bn1")
        assert bn.weight[gone].eq(0).all() and bn.bias[gone].eq(0).all() and bn.weight[~gone].ne(0).all()
        assert not pruning.mask_of(layers[f"blocks.{i}.conv2"]).mask[:, gone].any()
    for r in res["rounds"]:
        assert r["effective_sparsity"] >= r["sparsity"] and all(
            "effective_sparsity" in lay for lay in r["layers"].values()
        )
    total, per = units.effective_sparsity(net, wiring)
    assert res["final"]["effective_sparsity"] == pytest.approx(total)
    assert {n: lay["effective_sparsity"] for n, lay in res["final"]["layers"].items()} == pytest.approx(per)
    assert res["final"]["sparsity"] == pytest.approx(pruning.sparsity(layers)[0]) and total > 0
