"""sign_transfer (Oh, Baik & Lee, 2025): the transfer of a signed mask, AWS, stage 1 as lrr's lineage, the round
key, and a whole run with its transfers recorded, resumed after a kill in the transfer fit.

The stage-1 net is tests/test_strategies.py's tiny Linear(3, 2) -> ReLU -> Linear(2, 2) after one lrr round
(phi = 0.15, base 0.8, output_base 0.5):
    trained on the mask:  W1 = [[0.9, 0.05, -0.3],    b1 = [0.5, 0.6]     keep1 = [[1, 1, 1], [0, 1, 1]]
                                [0,   0.12,  0.8]]
                          W2 = [[-0.2, 0], [0.4, 0]]   b2 = [-0.7, 0.8]    keep2 = [[1, 0], [1, 0]]
    signs(W1, 0.15) on the mask: [[+, -, -], [., -, +]]   (0.05 and 0.12 lie in the dead zone (0, 0.15))
    signs(W2, 0.15) on the mask: [[-, .], [+, .]]
    bias signs (at 0): b1 [+, +], b2 [-, +]

The transfer's initialisation (the transfer seed's magnitudes, set by hand):
    S1 = [[-0.3, 0.6, 0.1], [0.25, -0.05, -0.7]]   s1 = [-0.2, 0.4]
    S2 = [[0.5, -0.1], [-0.8, 0.9]]                s2 = [0.05, -0.6]
so the transferred net is
    [[0.3, -0.6, -0.1], [0, -0.05, 0.7]]   [0.2, 0.4]
    [[-0.5, 0], [0.8, 0]]                  [-0.05, 0.6]
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.cli import TINY_IMAGES, compose_config
from tests.faults import counted, die_at_validation
from tests.test_strategies import CFG, KEEP1, KEEP2, TB1, TB2, close, one_round, tiny, train_by_hand
from torch import nn

from phicenter.config import settings
from phicenter.config.groups import MultiStepOptions, NoOptions
from phicenter.engine import build, loop
from phicenter.engine import transfer as engine_transfer
from phicenter.engine.module import CohortModule
from phicenter.engine.reuse import RoundKeys, training_settings
from phicenter.method import aws, polarity, pruning, seeding, transfer
from phicenter.method.imp import IMP, IMPConfig
from phicenter.method.strategies import build as strategy

ROOT = Path(__file__).resolve().parents[1]
S1 = torch.tensor([[-0.3, 0.6, 0.1], [0.25, -0.05, -0.7]])
SB1 = torch.tensor([-0.2, 0.4])
S2 = torch.tensor([[0.5, -0.1], [-0.8, 0.9]])
SB2 = torch.tensor([0.05, -0.6])


def transfer_init() -> nn.Sequential:
    net = tiny()
    with torch.no_grad():
        net[0].weight.copy_(S1)
        net[0].bias.copy_(SB1)
        net[2].weight.copy_(S2)
        net[2].bias.copy_(SB2)
    return net


# ---------------------------------------------------------------- the transfer (method.transfer)


def test_stage_one_boundary_is_lrrs():
    a, _, da = one_round("lrr")
    b, _, db = one_round("sign_transfer")
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert da == db  # phi acts only in the transfer: nothing re-signed at the boundary
    assert strategy("sign_transfer").transfers and not strategy("lrr").transfers
    assert not strategy("sign_rewind").transfers


def test_transfer_puts_the_signs_on_the_transfer_inits_magnitudes():
    net, imp, _ = one_round("sign_transfer")
    signed = transfer.signed_mask(imp.layers, imp.phis)
    assert torch.equal(signed.masks["0"], KEEP1) and torch.equal(signed.masks["2"], KEEP2)
    moved = transfer_init()
    init = {n: l.weight.detach().clone() for n, l in pruning.prunable_layers(moved).items()}
    transfer.transfer(moved, signed)
    close(moved[0].weight, [[0.3, -0.6, -0.1], [0, -0.05, 0.7]])
    close(moved[2].weight, [[-0.5, 0], [0.8, 0]])
    close(moved[0].bias, [0.2, 0.4])
    close(moved[2].bias, [-0.05, 0.6])
    assert torch.equal(pruning.mask_of(moved[0]).mask, KEEP1) and torch.equal(pruning.mask_of(moved[2]).mask, KEEP2)
    assert not pruning.mask_of(moved[0]).fill.any()
    with torch.no_grad():  # the mask holds whatever the optimizer does to the weight
        pruning.raw_weight(moved[0]).fill_(5.0)
    pruning.reapply_masks(moved)
    close(moved[0].weight, [[5, 5, 5], [0, 5, 5]])
    # the stage-1 net is untouched
    close(net[0].weight, [[0.9, 0.05, -0.3], [0, 0.12, 0.8]])
    assert torch.equal(net[0].bias, TB1) and torch.equal(net[2].bias, TB2)

    d = transfer.diagnostics(imp.layers, imp.phis, signed, init)
    l0, l2 = d["layers"]["0"], d["layers"]["2"]
    # layer 0: phi re-signed 0.05 and 0.12; transferred [+, -, -, -, +] vs init [-, +, +, -, -]: 4 differ
    assert (l0["survivors"], l0["flipped_by_phi_count"], l0["flipped_vs_init_count"], l0["dead_zone_count"]) == (
        5,
        2,
        4,
        2,
    )
    # layer 2: [-, +] vs init [+, -]: 2 differ; nothing in the dead zone
    assert (l2["survivors"], l2["flipped_by_phi_count"], l2["flipped_vs_init_count"], l2["dead_zone_count"]) == (
        2,
        0,
        2,
        0,
    )
    assert l0["critical_phi_pos"] == pytest.approx(0.05) and l0["critical_phi_neg"] == pytest.approx(-0.3)
    assert l2["critical_phi_pos"] == pytest.approx(0.4) and l2["critical_phi_neg"] == pytest.approx(-0.2)
    assert d["flipped_by_phi"] == pytest.approx(2 / 7) and d["flipped_vs_init"] == pytest.approx(6 / 7)


def test_transfer_at_phi_zero_and_a_negative_phi():
    # phi = 0: 0.05 and 0.12 keep their + sign; phi = -0.25: also -0.2 turns +, -0.3 stays -
    _, imp0, _ = one_round("sign_transfer", cfg=dict(CFG, phi=0.0))
    moved = transfer.transfer(transfer_init(), transfer.signed_mask(imp0.layers, imp0.phis))
    close(moved[0].weight, [[0.3, 0.6, -0.1], [0, 0.05, 0.7]])
    _, imp1, _ = one_round("sign_transfer", cfg=dict(CFG, phi=-0.25))
    moved = transfer.transfer(transfer_init(), transfer.signed_mask(imp1.layers, imp1.phis))
    close(moved[2].weight, [[0.5, 0], [0.8, 0]])


def test_transfer_leaves_normalisation_layers_at_their_init():
    def bn_net():
        net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
        with torch.no_grad():
            net[0].weight.copy_(torch.tensor([[0.4, -0.3], [0.2, 0.1]]))
            net[2].weight.copy_(torch.tensor([[-0.5, 0.6], [0.7, -0.8]]))
        return net

    trained = bn_net()
    imp = IMP(trained, strategy("sign_transfer"), IMPConfig(phi=0.0))
    with torch.no_grad():
        trained[1].weight.copy_(torch.tensor([3.0, -2.0]))
        trained[1].bias.copy_(torch.tensor([1.0, 1.5]))
        trained[1].running_mean.copy_(torch.tensor([0.7, -0.7]))
    moved = bn_net()
    with torch.no_grad():
        moved[1].weight.copy_(torch.tensor([0.9, 1.1]))  # "its init"
        moved[1].running_var.copy_(torch.tensor([2.0, 4.0]))
    before = {k: v.clone() for k, v in moved[1].state_dict().items()}
    transfer.transfer(moved, transfer.signed_mask(imp.layers, imp.phis))
    for k, v in moved[1].state_dict().items():
        assert torch.equal(v, before[k]), k
    close(moved[0].weight, [[0.4, -0.3], [0.2, 0.1]])  # same signs, same magnitudes
    close(moved[2].weight, [[-0.5, 0.6], [0.7, -0.8]])


def test_transfer_refuses_another_architecture():
    _, imp, _ = one_round("sign_transfer")
    signed = transfer.signed_mask(imp.layers, imp.phis)
    with pytest.raises(ValueError, match="covers layers"):
        transfer.transfer(nn.Sequential(nn.Linear(3, 2)), signed)
    with pytest.raises(ValueError, match="shape"):
        transfer.transfer(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 3)), signed)


def sign_transfer_level_one():
    """A sign_transfer run at its first level (transfer seed 7, phi 0.1), its "trained" weights moved by hand so
    that signs changed and some survivors lie in (0, phi): (cfg, splits, net, imp, member)."""
    cfg = compose_config(
        "dataset=synthetic",
        "dataset.n_train=60",
        "dataset.n_test=20",
        "dataset.val_size=20",
        "strategy=sign_transfer",
        "strategy.transfer_seed=7",
        "phi=0.1",
    )
    splits = build.load_data(cfg)
    net = build.build_model(cfg, splits)
    imp = build.build_imp(cfg, net)
    with torch.no_grad():
        for layer in imp.layers.values():
            pruning.raw_weight(layer).mul_(-3.0).add_(0.005)
    imp.advance(1)
    return cfg, splits, net, imp, SimpleNamespace(settings=settings(cfg), imp=imp)


def test_the_transferred_net_carries_the_transfer_seeds_magnitudes():
    """engine.transfer.transferred_net: |theta of the transfer seed| with signs(trained, phi) on the mask."""
    cfg, splits, net, imp, member = sign_transfer_level_one()
    assert engine_transfer.transfer_seed(cfg) == 7
    moved, diag = engine_transfer.transferred_net(member, 7, splits)
    fresh = build.build_model(cfg, splits, seed=7)
    own = build.build_model(cfg, splits)
    for name, layer in pruning.prunable_layers(moved).items():
        keep = pruning.mask_of(imp.layers[name]).mask
        want = torch.where(
            keep,
            dict(fresh.named_modules())[name].weight.abs() * polarity.signs(imp.layers[name].weight, 0.1),
            torch.zeros(()),
        )
        assert torch.equal(layer.weight, want), name
        assert not torch.equal(
            dict(own.named_modules())[name].weight.abs(), dict(fresh.named_modules())[name].weight.abs()
        )
    assert diag["survivors"] == sum(int(pruning.mask_of(l).mask.sum()) for l in imp.layers.values())
    assert diag["dead_zone_count"] > 0
    assert engine_transfer.transfer_seed(compose_config("strategy=sign_transfer", "seed=4")) == 5  # default: seed + 1


def test_dry_run_counts_what_a_transfer_would_resign():
    """dry_run=phi for sign_transfer: signs(trained, phi) on round 1's mask (mask0's count), not lrr's zero."""
    from phicenter.method import dryrun

    net = tiny()
    imp = IMP(net, strategy("mask0"), IMPConfig(**CFG))
    train_by_hand(net)
    rows = {
        r["strategy"]: r for r in dryrun.phi_table(imp, phis=[0.15], strategy_names=["sign_transfer", "mask0", "lrr"])
    }
    assert rows["sign_transfer"]["flipped_by_phi_count"] == rows["mask0"]["flipped_by_phi_count"] == 2  # 0.05, 0.12
    assert rows["sign_transfer"]["dead_zone_count"] == 2 and rows["sign_transfer"]["survivors"] == 7
    assert rows["lrr"]["flipped_by_phi_count"] == 0


