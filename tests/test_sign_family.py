"""lrr, sign_rewind and late rewinding (IMP.set_rewind) after one IMP round, against hand-computed tensors.

The tiny model, theta0, the "trained" weights, the masks and phi = 0.15 are those of tests/test_strategies.py:
    keep1 = [[1, 1, 1], [0, 1, 1]]    keep2 = [[1, 0], [1, 0]]    c1 = sqrt(0.1), c2 = sqrt(0.225) (from theta0)

The rewind point theta_k used below (set by hand, as if after k epochs of round 0):
    W1_k = [[0.5, 0.1, -0.2],         b1_k = [0.2, 0.3]
            [0.3, -0.1, 0.4]]
    W2_k = [[-0.3, 0.6],              b2_k = [0.5, -0.5]
            [0.2, -0.7]]
"""

import pytest
import torch
from tests.test_strategies import (
    B1_0,
    B2_0,
    C1,
    C2,
    CFG,
    TB1,
    TB2,
    bn_net,
    check_masks,
    close,
    one_round,
    tiny,
    train_by_hand,
)
from torch import nn

from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import build

W1_K = torch.tensor([[0.5, 0.1, -0.2], [0.3, -0.1, 0.4]])
B1_K = torch.tensor([0.2, 0.3])
W2_K = torch.tensor([[-0.3, 0.6], [0.2, -0.7]])
B2_K = torch.tensor([0.5, -0.5])


def counts(layer: dict) -> tuple:
    return layer["flipped_by_phi_count"], layer["flipped_vs_init_count"], layer["dead_zone_count"]


def theta_k(imp: IMP) -> dict:
    state = {k: v.clone() for k, v in imp.theta0.items()}
    state["0.weight"] = W1_K.clone()
    state["0.bias"] = B1_K.clone()
    state["2.weight"] = W2_K.clone()
    state["2.bias"] = B2_K.clone()
    return state


def rewound_round(name, cfg=None, **options):
    net = tiny()
    imp = IMP(net, build(name, **options), IMPConfig(**(cfg or CFG)))
    imp.set_rewind(theta_k(imp))
    train_by_hand(net)
    return net, imp, imp.advance(1)


# ---------------------------------------------------------------- lrr


def test_lrr_keeps_the_trained_survivors():
    net, imp, diag = one_round("lrr")
    check_masks(net)
    close(net[0].weight, [[0.9, 0.05, -0.3], [0, 0.12, 0.8]])
    close(net[2].weight, [[-0.2, 0], [0.4, 0]])
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)
    # phi is not used: nothing re-signed, no dead zone, no critical phi. New signs vs theta0's:
    # layer 0 trained [+0.9, +0.05, -0.3, +0.12, +0.8] vs theta0 [+, -, +, +, +] -> 2; layer 2 [-0.2, +0.4] vs
    # [+0.3, +0.0 (tie)] -> 1
    l0, l2 = diag["layers"]["0"], diag["layers"]["2"]
    assert counts(l0) == (0, 2, 0) and counts(l2) == (0, 1, 0)
    assert l0["critical_phi_pos"] is None and l2["critical_phi_neg"] is None
    assert diag["flipped_vs_init"] == pytest.approx(3 / 7)
    assert build("lrr").uses_phi is False


def test_lrr_ignores_phi():
    a, _, _ = one_round("lrr", cfg=dict(CFG, phi=0.0))
    b, _, _ = one_round("lrr", cfg=dict(CFG, phi=-0.5))
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a[2].weight, b[2].weight)


# ---------------------------------------------------------------- sign_rewind


def test_sign_rewind_puts_the_learned_sign_on_the_theta0_magnitude():
    net, imp, diag = one_round("sign_rewind")
    check_masks(net)
    # signs(trained, 0.15): 0.9 +, 0.05 -, -0.3 -, [pruned], 0.12 -, 0.8 +; |theta0| = 0.4 0.2 0.2 . 0.1 0.5
    close(net[0].weight, [[0.4, -0.2, -0.2], [0, -0.1, 0.5]])
    # -0.2 -, 0.4 +; |theta0| = 0.3, 0.0
    close(net[2].weight, [[-0.3, 0], [0.0, 0]])
    assert torch.equal(net[0].bias, B1_0) and torch.equal(net[2].bias, B2_0)  # rewound
    # by phi: 0.05, 0.12 (+ at 0, - at phi). vs theta0 [+, -, +, +, +]: new [+, -, -, -, +] -> 2; layer 2 new
    # [-, +] vs [+, + (tie)] -> 1. dead zone (0, 0.15): 0.05 and 0.12.
    l0, l2 = diag["layers"]["0"], diag["layers"]["2"]
    assert counts(l0) == (2, 2, 2) and counts(l2) == (0, 1, 0)
    assert l0["critical_phi_pos"] == pytest.approx(0.05) and l0["critical_phi_neg"] == pytest.approx(-0.3)
    assert l2["critical_phi_pos"] == pytest.approx(0.4) and l2["critical_phi_neg"] == pytest.approx(-0.2)


def test_sign_rewind_sign_counts_where_the_magnitude_is_zero():
    # theta0[2][1, 0] = 0.0; trained there -0.4: the survivor is 0 * (-1), its sign is -1 (not the +1 of a tie)
    net = tiny()
    imp = IMP(net, build("sign_rewind"), IMPConfig(**CFG))
    train_by_hand(net, w2=torch.tensor([[-0.2, 0.05], [-0.4, -0.01]]))
    diag = imp.advance(1)
    close(net[2].weight, [[-0.3, 0], [0.0, 0]])
    # new [-, -] vs theta0 [+0.3, +0.0 (tie)]: both differ
    assert diag["layers"]["2"]["flipped_vs_init_count"] == 2


