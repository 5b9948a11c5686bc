"""Each strategy's new weights after one IMP round, on a tiny hand-set model, against hand-computed tensors.

The model is Linear(3, 2) -> ReLU -> Linear(2, 2) (layers "0" and "2"; "2" is the output layer).

theta0 (set by hand before IMP is built):
    W1_0 = [[ 0.4, -0.2, 0.2],        b1_0 = [0.1, -0.1]
            [-0.4,  0.1, 0.5]]
        mean 0.1; deviations .3 -.3 .1 -.5 0 .4; squares sum .60 -> population var .1
        c1 = init_std = sqrt(0.1) = 0.31623  (sample std would be sqrt(.12) = 0.34641)
        init_abs_mean = 1.8 / 6 = 0.3
    W2_0 = [[0.3, -0.6],              b2_0 = [0.2, 0.3]
            [0.0,  0.7]]
        mean 0.1; deviations .2 -.7 -.1 .6; squares sum .90 -> var .225; c2 = sqrt(0.225) = 0.47434
        init_abs_mean = 1.6 / 4 = 0.4

"trained" (written into the raw weights after IMP is built):
    T1 = [[0.9,  0.05, -0.3],         tb1 = [0.5, 0.6]
          [0.02, 0.12,  0.8]]
    T2 = [[-0.2, 0.05],               tb2 = [-0.7, 0.8]
          [ 0.4, -0.01]]

Pruning with base 0.8, output_base 0.5:
    layer 0: 6 alive, k = round(1.2) = 1 -> 0.02 at [1, 0] goes.    keep1 = [[1, 1, 1], [0, 1, 1]]
    layer 2: 4 alive, k = round(2.0) = 2 -> 0.01 and 0.05 go.         keep2 = [[1, 0], [1, 0]]
phi = 0.15 (absolute) unless a test says otherwise.
"""

import math

import pytest
import torch
from torch import nn

from phicenter.method import pruning, seeding
from phicenter.method.imp import IMP, IMPConfig, layer_constant, layer_phi
from phicenter.method.strategies import build

W1_0 = torch.tensor([[0.4, -0.2, 0.2], [-0.4, 0.1, 0.5]])
B1_0 = torch.tensor([0.1, -0.1])
W2_0 = torch.tensor([[0.3, -0.6], [0.0, 0.7]])
B2_0 = torch.tensor([0.2, 0.3])
T1 = torch.tensor([[0.9, 0.05, -0.3], [0.02, 0.12, 0.8]])
TB1 = torch.tensor([0.5, 0.6])
T2 = torch.tensor([[-0.2, 0.05], [0.4, -0.01]])
TB2 = torch.tensor([-0.7, 0.8])
C1, C2 = math.sqrt(0.1), math.sqrt(0.225)
KEEP1 = torch.tensor([[True, True, True], [False, True, True]])
KEEP2 = torch.tensor([[True, False], [True, False]])
CFG = {"phi": 0.15, "base": 0.8, "output_base": 0.5}


def tiny():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(W1_0)
        net[0].bias.copy_(B1_0)
        net[2].weight.copy_(W2_0)
        net[2].bias.copy_(B2_0)
    return net


def train_by_hand(net, w1=T1, w2=T2, b1=TB1, b2=TB2):
    """Set the weights as training would leave them: whatever a step wrote into a dead entry, the step ends
    with the fills re-applied (pruning.reapply_masks)."""
    with torch.no_grad():
        pruning.raw_weight(net[0]).copy_(w1)
        pruning.raw_weight(net[2]).copy_(w2)
        net[0].bias.copy_(b1)
        net[2].bias.copy_(b2)
    pruning.reapply_masks(net)


def one_round(name, cfg=None, fresh_init=None, **options):
    net = tiny()
    imp = IMP(net, build(name, **options), IMPConfig(**(cfg or CFG)), fresh_init=fresh_init)
    train_by_hand(net)
    diag = imp.advance(1)
    return net, imp, diag


def close(actual, expected):
    torch.testing.assert_close(actual.detach(), torch.as_tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)