# ---------------------------------------------------------------- AWS (method.aws)


def test_towards_identity_by_hand():
    params = {"bn.weight": torch.tensor([2.0, -1.0]), "bn.bias": torch.tensor([0.5, -4.0])}
    names = {"bn.weight": "gamma", "bn.bias": "beta"}
    out = aws.towards_identity(params, names, 0.25)
    close(out["bn.weight"], [1.75, -0.5])  # 0.25 + 0.75 * gamma
    close(out["bn.bias"], [0.375, -3.0])  # 0.75 * beta
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    out = aws.towards_identity(stacked, names, 0.5, on=torch.tensor([False, True]))
    assert torch.equal(out["bn.weight"][0], stacked["bn.weight"][0])  # a variant without AWS: as it is
    close(out["bn.weight"][1], [2.5, -0.5])  # 0.5 + 0.5 * [4, -2]
    close(out["bn.bias"][1], [0.5, -4.0])  # 0.5 * [1, -8]
    assert aws.affine_names(
        nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.LayerNorm(2), nn.BatchNorm1d(2, affine=False))
    ) == {"1.weight": "gamma", "1.bias": "beta", "2.weight": "gamma", "2.bias": "beta"}


def test_alpha_is_drawn_per_batch_reproducibly():
    a = aws.Alphas(3)
    a.start(1, 0)
    first, second = a.next(), a.next()
    g = seeding.generator(3, "aws", 1, 0)
    assert (first, second) == tuple(float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(2))
    assert first != second and 0 <= first < 1 and 0 <= second < 1
    b = aws.Alphas(3)
    b.start(1, 0)
    assert (b.next(), b.next()) == (first, second)  # from the seed alone
    b.start(1, 1)
    assert b.next() != first  # each epoch has its own draws
    with pytest.raises(RuntimeError, match="start"):
        aws.Alphas(0).next()