# ---------------------------------------------------------------- late rewinding


def test_mask1_and_lth_rewind_to_theta_k():
    net, imp, diag = rewound_round("mask1", rewind_other=True)
    check_masks(net)
    # signs(theta_k, 0.15): 0.5 +, 0.1 -, -0.2 -, [pruned], -0.1 -, 0.4 +  |  -0.3 -, [pruned], 0.2 +, [pruned]
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])  # c from theta0, not from theta_k
    close(net[2].weight, [[-C2, 0], [C2, 0]])
    assert torch.equal(net[0].bias, B1_K) and torch.equal(net[2].bias, B2_K)
    # flipped_vs_init compares with theta_k's signs [+, +, -, -, +]: only the 0.1 (the one phi re-signed)
    assert counts(diag["layers"]["0"]) == (1, 1, 1) and counts(diag["layers"]["2"]) == (0, 0, 0)
    assert imp.constants["0"] == pytest.approx(C1, rel=1e-6) and imp.constants["2"] == pytest.approx(C2, rel=1e-6)

    net, _, _ = rewound_round("lth")
    close(net[0].weight, [[0.5, 0.1, -0.2], [0, -0.1, 0.4]])
    close(net[2].weight, [[-0.3, 0], [0.2, 0]])
    assert torch.equal(net[0].bias, B1_K) and torch.equal(net[2].bias, B2_K)


def test_gradual_theta0_share_and_sign_rewind_use_theta_k():
    net, _, _ = rewound_round("gradual", trained_fraction=0.0)
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])
    close(net[2].weight, [[-C2, 0], [C2, 0]])
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)  # gradual keeps them trained

    net, _, _ = rewound_round("sign_rewind")
    # |theta_k| * signs(trained, 0.15): [+, -, -, ., -, +] on 0.5 0.1 0.2 . 0.1 0.4; [-, ., +, .] on 0.3 . 0.2 .
    close(net[0].weight, [[0.5, -0.1, -0.2], [0, -0.1, 0.4]])
    close(net[2].weight, [[-0.3, 0], [0.2, 0]])
    assert torch.equal(net[0].bias, B1_K) and torch.equal(net[2].bias, B2_K)


def test_mask0_ignores_the_rewind_point_except_in_flipped_vs_init():
    net, _, diag = rewound_round("mask0")
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])
    close(net[2].weight, [[-C2, 0], [C2, 0]])
    # new [+, -, -, -, +] vs theta_k [+, +, -, -, +]: 1; layer 2 new [-, +] vs theta_k [-, +]: 0
    assert counts(diag["layers"]["0"]) == (2, 1, 2) and counts(diag["layers"]["2"]) == (0, 0, 0)


def test_layer_std_phi_stays_defined_on_theta0():
    net, imp, diag = rewound_round("mask1", cfg=dict(CFG, phi=0.7, phi_scale="layer_std"))
    assert diag["layers"]["0"]["phi"] == pytest.approx(0.7 * C1, rel=1e-6)  # 0.2214: std of theta0, not theta_k
    # theta_k wrt 0.2214: 0.5 +, 0.1 -, -0.2 -, -0.1 -, 0.4 +
    close(net[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])


def test_rewind_other_restores_batchnorm_statistics_of_theta_k():
    net = bn_net()
    imp = IMP(net, build("mask1", rewind_other=True), IMPConfig(phi=0.0))
    net.train()
    net(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)))  # "epoch k": running stats move
    with torch.no_grad():
        net[1].bias.add_(-2.0)
    rewind = {k: v.clone() for k, v in net.state_dict().items()}
    imp.set_rewind(net.state_dict())
    net(torch.randn(8, 3, generator=torch.Generator().manual_seed(2)))  # "the rest of round 0"
    with torch.no_grad():
        net[1].bias.add_(5.0)
    imp.advance(1)
    state = net.state_dict()
    for key in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(state[key], rewind[key]), key
    assert state["1.num_batches_tracked"].item() == 1
    assert not torch.equal(rewind["1.running_mean"], imp.theta0["1.running_mean"])


def test_set_rewind_copies_checks_and_resets():
    net = tiny()
    imp = IMP(net, build("mask1"), IMPConfig(**CFG))
    assert imp.rewind is imp.theta0  # default: theta0 itself
    state = theta_k(imp)
    imp.set_rewind(state)
    state["0.bias"].fill_(9.0)  # the rewind point is a copy
    assert torch.equal(imp.rewind["0.bias"], B1_K)
    assert torch.equal(imp.rewind_weight("2"), W2_K) and torch.equal(
        imp.theta0_weight("2"), torch.tensor([[0.3, -0.6], [0.0, 0.7]])
    )
    with pytest.raises(ValueError, match="missing"):
        imp.set_rewind({k: v for k, v in state.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        imp.set_rewind({**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape of 0.bias"):
        imp.set_rewind({**state, "0.bias": torch.zeros(3)})
    imp.set_rewind(None)
    assert imp.rewind is imp.theta0


def test_probe_shares_the_rewind_point():
    net = tiny()
    imp = IMP(net, build("mask0"), IMPConfig(**CFG))
    imp.set_rewind(theta_k(imp))
    train_by_hand(net)
    probe = imp.probe(build("mask1"), 0.15)
    probe.advance(1)
    close(probe.model[0].weight, [[C1, -C1, -C1], [0, -C1, C1]])  # as test_mask1_and_lth_rewind_to_theta_k
    close(net[0].weight, [[0.9, 0.05, -0.3], [0.02, 0.12, 0.8]])  # the run itself is untouched
    assert isinstance(probe.model, nn.Sequential) and probe.model is not net