def check_masks(net):
    assert torch.equal(pruning.mask_of(net[0]).mask, KEEP1)
    assert torch.equal(pruning.mask_of(net[2]).mask, KEEP2)


def test_constants_and_phis_by_hand():
    imp = IMP(tiny(), build("mask1"), IMPConfig(**CFG))
    assert imp.constants["0"] == pytest.approx(C1, rel=1e-6)  # population std (correction=0)
    assert imp.constants["0"] != pytest.approx(math.sqrt(0.12), rel=1e-3)  # not the sample std
    assert imp.constants["2"] == pytest.approx(C2, rel=1e-6)
    assert isinstance(imp.constants["0"], float)
    assert imp.phis == {"0": 0.15, "2": 0.15}
    assert layer_constant(W1_0, "init_abs_mean") == pytest.approx(0.3)
    assert layer_constant(W2_0, "init_abs_mean") == pytest.approx(0.4)
    assert layer_constant(W1_0, 0.25) == 0.25
    assert layer_phi(W1_0, 0.7, "layer_std") == pytest.approx(0.7 * C1, rel=1e-6)


def test_mask1():
    net, imp, diag = one_round("mask1")
    check_masks(net)
    # signs of theta0 wrt 0.15: 0.4 +, -0.2 -, 0.2 +, [pruned], 0.1 - (below phi), 0.5 +
    close(net[0].weight, [[C1, -C1, C1], [0, -C1, C1]])
    # 0.3 +, [pruned], 0.0 - (0 < 0.15), [pruned]
    close(net[2].weight, [[C2, 0], [-C2, 0]])
    # biases kept trained (the paper's four share rewind_other=false); rewind_other=true takes them to theta0
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)
    rewound, _, _ = one_round("mask1", rewind_other=True)
    close(rewound[0].weight, [[C1, -C1, C1], [0, -C1, C1]])
    assert torch.equal(rewound[0].bias, B1_0) and torch.equal(rewound[2].bias, B2_0)
    # diagnostics. layer 0: theta0 0.1 changes sign because of phi (1 of 5 survivors); new sign vs theta0's:
    # the same entry. dead zone (0, 0.15): the 0.1. layer 2: 0.0 flips (+1 at 0 by the tie, -1 at 0.15): 1 of 2;
    # it is on the boundary, not inside the dead zone.
    l0, l2 = diag["layers"]["0"], diag["layers"]["2"]
    assert (l0["survivors"], l0["flipped_by_phi_count"], l0["flipped_vs_init_count"], l0["dead_zone_count"]) == (
        5,
        1,
        1,
        1,
    )
    assert (l2["survivors"], l2["flipped_by_phi_count"], l2["flipped_vs_init_count"], l2["dead_zone_count"]) == (
        2,
        1,
        1,
        0,
    )
    assert l0["flipped_by_phi"] == pytest.approx(1 / 5) and l2["flipped_by_phi"] == pytest.approx(1 / 2)
    assert diag["flipped_by_phi"] == pytest.approx(2 / 7)
    assert diag["flipped_vs_init"] == pytest.approx(2 / 7)
    assert diag["dead_zone"] == pytest.approx(1 / 7)
    assert l0["sparsity"] == pytest.approx(1 / 6) and l2["sparsity"] == pytest.approx(1 / 2)
    # critical phi of the survivors' reference: layer 0 [0.4, -0.2, 0.2, 0.1, 0.5] -> (0.1, -0.2);
    # layer 2 [0.3, 0.0] -> (0.0, None)
    assert l0["critical_phi_pos"] == pytest.approx(0.1) and l0["critical_phi_neg"] == pytest.approx(-0.2)
    assert l2["critical_phi_pos"] == 0.0 and l2["critical_phi_neg"] is None