def _bn_module(k: int = 1, on=(True,)):
    """Logits = BatchNorm1d(2)(x) with gamma = [2, -1], beta = [0.5, -4]; K copies stacked when k > 1."""
    nets = []
    for _ in range(k):
        net = nn.Sequential(nn.BatchNorm1d(2))
        with torch.no_grad():
            net[0].weight.copy_(torch.tensor([2.0, -1.0]))
            net[0].bias.copy_(torch.tensor([0.5, -4.0]))
        nets.append(net)
    module = CohortModule(
        nets,
        {"name": "sgd", "lr": 0.1},
        impl="loop",
        device="cpu",
        aws=engine_transfer.AWSTraining(5, list(on), aws.affine_names(nets[0])),
    )
    return module, nets


def test_aws_moves_each_training_batch_and_leaves_evaluation_alone():
    module, (net,) = _bn_module()
    module.train()
    module.aws.start(0, 0)
    g = seeding.generator(5, "aws", 0, 0)
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0]])  # batch statistics: normalised to [[-1, -1], [1, 1]]
    y = torch.tensor([0, 1])
    xhat = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    for _ in range(2):  # two batches, two alphas
        alpha = float(torch.rand((), generator=g, dtype=torch.float64))
        logits, _, _ = module._losses(x, y, train=True)
        gamma = alpha + (1 - alpha) * torch.tensor([2.0, -1.0])
        beta = (1 - alpha) * torch.tensor([0.5, -4.0])
        torch.testing.assert_close(logits.detach(), gamma * xhat + beta, rtol=0, atol=1e-4)
    assert torch.equal(net[0].weight.detach(), torch.tensor([2.0, -1.0]))  # the layer's own parameters stay
    logits, loss, _ = module._losses(x, y, train=True)
    loss.backward()
    assert net[0].weight.grad is not None and net[0].bias.grad is not None  # ... and get the gradient
    module.eval()
    plain = nn.Sequential(nn.BatchNorm1d(2))
    plain.load_state_dict(net.state_dict())
    plain.eval()
    logits, _, _ = module._losses(x, y)  # validation and test: the plain layers
    assert torch.equal(logits, plain(x))
    module.train()
    logits, _, _ = module._losses(x, y)  # a forward that is not a training step: plain
    plain.train()
    assert torch.equal(logits.detach(), plain(x).detach())


