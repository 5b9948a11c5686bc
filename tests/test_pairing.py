"""Pairing: runs with the same seed share theta0 and the data order exactly, whatever the strategy and phi."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from phicenter import data, models
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import STRATEGIES, build

CONF = Path(__file__).resolve().parents[1] / "conf"


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name, shape", [("fc_lot", (1, 8, 8)), ("conv2", (3, 8, 8))])
@pytest.mark.parametrize("init", ["torch_default", "kaiming_normal"])
def test_same_seed_same_theta0(name, shape, init):
    a = models.build(name, shape, 10, init=init, seed=3).state_dict()
    b = models.build(name, shape, 10, init=init, seed=3).state_dict()
    c = models.build(name, shape, 10, init=init, seed=4).state_dict()
    assert states_equal(a, b)
    assert not states_equal(a, c)


def test_build_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.build("fc_lot", (1, 8, 8), 10, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_theta0_identical_across_strategies_and_phi():
    thetas = []
    for name in sorted(STRATEGIES):
        for phi, scale in ((0.0, "absolute"), (-1e-3, "absolute"), (0.5, "layer_std")):
            net = models.build("fc_lot", (1, 8, 8), 10, seed=7)
            imp = IMP(net, build(name), IMPConfig(phi=phi, phi_scale=scale, seed=7))
            thetas.append(imp.theta0)
    assert len(thetas) == 3 * len(STRATEGIES)
    assert all(states_equal(thetas[0], t) for t in thetas[1:])


def test_theta0_identical_through_the_hydra_config():
    from tests.cli import compose_config

    from phicenter.engine import build

    splits = SimpleNamespace(input_shape=(1, 8, 8), num_classes=10)
    thetas = []
    for overrides in (
        ["strategy=mask0", "phi=0"],
        ["strategy=mask1", "phi=-1e-3"],
        ["strategy=gradual", "phi=5e-5"],
        ["strategy=standard", "phi=0.1"],
    ):
        cfg = compose_config(*overrides + ["seed=2"])
        net = build.build_model(cfg, splits)
        imp = build.build_imp(cfg, net)
        thetas.append(imp.theta0)
    other = build.build_model(compose_config("seed=3"), splits).state_dict()
    assert all(states_equal(thetas[0], t) for t in thetas[1:])
    assert not torch.equal(other["fc1.weight"], thetas[0]["fc1.weight"])


def make_batches(seed=7, shuffle=True, augment=False):
    # 50 samples; label = sample index, so the labels of a batch say which samples it holds
    x = torch.arange(50 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).view(50, 3, 4, 4)
    y = torch.arange(50)
    return data.Batches(
        x, y, torch.full((3,), 0.5), torch.full((3,), 0.25), batch_size=8, shuffle=shuffle, augment=augment, seed=seed
    )


def epoch(b, round_index, ep):
    b.set_epoch(round_index, ep)
    return list(b)


def same(e1, e2):
    return len(e1) == len(e2) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(e1, e2))


@pytest.mark.parametrize("augment", [False, True])
def test_batches_paired_by_seed_round_epoch(augment):
    ref = epoch(make_batches(augment=augment), 1, 2)
    # 50 samples, batch 8: 7 batches (6 full + 2 left over), every sample once
    assert [len(yb) for _, yb in ref] == [8] * 6 + [2]
    assert sorted(torch.cat([yb for _, yb in ref]).tolist()) == list(range(50))
    # a second Batches object with the same seed, round and epoch: identical batches (images and labels)
    assert same(epoch(make_batches(augment=augment), 1, 2), ref)
    # another epoch, round or seed: another order
    order = torch.cat([yb for _, yb in ref])
    for b, r, e in (
        (make_batches(augment=augment), 1, 3),
        (make_batches(augment=augment), 2, 2),
        (make_batches(seed=8, augment=augment), 1, 2),
    ):
        assert not torch.equal(torch.cat([yb for _, yb in epoch(b, r, e)]), order)


def test_batches_without_shuffle_keep_the_stored_order_and_normalise():
    b = make_batches(shuffle=False)
    first_x, first_y = next(iter(b))
    assert first_y.tolist() == list(range(8))
    # (uint8 / 255 - 0.5) / 0.25: sample 0's first pixel is 0 -> -2.0; its second pixel is 1 -> (1/255 - .5) * 4
    assert first_x[0, 0, 0, 0].item() == pytest.approx(-2.0)
    assert first_x[0, 0, 0, 1].item() == pytest.approx((1 / 255 - 0.5) * 4)