def test_mask0():
    net, imp, diag = one_round("mask0")
    check_masks(net)
    # signs of trained wrt 0.15: 0.9 +, 0.05 - (below phi), -0.3 -, [pruned], 0.12 - (below phi), 0.8 +
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])
    # -0.2 -, [pruned], 0.4 +, [pruned]
    close(net[2].weight, [[-C2, 0], [C2, 0]])
    # biases kept trained
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)
    # layer 0: by phi: 0.05 and 0.12 (sign + at 0, - at phi) = 2/5.  vs theta0 signs [+,-,+,.,+,+]:
    #   new [+,-,-,.,-,+] differs at -0.3 (theta0 0.2) and 0.12 (theta0 0.1) = 2/5. dead zone: 0.05, 0.12 = 2.
    # layer 2: by phi 0; vs theta0 [+ (0.3), ., + (0.0 tie), .]: new [-, ., +, .] differs once = 1/2.
    l0, l2 = diag["layers"]["0"], diag["layers"]["2"]
    assert (l0["flipped_by_phi_count"], l0["flipped_vs_init_count"], l0["dead_zone_count"]) == (2, 2, 2)
    assert (l2["flipped_by_phi_count"], l2["flipped_vs_init_count"], l2["dead_zone_count"]) == (0, 1, 0)
    assert diag["flipped_by_phi"] == pytest.approx(2 / 7)
    assert diag["flipped_vs_init"] == pytest.approx(3 / 7)
    assert diag["dead_zone"] == pytest.approx(2 / 7)
    # critical phi over the surviving trained weights [0.9, 0.05, -0.3, 0.12, 0.8] and [-0.2, 0.4]
    assert l0["critical_phi_pos"] == pytest.approx(0.05) and l0["critical_phi_neg"] == pytest.approx(-0.3)
    assert l2["critical_phi_pos"] == pytest.approx(0.4) and l2["critical_phi_neg"] == pytest.approx(-0.2)


def test_standard_keeps_pruned_at_trained_values():
    net, imp, diag = one_round("standard")
    check_masks(net)
    # survivors as mask0; the pruned entries keep their trained values 0.02, 0.05, -0.01
    close(net[0].weight, [[C1, -C1, -C1], [0.02, -C1, C1]])
    close(net[2].weight, [[-C2, 0.05], [C2, -0.01]])
    # and that is what the mask's fill holds (so no optimizer can move them)
    assert pruning.mask_of(net[0]).fill[1, 0].item() == pytest.approx(0.02)
    assert torch.equal(pruning.mask_of(net[2]).fill[~KEEP2], torch.tensor([0.05, -0.01]))
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)
    assert diag["flipped_by_phi"] == pytest.approx(2 / 7) and diag["flipped_vs_init"] == pytest.approx(3 / 7)


def test_standard_with_zero_fill_equals_mask0():
    net_s, _, _ = one_round("standard", pruned_fill="zero")
    net_m, _, _ = one_round("mask0")
    assert torch.equal(net_s[0].weight, net_m[0].weight) and torch.equal(net_s[2].weight, net_m[2].weight)


def test_lth_rewinds_survivors_to_theta0_values():
    net, imp, diag = one_round("lth")
    check_masks(net)
    close(net[0].weight, [[0.4, -0.2, 0.2], [0, 0.1, 0.5]])
    close(net[2].weight, [[0.3, 0], [0.0, 0]])
    assert torch.equal(net[0].bias, B1_0) and torch.equal(net[2].bias, B2_0)
    assert diag["flipped_by_phi"] == 0 and diag["flipped_vs_init"] == 0 and diag["dead_zone"] == 0


def test_gradual_extremes_are_mask0_and_mask1():
    # trained_fraction 1: every weight references trained -> mask0's weights (biases kept trained)
    net, _, _ = one_round("gradual", trained_fraction=1.0)
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])
    close(net[2].weight, [[-C2, 0], [C2, 0]])
    # trained_fraction 0: every weight references theta0 -> mask1's weights, but biases still trained
    net, _, _ = one_round("gradual", trained_fraction=0.0)
    close(net[0].weight, [[C1, -C1, C1], [0, -C1, C1]])
    close(net[2].weight, [[C2, 0], [-C2, 0]])
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)