def test_aws_in_a_stacked_cohort_moves_only_its_variants():
    module, nets = _bn_module(k=2, on=(True, False))
    module.train()
    module.aws.start(0, 0)
    alpha = float(torch.rand((), generator=seeding.generator(5, "aws", 0, 0), dtype=torch.float64))
    x = torch.tensor([[1.0, 10.0], [3.0, 14.0]])
    logits, _, _ = module._losses(x, torch.tensor([0, 1]), train=True)
    xhat = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    want = (alpha + (1 - alpha) * torch.tensor([2.0, -1.0])) * xhat + (1 - alpha) * torch.tensor([0.5, -4.0])
    torch.testing.assert_close(logits[0].detach(), want, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        logits[1].detach(), torch.tensor([2.0, -1.0]) * xhat + torch.tensor([0.5, -4.0]), rtol=0, atol=1e-4
    )
    assert module.stack.transform is None


def test_aws_needs_normalisation_layers_and_a_variant_that_asks():
    members = [
        SimpleNamespace(settings=settings(compose_config("strategy=sign_transfer", f"strategy.aws={a}")))
        for a in ("true", "false")
    ]
    assert engine_transfer.AWSTraining.of(members, [tiny()]) is None  # no normalisation layer
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert engine_transfer.AWSTraining.of(members[1:], [bn]) is None  # aws=false
    got = engine_transfer.AWSTraining.of(members, [bn])
    assert got.on.tolist() == [True, False] and got.names == {"1.weight": "gamma", "1.bias": "beta"}


