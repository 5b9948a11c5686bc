"""The mask is enforced in the forward pass: pruned entries sit exactly at their fill value through optimizer
steps (momentum, weight decay, Adam moments), and standard's frozen trained values act in the forward pass.

Same tiny model and hand-set weights as test_strategies.py (see its docstring):
after one round with phi = 0.15, base 0.8, output_base 0.5,
    keep1 = [[1, 1, 1], [0, 1, 1]]   (pruned: trained 0.02)
    keep2 = [[1, 0], [1, 0]]         (pruned: trained 0.05 and -0.01 -- the whole second column)
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from phicenter.method import pruning
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import build

T1 = torch.tensor([[0.9, 0.05, -0.3], [0.02, 0.12, 0.8]])
T2 = torch.tensor([[-0.2, 0.05], [0.4, -0.01]])
TB1, TB2 = torch.tensor([0.5, 0.6]), torch.tensor([-0.7, 0.8])
C1, C2 = math.sqrt(0.1), math.sqrt(0.225)
KEEP1 = torch.tensor([[True, True, True], [False, True, True]])
KEEP2 = torch.tensor([[True, False], [True, False]])


def tiny():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.4, -0.2, 0.2], [-0.4, 0.1, 0.5]]))
        net[0].bias.copy_(torch.tensor([0.1, -0.1]))
        net[2].weight.copy_(torch.tensor([[0.3, -0.6], [0.0, 0.7]]))
        net[2].bias.copy_(torch.tensor([0.2, 0.3]))
    return net


def train_by_hand(net):
    with torch.no_grad():
        pruning.raw_weight(net[0]).copy_(T1)
        pruning.raw_weight(net[2]).copy_(T2)
        net[0].bias.copy_(TB1)
        net[2].bias.copy_(TB2)


def pruned_model(name, **options):
    net = tiny()
    imp = IMP(net, build(name, **options), IMPConfig(phi=0.15, base=0.8, output_base=0.5))
    train_by_hand(net)
    imp.advance(1)
    return net, imp


X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
Y = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))


def steps(net, opt, n):
    for _ in range(n):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        opt.step()


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", ["mask0", "standard"])
def test_pruned_entries_stay_at_fill_through_optimizer_steps(name, opt_name):
    net = tiny()
    imp = IMP(net, build(name), IMPConfig(phi=0.15, base=0.8, output_base=0.5))
    # one optimizer across the round boundary, stepped densely first: its momentum / Adam moments are
    # non-zero for the entries about to be pruned, so their raw values keep moving after the prune
    opt = OPTIMIZERS[opt_name](net.parameters())
    steps(net, opt, 3)
    train_by_hand(net)
    imp.advance(1)
    fill1 = {"mask0": torch.tensor(0.0), "standard": torch.tensor(0.02)}[name]
    fill2 = {"mask0": torch.tensor([0.0, 0.0]), "standard": torch.tensor([0.05, -0.01])}[name]
    before = {k: net[k].weight.detach().clone() for k in (0, 2)}
    steps(net, opt, 5)
    # exactly the fill value: mask0's zeros, standard's trained values
    assert torch.equal(net[0].weight[~KEEP1], fill1.view(1))
    assert torch.equal(net[2].weight[~KEEP2], fill2)
    # the survivors did train
    assert not torch.equal(net[0].weight[KEEP1], before[0][KEEP1])
    assert not torch.equal(net[2].weight[KEEP2], before[2][KEEP2])
    # ... and the raw tensor under the pruned entries moved (momentum / weight decay), so the check above
    # really tests the forward-pass mask, not "the optimizer happened to leave them alone"
    raw2 = pruning.raw_weight(net[2]).detach()
    assert not torch.equal(raw2[~KEEP2], fill2)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fresh_optimizer_after_prune_standard_frozen(opt_name):
    # the real flow: a fresh optimizer per round; weight decay alone would shrink frozen raw values
    net, _ = pruned_model("standard")
    opt = OPTIMIZERS[opt_name](net.parameters())
    steps(net, opt, 5)
    assert net[0].weight[1, 0].item() == torch.tensor(0.02).item()
    assert torch.equal(net[2].weight[:, 1], torch.tensor([0.05, -0.01]))


def test_gradient_of_pruned_raw_entries_is_zero():
    net, _ = pruned_model("standard")
    F.mse_loss(net(X), Y).backward()
    g1, g2 = pruning.raw_weight(net[0]).grad, pruning.raw_weight(net[2]).grad
    assert bool((g1[~KEEP1] == 0).all()) and bool((g2[~KEEP2] == 0).all())
    assert bool((g1[KEEP1] != 0).any()) and bool((g2[KEEP2] != 0).any())


def test_standard_frozen_weights_act_in_the_forward_pass():
    std, _ = pruned_model("standard")
    zero, _ = pruned_model("standard", pruned_fill="zero")
    x = torch.tensor([[1.0, 0.0, 0.0]])
    # standard: W1 = [[c1, -c1, -c1], [0.02, -c1, c1]], b1 = [0.5, 0.6] -> h = relu([c1 + 0.5, 0.62])
    #           W2 = [[-c2, 0.05], [c2, -0.01]],      b2 = [-0.7, 0.8]
    a = C2 * (C1 + 0.5)
    expected_std = torch.tensor([[-a + 0.05 * 0.62 - 0.7, a - 0.01 * 0.62 + 0.8]])
    # zero fill: h = relu([c1 + 0.5, 0.6]); W2 = [[-c2, 0], [c2, 0]]
    expected_zero = torch.tensor([[-a - 0.7, a + 0.8]])
    torch.testing.assert_close(std(x).detach(), expected_std, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(zero(x).detach(), expected_zero, rtol=1e-6, atol=1e-7)
    # the difference is exactly what the frozen weights contribute: [0.05 * 0.62, -0.01 * 0.62]
    torch.testing.assert_close((std(x) - zero(x)).detach(), torch.tensor([[0.031, -0.0062]]), rtol=0, atol=1e-6)


def test_standard_frozen_weights_unchanged_and_still_used_after_training():
    net, _ = pruned_model("standard")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    steps(net, opt, 5)
    assert net[0].weight[1, 0].item() == torch.tensor(0.02).item()
    assert torch.equal(net[2].weight[:, 1], torch.tensor([0.05, -0.01]))
    # the same network with the frozen entries zeroed differs, by exactly their contribution:
    # column 1 of W2 is entirely frozen, so out_std - out_zero = [0.05, -0.01] * relu(0.02 + b1[1])
    # (with x = [1, 0, 0], hidden unit 1 gets 0.02 * 1 + b1[1] in the standard net, b1[1] in the zeroed one,
    # and only column 1 of W2, the frozen one, reads hidden unit 1)
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        for k in (0, 2):
            pruning.mask_of(zeroed[k]).fill.zero_()
    x = torch.tensor([[1.0, 0.0, 0.0]])
    b11 = net[0].bias[1].item()
    expected = torch.tensor([[0.05, -0.01]]) * max(0.02 + b11, 0.0)
    assert expected.abs().min() > 0
    torch.testing.assert_close((net(x) - zeroed(x)).detach(), expected, rtol=0, atol=1e-6)


def test_masks_and_fills_survive_a_state_dict_round_trip():
    net, _ = pruned_model("standard")
    state = copy.deepcopy(net.state_dict())
    fresh = tiny()
    pruning.attach_masks(fresh)
    fresh.load_state_dict(state)
    for k in (0, 2):
        assert torch.equal(fresh[k].weight, net[k].weight)
        assert torch.equal(pruning.mask_of(fresh[k]).mask, pruning.mask_of(net[k]).mask)
    assert fresh[2].weight[0, 1].item() == torch.tensor(0.05).item()