def test_gradual_default_picks_each_weight_from_trained_or_theta0():
    net, _, _ = one_round("gradual")
    from_trained = torch.tensor([[C1, -C1, -C1], [0, -C1, C1]])
    from_theta0 = torch.tensor([[C1, -C1, C1], [0, -C1, C1]])
    w = net[0].weight.detach()
    assert bool(((w - from_trained).abs() < 1e-6).logical_or((w - from_theta0).abs() < 1e-6).all())


def test_random_uses_the_fresh_init_for_survivors():
    def fresh(name, like, g):
        return torch.full(like.shape, 3.0 if name == "0" else -2.0)

    net, _, diag = one_round("random", fresh_init=fresh)
    check_masks(net)
    close(net[0].weight, [[3, 3, 3], [0, 3, 3]])
    close(net[2].weight, [[-2, 0], [-2, 0]])
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)
    # new signs vs theta0's: layer 0 theta0 survivors [+,-,+,+,+] vs all + -> 1; layer 2 [+ (0.3), + (0.0)]
    # vs all - -> 2. 3 of 7. Nothing is flipped "by phi" (random ignores phi).
    assert diag["flipped_vs_init"] == pytest.approx(3 / 7) and diag["flipped_by_phi"] == 0


def test_random_default_draw_is_seeded_by_seed_round_layer():
    net, _, _ = one_round("random", cfg=dict(CFG, seed=5))
    # PyTorch's default Linear init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from the (seed, "random", round, layer) stream
    for name, layer, keep in (("0", net[0], KEEP1), ("2", net[2], KEEP2)):
        expected = torch.empty(layer.weight.shape)
        nn.init.kaiming_uniform_(expected, a=math.sqrt(5), generator=seeding.generator(5, "random", 1, name))
        assert torch.equal(layer.weight[keep], expected[keep])
        assert bool((layer.weight[~keep] == 0).all())
        assert layer.weight.abs().max() <= 1 / math.sqrt(layer.in_features)
    again, _, _ = one_round("random", cfg=dict(CFG, seed=5))
    other_seed, _, _ = one_round("random", cfg=dict(CFG, seed=6))
    assert torch.equal(again[0].weight, net[0].weight)
    assert not torch.equal(other_seed[0].weight, net[0].weight)
    # another round from the same state: another draw
    net2 = tiny()
    imp2 = IMP(net2, build("random"), IMPConfig(**dict(CFG, seed=5)))
    train_by_hand(net2)
    imp2.advance(2)
    assert not torch.equal(net2[0].weight, net[0].weight)


def random_mask_keep(seed: int, r: int, layer: str, shape, k: int, alive=None) -> torch.Tensor:
    """The mask random_mask leaves: the k alive entries with the lowest uniform draw of (seed, round, layer) go
    (ties to the lower flat index)."""
    u = torch.rand(shape, generator=seeding.generator(seed, "random_mask", "mask", r, layer)).flatten()
    alive = torch.ones(u.numel(), dtype=torch.bool) if alive is None else alive.flatten()
    order = sorted((float(x), i) for i, x in enumerate(u) if alive[i])
    keep = alive.clone()
    for _, i in order[:k]:
        keep[i] = False
    return keep.view(shape)