# ---------------------------------------------------------------- the round key


def test_aws_is_in_the_round_key_and_the_transfer_seed_is_not():
    lrr = training_settings(compose_config("strategy=lrr"))
    plain = training_settings(compose_config("strategy=sign_transfer"))
    assert plain == lrr and "strategy.aws" not in plain
    assert training_settings(compose_config("strategy=sign_transfer", "strategy.transfer_seed=9")) == lrr
    with_aws = training_settings(compose_config("strategy=sign_transfer", "strategy.aws=true"))
    assert with_aws == {**lrr, "strategy.aws": True}

    def key(*o):
        cfg = compose_config("dataset=synthetic", "dataset.n_train=60", "dataset.n_test=20", "dataset.val_size=20", *o)
        splits = build.load_data(cfg)
        return RoundKeys(cfg, splits, "cpu")(build.build_model(cfg, splits), 0)

    assert key("strategy=lrr") == key("strategy=sign_transfer") != key("strategy=sign_transfer", "strategy.aws=true")


# ---------------------------------------------------------------- whole runs

RUN = ["dataset=digits", "epochs=2", "prune.iterations=2", "threads=1", "phi=0.001", "round_store.enabled=false"]


def _stage_one(res: dict) -> list:
    return [
        (
            r["round"],
            r["round_key"],
            r["sparsity"],
            r["train_loss"],
            r["val_acc"],
            r["test_acc"],
            r["epochs"],
            r["flipped_vs_init"],
        )
        for r in res["rounds"]
    ]


def _without_seconds(res: dict) -> list:
    out = []
    for r in res["rounds"]:
        r = {k: v for k, v in r.items() if k != "seconds"}
        if r.get("transfer"):
            r["transfer"] = {k: v for k, v in r["transfer"].items() if k != "seconds"}
        out.append(r)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sign_transfer")
    return {
        name: loop.run(compose_config(*RUN, f"strategy={name}"), d / name) | {"dir": d / name}
        for name in ("lrr", "sign_transfer")
    }


def test_stage_one_rounds_are_lrrs_bit_for_bit(runs):
    assert _stage_one(runs["sign_transfer"]) == _stage_one(runs["lrr"])
    assert all("transfer" not in r for r in runs["lrr"]["rounds"])


