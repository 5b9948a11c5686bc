"""The mask in force: pruned entries sit exactly at their fill value through optimizer steps (momentum, weight
decay, Adam moments), their gradients are zero, and standard's frozen trained values act in the forward pass.
A training step is backward, pruning.zero_dead_grads, the optimizer step, pruning.reapply_masks (what
CohortModule.training_step does; the last tests run that step itself).

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
from tests.cli import bare_trainer
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
    pruning.reapply_masks(net)


def pruned_model(name, **options):
    net = tiny()
    imp = IMP(net, build(name, **options), IMPConfig(phi=0.15, base=0.8, output_base=0.5))
    train_by_hand(net)
    imp.advance(1)
    return net, imp


X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
Y = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))


def steps(net, opt, n, masks=True):
    """n training steps; masks=False leaves out the two passes (what the optimizer alone would do)."""
    for _ in range(n):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        if masks:
            pruning.zero_dead_grads(net)
        opt.step()
        if masks:
            pruning.reapply_masks(net)


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.5),
    "adam_l2": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.5),
    "adam_fused_l2": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.5, fused=True),
}


def _fit(module, epochs: int, callback) -> None:
    """A bare Lightning fit of the module on its own training batches, the callback watching."""
    trainer = bare_trainer(epochs, callbacks=[callback])
    trainer.fit(module, train_dataloaders=module.train_batches)


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
    # ... and without the passes the same steps would have moved them (momentum, weight decay), so the check
    # above really tests that the mask is held, not "the optimizer happened to leave them alone"
    drift = copy.deepcopy(net)
    steps(drift, OPTIMIZERS[opt_name](drift.parameters()), 5, masks=False)
    assert not torch.equal(drift[2].weight[~KEEP2], fill2)


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fresh_optimizer_after_prune_standard_frozen(opt_name):
    # the real flow: a fresh optimizer per round; weight decay alone would shrink frozen raw values
    net, _ = pruned_model("standard")
    opt = OPTIMIZERS[opt_name](net.parameters())
    steps(net, opt, 5)
    assert net[0].weight[1, 0].item() == torch.tensor(0.02).item()
    assert torch.equal(net[2].weight[:, 1], torch.tensor([0.05, -0.01]))


def test_gradient_of_pruned_entries_is_zero():
    net, _ = pruned_model("standard")
    F.mse_loss(net(X), Y).backward()
    g1, g2 = pruning.raw_weight(net[0]).grad, pruning.raw_weight(net[2]).grad
    assert bool((g1[~KEEP1] != 0).any()) or bool((g2[~KEEP2] != 0).any())  # backward gives them one...
    alive = g1[KEEP1].clone(), g2[KEEP2].clone()
    pruning.zero_dead_grads(net)  # ... the step takes it away
    assert bool((g1[~KEEP1] == 0).all()) and bool((g2[~KEEP2] == 0).all())
    assert torch.equal(g1[KEEP1], alive[0]) and torch.equal(g2[KEEP2], alive[1])
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
    pruning.reapply_masks(zeroed)
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


# -- the engine's training step ---------------------------------------------------------------------------
ENGINE_OPTIMIZERS = {
    "adam": {"name": "adam", "lr": 1e-2, "fused": True},  # the re-application skipped
    "adam_wd": {"name": "adam", "lr": 1e-2, "weight_decay": 0.1, "fused": True},
    "adamw": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.5, "fused": True},
    "sgd_momentum_wd": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1},
}


def _pruned_fc_lot(strategy: str, seed: int):
    from phicenter import models

    net = models.build("fc_lot", (1, 8, 8), 10, seed=0)
    imp = IMP(net, build(strategy), IMPConfig(phi=0.0, base=0.5, seed=seed))
    with torch.no_grad():  # stand-in for a trained round 0: every weight moved a little
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.05)
    imp.advance(1)
    return net, imp


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("optim", sorted(ENGINE_OPTIMIZERS))
def test_training_step_holds_dead_weights(optim, k):
    """CohortModule.training_step (K = 1, and K = 2 on the stacked tensors): at every optimizer step the
    gradients of dead weights are zero, and after the fit every dead weight is exactly its fill (standard's
    trained values, mask0's zeros) while the alive ones trained; with Adam and no weight decay the fills are
    not re-applied after each step (nothing moved them), under weight decay they are."""
    import pytorch_lightning as pl

    from phicenter import data
    from phicenter.engine.module import CohortModule

    nets = [_pruned_fc_lot(s, seed=i)[0] for i, s in enumerate(["standard", "mask0"][:k])]
    before = [
        {
            n: (l.weight.detach().clone(), pruning.mask_of(l).mask.clone(), pruning.mask_of(l).fill.clone())
            for n, l in pruning.prunable_layers(net).items()
        }
        for net in nets
    ]
    module = CohortModule([copy.deepcopy(n) for n in nets] if k > 1 else nets, ENGINE_OPTIMIZERS[optim])
    s = data.load("synthetic", ".", val_size=20, n_train=200, n_test=20, shape=(1, 8, 8))
    module.train_batches = data.make_loaders(s, 20, seed=1, group=4)[0]
    dead_grads = []

    class Watch(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            def check(opt, args, kwargs):
                params, bufs = dict(pl_module.named_parameters()), dict(pl_module.named_buffers())
                for name, p in params.items():
                    mask = bufs.get(name + "_mask")
                    if mask is not None and p.grad is not None:
                        dead_grads.append(float(p.grad[~mask].abs().max()) if bool((~mask).any()) else 0.0)

            trainer.optimizers[0].register_step_pre_hook(check)

    _fit(module, 2, Watch())
    assert module._reapply == (optim != "adam")
    module.scatter()
    steps = 2 * data.make_loaders(s, 20, seed=1)[0].n_batches()
    assert len(dead_grads) == 3 * steps and max(dead_grads) == 0.0  # 3 layers, every step of 2 epochs
    for net, was in zip(module.nets, before):
        for name, layer in pruning.prunable_layers(net).items():
            w, keep, fill = was[name]
            assert torch.equal(pruning.mask_of(layer).mask, keep)
            assert 0 < int((~keep).sum()) < keep.numel()
            assert torch.equal(layer.weight.detach()[~keep], fill[~keep]), name
            assert not torch.equal(layer.weight.detach()[keep], w[keep]), name
    if k == 1:  # standard's fills are its trained values, not zeros
        assert bool((before[0]["fc1"][2][~before[0]["fc1"][1]] != 0).all())


# -- when the re-application can be skipped ---------------------------------------------------------------
STILL = {  # each: no weight decay, so a step leaves a zero-gradient entry exactly as it is
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=0.05, fused=True),
    "adam_foreach_amsgrad": lambda p: torch.optim.Adam(p, lr=0.05, foreach=True, amsgrad=True),
    "adam_maximize": lambda p: torch.optim.Adam(p, lr=0.05, maximize=True),
    "adamw_no_decay": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.0, fused=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5),
}
MOVING = {  # weight decay, or an optimizer not known to leave such entries alone
    "adam_l2": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-3),
    "adamw_default": lambda p: torch.optim.AdamW(p, lr=0.05),
    "sgd_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01),
}


@pytest.mark.parametrize("opt_name", sorted(STILL))
def test_still_optimizers_leave_dead_weights_exactly_where_they_are(opt_name):
    """What lets the training step skip the re-application: with dead gradients zeroed before every step since
    the optimizer was made, these steps leave every dead weight bit for bit as it was (standard's non-zero
    fills, and -0.0), alive ones train."""
    net, _ = pruned_model("standard")
    with torch.no_grad():
        net[0].weight[1, 0] = -0.0  # a dead entry at -0.0 (fill and weight)
        pruning.mask_of(net[0]).fill[1, 0] = -0.0
    opt = STILL[opt_name](net.parameters())
    assert not pruning.step_can_move_dead(opt)
    before = [net[k].weight.detach().clone() for k in (0, 2)]
    for _ in range(6):
        opt.zero_grad()
        F.mse_loss(net(X), Y).backward()
        pruning.zero_dead_grads(net)
        opt.step()
    for k, w, keep in ((0, before[0], KEEP1), (2, before[1], KEEP2)):
        now = net[k].weight.detach()
        assert torch.equal(now[~keep].view(torch.int32), w[~keep].view(torch.int32)), (opt_name, k)
        assert not torch.equal(now[keep], w[keep])
    assert torch.signbit(net[0].weight[1, 0])


@pytest.mark.parametrize("opt_name", sorted(MOVING))
def test_other_optimizers_need_the_reapplication(opt_name):
    net, _ = pruned_model("standard")
    opt = MOVING[opt_name](net.parameters())
    assert pruning.step_can_move_dead(opt)
    if opt_name != "rmsprop":  # weight decay moves a dead weight although its gradient is zero
        drift = copy.deepcopy(net)
        dopt = MOVING[opt_name](drift.parameters())
        for _ in range(3):
            dopt.zero_grad()
            F.mse_loss(drift(X), Y).backward()
            pruning.zero_dead_grads(drift)
            dopt.step()
        assert not torch.equal(drift[2].weight[~KEEP2], net[2].weight[~KEEP2])


def test_mask_written_mid_fit_is_held_from_then_on():
    """A mask written during a fit (here by a callback after the first epoch): the weights it kills had
    gradients, so Adam's moments hold them; the training step notices the write and re-applies the fills after
    every later step. The fit ends with every dead weight at its fill."""
    import pytorch_lightning as pl

    from phicenter import data
    from phicenter.engine.module import CohortModule

    net, _ = _pruned_fc_lot("mask0", seed=0)
    module = CohortModule([net], {"name": "adam", "lr": 1e-2, "fused": True})
    s = data.load("synthetic", ".", val_size=20, n_train=200, n_test=20, shape=(1, 8, 8))
    module.train_batches = data.make_loaders(s, 20, seed=1, group=4)[0]
    fc2 = pruning.mask_of(net.fc2)
    killed = fc2.mask.clone()
    killed[:10] = False
    seen = []

    class Prune(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(pl_module._reapply)
            if trainer.current_epoch == 0:
                fc2.mask.copy_(killed)

    _fit(module, 3, Prune())
    assert seen == [False, True, True]  # Adam without decay: skipped until the write
    assert bool((net.fc2.weight.detach()[~killed] == 0).all())