def test_random_mask_draws_the_mask_and_rewinds_survivors_to_theta0():
    """Round 1 (base 0.8, output_base 0.5): layer 0 loses round(1.2) = 1 of its 6 weights, layer 2 round(2.0) = 2
    of 4, as magnitude pruning would, but which ones is the seeded draw's, not the trained magnitudes'; survivors
    take their theta0 values, biases go back to theta0 (rewind_other, as lth)."""
    net, imp, diag = one_round("random_mask", cfg=dict(CFG, seed=3))
    keep1 = random_mask_keep(3, 1, "0", (2, 3), 1)
    keep2 = random_mask_keep(3, 1, "2", (2, 2), 2)
    assert torch.equal(pruning.mask_of(net[0]).mask, keep1) and torch.equal(pruning.mask_of(net[2]).mask, keep2)
    assert torch.equal(net[0].weight, torch.where(keep1, W1_0, 0.0))
    assert torch.equal(net[2].weight, torch.where(keep2, W2_0, 0.0))
    assert torch.equal(net[0].bias, B1_0) and torch.equal(net[2].bias, B2_0)
    assert diag["survivors"] == 5 + 2 and diag["flipped_vs_init"] == 0.0
    # the trained values do not enter: other trained weights give the same mask; another seed another one
    other = tiny()
    imp2 = IMP(other, build("random_mask"), IMPConfig(**dict(CFG, seed=3)))
    train_by_hand(other, w1=-T1 * 7, w2=T2 + 1)
    imp2.advance(1)
    assert torch.equal(pruning.mask_of(other[0]).mask, keep1)
    masks = {s: pruning.mask_of(one_round("random_mask", cfg=dict(CFG, seed=s))[0][0]).mask for s in range(8)}
    assert len({tuple(m.flatten().tolist()) for m in masks.values()}) > 1


def test_random_mask_keeps_lths_per_layer_counts_with_nested_masks():
    """Over 6 rounds of a 3-layer net: each layer's alive count is lth's (the count rule depends only on the alive
    count and the base), each round's mask lies inside the previous one, and is the seeded draw among the alive."""

    def make(name):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
        return net, IMP(net, build(name), IMPConfig(phi=0.0, base=0.8, output_base=0.9, seed=11))

    (net_r, imp_r), (net_l, imp_l) = make("random_mask"), make("lth")
    before = {n: torch.ones(l.weight.shape, dtype=torch.bool) for n, l in imp_r.layers.items()}
    for r in range(1, 7):
        for net in (net_r, net_l):  # "training": distinct magnitudes, so lth's mask is magnitude's
            with torch.no_grad():
                for i, layer in enumerate(pruning.prunable_layers(net).values()):
                    layer.weight.copy_(torch.linspace(-1, 1, layer.weight.numel()).view_as(layer.weight) * (i + 1))
            pruning.reapply_masks(net)
        imp_r.advance(r)
        imp_l.advance(r)
        for n in imp_r.layers:
            m_r, m_l = pruning.mask_of(imp_r.layers[n]).mask, pruning.mask_of(imp_l.layers[n]).mask
            assert int(m_r.sum()) == int(m_l.sum())
            assert bool((m_r <= before[n]).all())  # nested
            k = int(before[n].sum()) - int(m_r.sum())
            assert torch.equal(m_r, random_mask_keep(11, r, n, m_r.shape, k, before[n]))
            before[n] = m_r.clone()
    assert any(
        not torch.equal(pruning.mask_of(imp_r.layers[n]).mask, pruning.mask_of(imp_l.layers[n]).mask)
        for n in imp_r.layers
    )


def test_phi_scale_layer_std():
    cfg = dict(CFG, phi=0.7, phi_scale="layer_std")
    net, imp, diag = one_round("mask1", cfg=cfg)
    # layer 0: phi = 0.7 * sqrt(0.1) = 0.22136 -> theta0 0.4 +, -0.2 -, 0.2 - (now below), 0.1 -, 0.5 +
    # layer 2: phi = 0.7 * sqrt(0.225) = 0.33204 -> 0.3 - (below), 0.0 -
    assert diag["layers"]["0"]["phi"] == pytest.approx(0.7 * C1, rel=1e-6)
    assert diag["layers"]["2"]["phi"] == pytest.approx(0.7 * C2, rel=1e-6)
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])
    close(net[2].weight, [[-C2, 0], [-C2, 0]])
    # absolute phi = 0.7 is above every theta0 entry: every survivor is -c
    net, _, _ = one_round("mask1", cfg=dict(CFG, phi=0.7))
    close(net[0].weight, [[-C1, -C1, -C1], [0, -C1, -C1]])
    close(net[2].weight, [[-C2, 0], [-C2, 0]])