def test_a_run_records_each_rounds_transfer(runs):
    res = runs["sign_transfer"]
    assert res["status"] == "complete" and res["transfer_seed"] == 1
    rounds = res["rounds"]
    assert rounds[0]["transfer"] is None  # the dense round: nothing to transfer
    for r in rounds[1:]:
        t = r["transfer"]
        assert t["seed"] == 1 and t["diverged"] is None
        assert [e["epoch"] for e in t["epochs"]] == [0, 1] and all(e["round"] == r["round"] for e in t["epochs"])
        assert 0.5 < t["val_acc"] <= 1 and 0.5 < t["test_acc"] <= 1 and t["val_acc"] == t["epochs"][-1]["val_acc"]
        assert (t["val_acc"], t["test_acc"]) != (r["val_acc"], r["test_acc"])  # another network
        assert t["survivors"] == round((1 - r["sparsity"]) * res["model_parameters"]["prunable"])
        assert t["layers"].keys() == r["layers"].keys() == {"fc1", "fc2", "out"}
        assert 0.3 < t["flipped_vs_init"] < 0.7  # the trained signs against a fresh draw's: about half
    # the report: the transferred accuracy beside stage 1's
    from tests.test_report import read_csv

    from phicenter.analysis import report

    out = res["dir"] / "report"
    report.report([res["dir"].parent], out)
    rows = {row["strategy"]: row for row in read_csv(out / "runs.csv")}
    assert rows["sign_transfer"]["transfer_test_acc"] == f"{100 * rounds[-1]['transfer']['test_acc']:.4f}"
    assert rows["sign_transfer"]["test_acc"] == f"{100 * rounds[-1]['test_acc']:.4f}"
    assert rows["lrr"]["transfer_test_acc"] == ""
    table = read_csv(out / "table__digits.csv")[0]
    assert table["sign_transfer"].startswith(f"{100 * rounds[-1]['transfer']['test_acc']:.2f} (0.001)")


def test_the_transfer_recipe_defaults_to_the_runs_own():
    run = compose_config("strategy=sign_transfer", "epochs=4", "schedule.name=multistep", "+schedule.at=[0.25]")
    assert engine_transfer.transfer_recipe(run) == (4, MultiStepOptions(name="multistep", at=(0.25,), gamma=0.1))
    oh = compose_config(
        "strategy=sign_transfer", "epochs=4", "strategy.transfer_epochs=100", "strategy.transfer_schedule=multistep"
    )
    # LR / 10 at 50 % and 75 %: the schedule's declared defaults
    assert engine_transfer.transfer_recipe(oh) == (100, MultiStepOptions(name="multistep", at=(0.5, 0.75), gamma=0.1))
    same = compose_config("strategy=sign_transfer", "schedule.name=cosine", "strategy.transfer_schedule=cosine")
    assert engine_transfer.transfer_recipe(same)[1] == NoOptions(name="cosine")
    assert compose_config("experiment=oh_sign_transfer_resnet20_cifar10").strategy.transfer_epochs == 100


def test_a_transfer_trains_its_own_epochs_and_stage_one_stays_lrrs(runs, tmp_path):
    """strategy.transfer_epochs=3 with the run's 2 epochs: each round's transfer records 3 epochs (multistep: the LR
    divided by 10 from epoch 2 on); stage 1 is the same run's to the bit."""
    res = loop.run(
        compose_config(
            *RUN, "strategy=sign_transfer", "strategy.transfer_epochs=3", "strategy.transfer_schedule=multistep"
        ),
        tmp_path / "run",
    )
    assert res["status"] == "complete"
    assert _stage_one(res) == _stage_one(runs["sign_transfer"])
    for r, own in zip(res["rounds"][1:], runs["sign_transfer"]["rounds"][1:]):
        assert [e["epoch"] for e in r["transfer"]["epochs"]] == [0, 1, 2]
        # the LR first steps down at epoch 2 (round(0.5 x 3)): epochs 0 and 1 are the 2-epoch transfer's, to the bit
        assert r["transfer"]["epochs"][:2] == own["transfer"]["epochs"]


def test_transfer_events_reach_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["sign_transfer"]["dir"] / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"transfer/val_acc", "transfer/test_acc", "transfer_epoch/train_loss", "transfer_epoch/val_acc"} <= tags
    assert [e.step for e in acc.Scalars("transfer/test_acc")] == [3, 5]  # rounds 1 and 2, 2 epochs each
    assert [e.value for e in acc.Scalars("transfer/test_acc")] == pytest.approx(
        [r["transfer"]["test_acc"] for r in runs["sign_transfer"]["rounds"][1:]]
    )


def test_a_kill_in_the_transfer_fit_redoes_at_most_that_fit(runs, tmp_path, monkeypatch):
    cfg = compose_config(*RUN, "strategy=sign_transfer")
    calls = die_at_validation(monkeypatch, 6)  # round 0: 2, round 1: 2, its transfer: epoch 0, then this one
    with pytest.raises(loop.CohortFailed):
        loop.run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "round_001_transfer_epochs" / "last.ckpt").exists()
    counted(monkeypatch, calls)
    res = loop.run(cfg, tmp_path)
    # the transfer resumed after its epoch 0 (1 validation); round 2 and its transfer: 2 + 2
    assert calls["n"] == 5
    assert _without_seconds(res) == _without_seconds(runs["sign_transfer"])
    assert not list((tmp_path / "checkpoints").glob("*_epochs"))


def test_sign_transfer_variants_in_a_cohort_match_their_runs_alone(runs, tmp_path):
    """A cohort of sign_transfer at two phi values and lrr: stage 1 trained once (one lineage), each transfer
    its own; the phi = 0.001 variant is the run alone, bit for bit."""
    from phicenter.engine.cohort import make_variants

    base = compose_config(*RUN, "strategy=sign_transfer")
    vs = make_variants(base, [0.0, 0.001], [base.strategy, compose_config("strategy=lrr").strategy])
    out = loop.train(vs, tmp_path)
    alone = runs["sign_transfer"]
    packed = out["phi=0.001,strategy=sign_transfer"]
    assert _stage_one(packed) == _stage_one(alone)
    assert [r["transfer"] and {k: v for k, v in r["transfer"].items() if k != "seconds"} for r in packed["rounds"]] == [
        r["transfer"] and {k: v for k, v in r["transfer"].items() if k != "seconds"} for r in alone["rounds"]
    ]
    assert _stage_one(out["phi=0.001,strategy=lrr"]) == _stage_one(runs["lrr"])
    other = out["phi=0.0,strategy=sign_transfer"]
    assert [r["round_key"] for r in other["rounds"]] == [r["round_key"] for r in alone["rounds"]]
    assert math.isfinite(other["rounds"][-1]["transfer"]["test_acc"])


def test_aws_changes_stage_one_on_a_net_with_batchnorm(tmp_path):
    common = [
        "experiment=cifar10_resnet20",
        *TINY_IMAGES,
        "epochs=1",
        "prune.iterations=1",
        "threads=1",
        "strategy=sign_transfer",
        "round_store.enabled=false",
        "dataset.augment=false",
    ]
    off = loop.run(compose_config(*common), tmp_path / "off")
    on = loop.run(compose_config(*common, "strategy.aws=true"), tmp_path / "on")
    assert on["rounds"][0]["train_loss"] != off["rounds"][0]["train_loss"]
    assert on["rounds"][0]["round_key"] != off["rounds"][0]["round_key"]
    assert on["rounds"][1]["transfer"]["seed"] == 1 and math.isfinite(on["rounds"][1]["transfer"]["test_acc"])
    again = loop.run(compose_config(*common, "strategy.aws=true"), tmp_path / "again")
    assert again["rounds"][0]["train_loss"] == on["rounds"][0]["train_loss"]  # alpha from the seed