@pytest.mark.parametrize("magnitude, c1, c2", [("init_abs_mean", 0.3, 0.4), (0.25, 0.25, 0.25)])
def test_magnitude_options(magnitude, c1, c2):
    net, imp, diag = one_round("mask1", cfg=dict(CFG, magnitude=magnitude))
    close(net[0].weight, [[c1, -c1, c1], [0, -c1, c1]])
    close(net[2].weight, [[c2, 0], [-c2, 0]])
    assert diag["layers"]["0"]["c"] == pytest.approx(c1) and diag["layers"]["2"]["c"] == pytest.approx(c2)


@pytest.mark.parametrize("bad", [0, -1.0, "foo", float("nan"), float("inf")])
def test_bad_magnitude(bad):
    with pytest.raises(ValueError, match="magnitude"):
        IMP(tiny(), build("mask1"), IMPConfig(magnitude=bad))


def test_bad_phi_scale_and_strategy_options():
    with pytest.raises(ValueError, match="phi_scale"):
        IMP(tiny(), build("mask1"), IMPConfig(phi_scale="per_neuron"))
    with pytest.raises(ValueError, match="unknown strategy"):
        build("mask2")
    with pytest.raises(ValueError, match="trained_fraction"):
        build("gradual", trained_fraction=1.5)
    with pytest.raises(ValueError, match="pruned_fill"):
        build("standard", pruned_fill="random")
    with pytest.raises(ValueError, match="no option"):
        build("mask0", trained_fraction=0.5)


@pytest.mark.parametrize("name", ["mask0", "mask1", "gradual", "standard"])
@pytest.mark.parametrize("magnitude", ["init_std", "init_abs_mean", 0.125])
def test_survivor_magnitude_is_c_per_layer(name, magnitude):
    net, imp, _ = one_round(name, cfg=dict(CFG, magnitude=magnitude))
    for n, layer, keep in (("0", net[0], KEEP1), ("2", net[2], KEEP2)):
        c = torch.tensor(imp.constants[n], dtype=torch.float32)
        assert bool((layer.weight[keep].abs() == c).all())


def test_second_round_standard_freezes_each_weight_at_its_own_rounds_value():
    net, imp, _ = one_round("standard")
    # round 2 "training": the optimizer wrote garbage into layer 0's pruned [1, 0]; the step's re-application
    # puts it back at 0.02
    train_by_hand(
        net, w1=torch.tensor([[0.7, -0.03, -0.5], [999.0, 0.6, -0.9]]), w2=torch.tensor([[0.3, 555.0], [-0.2, 555.0]])
    )
    close(net[0].weight, [[0.7, -0.03, -0.5], [0.02, 0.6, -0.9]])
    imp.advance(2)
    # layer 0: 5 alive, k = round(1.0) = 1 -> -0.03 goes (frozen at -0.03); survivors 0.7 +, -0.5 -, 0.6 +, -0.9 -
    close(net[0].weight, [[C1, -0.03, -C1], [0.02, C1, -C1]])
    # layer 2: effective [[0.3, 0.05], [-0.2, -0.01]]; 2 alive, base 0.5 -> k = 1 -> -0.2 goes; 0.3 +
    close(net[2].weight, [[C2, 0.05], [-0.2, -0.01]])


def test_second_round_mask0():
    net, imp, _ = one_round("mask0")
    train_by_hand(
        net, w1=torch.tensor([[0.7, -0.03, -0.5], [999.0, 0.6, -0.9]]), w2=torch.tensor([[0.3, 555.0], [-0.2, 555.0]])
    )
    imp.advance(2)
    close(net[0].weight, [[C1, 0, -C1], [0, C1, -C1]])
    close(net[2].weight, [[C2, 0], [0, 0]])


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_the_papers_four_strategies_share_rewind_other():
    """mask0, mask1, gradual and standard differ only in where the signs come from: one rewind_other default
    (false: biases and BatchNorm kept trained), in the declarations and in conf/strategy/*.yaml alike; the
    baselines keep theirs."""
    from pathlib import Path

    import yaml

    from phicenter.method.options import STRATEGY_OPTIONS

    conf = Path(__file__).resolve().parents[1] / "conf" / "strategy"
    declared = {n: STRATEGY_OPTIONS[n](name=n).rewind_other for n in STRATEGY_OPTIONS}
    in_conf = {n: yaml.safe_load((conf / f"{n}.yaml").read_text())["rewind_other"] for n in STRATEGY_OPTIONS}
    assert declared == in_conf
    assert {declared[n] for n in ("mask0", "mask1", "gradual", "standard")} == {False}
    assert (
        declared["lth"],
        declared["sign_rewind"],
        declared["sign_transfer"],
        declared["random"],
        declared["lrr"],
        declared["random_mask"],
    ) == (True, True, False, False, False, True)
    assert all(build(n).rewind_other is False for n in ("mask0", "mask1", "gradual", "standard"))


@pytest.mark.parametrize(
    "name, options, rewound",
    [
        ("lth", {}, True),
        ("mask0", {}, False),
        ("mask1", {}, False),
        ("gradual", {}, False),
        ("standard", {}, False),
        ("random", {}, False),
        ("random_mask", {}, True),
        ("mask1", {"rewind_other": True}, True),
        ("mask0", {"rewind_other": True}, True),
    ],
)
def test_non_prunable_parameters(name, options, rewound):
    net = bn_net()
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    imp = IMP(net, build(name, **options), IMPConfig(phi=0.0))
    # "training": move every bias, BN affine parameter and running statistic away from theta0
    net.train()
    net(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))  # running stats, num_batches_tracked
    with torch.no_grad():
        net[0].bias.add_(1.0)
        net[1].weight.mul_(3.0)
        net[1].bias.add_(-2.0)
        net[3].bias.add_(0.5)
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    imp.advance(1)
    state = net.state_dict()
    others = ["0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked", "3.bias"]
    for key in others:
        want = theta0[key] if rewound else trained[key]
        assert torch.equal(state[key], want), key
    assert state["1.num_batches_tracked"].item() == (0 if rewound else 1)
    # BatchNorm's weight is never pruned
    assert list(imp.layers) == ["0", "3"]


def large_pair():
    """Linear(100, 100) + Linear(100, 10); theta0 strictly positive, "trained" strictly negative."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 10))
    with torch.no_grad():
        net[0].weight.copy_(0.5 + torch.rand(100, 100, generator=g))
    trained = -(0.5 + torch.rand(100, 100, generator=g))
    return net, trained


def gradual_round(round_index=1, seed=0, fraction=0.7):
    net, trained = large_pair()
    imp = IMP(net, build("gradual", trained_fraction=fraction), IMPConfig(phi=0.0, seed=seed))
    with torch.no_grad():
        pruning.raw_weight(net[0]).copy_(trained)
    diag = imp.advance(round_index)
    keep = pruning.mask_of(net[0]).mask
    from_trained = (net[0].weight < 0) & keep  # theta0 > 0 everywhere, trained < 0 everywhere
    return from_trained, keep, diag


def test_gradual_trained_share_and_determinism():
    from_trained, keep, diag = gradual_round()
    n = int(keep.sum())
    assert n == 8000  # 10000 - round(0.2 * 10000)
    share = int(from_trained.sum()) / n
    # Binomial(8000, 0.7): sd = sqrt(.7 * .3 / 8000) = 0.0051; allow ~4 sd
    assert abs(share - 0.7) < 0.02
    # every weight that referenced trained changed sign vs theta0 (all +): flipped_vs_init == trained share
    assert diag["layers"]["0"]["flipped_vs_init"] == pytest.approx(share)
    # same (seed, round): the same choice; another round or seed: another choice
    assert torch.equal(gradual_round()[0], from_trained)
    assert not torch.equal(gradual_round(round_index=2)[0], from_trained)
    assert not torch.equal(gradual_round(seed=1)[0], from_trained)
    other, _, _ = gradual_round(fraction=0.3)
    assert abs(int(other.sum()) / n - 0.3) < 0.02
