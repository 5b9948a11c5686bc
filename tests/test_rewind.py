"""Late rewinding (docs/method.md, "Late rewinding"): rounds >= 1 train from the rewind point to the end of round
0's schedule, with the schedule's LR there, a fresh optimizer and the data order of those epochs of that round.

The runs here: the synthetic dataset with 500 training samples in batches of 100, so 5 optimizer steps an
epoch; epochs = T = 4; SGD at lr 0.05 with momentum, multistep at [0.5, 0.75] of 4 epochs, i.e. milestones
after epochs 2 and 3 (round(0.5 * 4) = 2, round(0.75 * 4) = 3) with gamma 0.1. Round 0's LR by epoch is
therefore 0.05, 0.05, 0.05 * 0.1, 0.05 * 0.1 * 0.1 and it takes 4 * 5 = 20 steps. The round store is off
(round_store.enabled=false) except where its reuse is the subject.
"""

from __future__ import annotations

import logging

import pytest
import torch
from tests.cli import compose_config, train
from tests.faults import counted, die_at_validation
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from phicenter import data
from phicenter.config import ConfigError, settings
from phicenter.engine import loop, records
from phicenter.engine import module as cohort_module
from phicenter.engine import rundir as results
from phicenter.engine.cohort import Variant, variant_name
from phicenter.engine.module import make_optimizer
from phicenter.engine.rewinding import Plan
from phicenter.method import seeding

STEPS, T, BS = 5, 4, 100  # steps an epoch, epochs, batch size
LR = [0.05, 0.05, 0.05 * 0.1, 0.05 * 0.1 * 0.1]  # round 0's LR in epochs 0..3
SEED = 0


def config(*extra: str, strategy: str = "lth", phi: float = 0.0):
    return compose_config(
        *[
            "dataset=synthetic",
            "dataset.n_train=600",
            "dataset.n_test=100",
            f"batch_size={BS}",
            f"epochs={T}",
            "prune.iterations=1",
            "optim.name=sgd",
            "optim.lr=0.05",
            "+optim.momentum=0.9",
            "schedule.name=multistep",
            "+schedule.at=[0.5,0.75]",
            f"strategy={strategy}",
            f"phi={phi}",
            f"seed={SEED}",
            "threads=1",
            "round_store.enabled=false",
            "checkpoint.keep_all=true",
            *extra,
        ],
    )


class Steps:
    """Every training step of the runs trained while it is installed: (round, epoch of the schedule, x, y)
    from the module, and from the optimizer the LR it steps with, whether its state was empty before the
    step, and the net's state right after it."""

    def __init__(self, monkeypatch):
        self.rows, self.module = [], None
        real = cohort_module.CohortModule._losses

        def losses(module, x, y, **kwargs):
            if module.training:
                self.module = module
                self.rows.append({"round": module.round, "epoch": module.round_epoch, "x": x.clone(), "y": y.clone()})
            return real(module, x, y, **kwargs)

        def before(opt, args, kwargs):
            self.rows[-1].update(lr=opt.param_groups[0]["lr"], fresh=len(opt.state) == 0)

        def after(opt, args, kwargs):
            self.rows[-1]["state"] = {k: v.detach().clone() for k, v in self.module.net.state_dict().items()}

        monkeypatch.setattr(cohort_module.CohortModule, "_losses", losses)
        self.hooks = [register_optimizer_step_pre_hook(before), register_optimizer_step_post_hook(after)]

    def of(self, r: int) -> list[dict]:
        return [row for row in self.rows if row["round"] == r]

    def remove(self):
        for h in self.hooks:
            h.remove()


@pytest.fixture
def steps(monkeypatch):
    s = Steps(monkeypatch)
    yield s
    s.remove()


def order_batch(splits, r: int, e: int, b: int) -> torch.Tensor:
    """The labels of batch b of epoch e of round r, straight from the definition: the permutation seeded by
    (seed, "batches", r, e), batch b its samples b*BS .. (b+1)*BS - 1."""
    perm = torch.randperm(len(splits.y_train), generator=seeding.generator(SEED, "batches", r, e))
    return splits.y_train[perm[b * BS : (b + 1) * BS]]


def test_round_1_starts_at_epoch_k_with_its_lr_its_data_and_a_fresh_optimizer(tmp_path, steps, monkeypatch, caplog):
    """rewind.epoch=2: round 1 trains epochs 3..4 (0-based 2, 3), (4 - 2) * 5 = 10 steps, the first at epoch 2's
    LR 0.005 (a restarted schedule would give 0.05), from an optimizer with no state; each step's batch is
    the one set_epoch(1, e) defines; its history rows, TensorBoard steps and progress lines name epochs 2, 3."""
    tb = []
    monkeypatch.setattr(
        records.Recorder, "epoch", lambda self, row, step: tb.append((row["round"], row["epoch"], step))
    )
    with caplog.at_level(logging.INFO, logger="phicenter"):
        res = loop.run(config("rewind.epoch=2"), tmp_path)
    r0, r1 = steps.of(0), steps.of(1)

    assert len(r0) == T * STEPS == 20 and [row["lr"] for row in r0] == [lr for lr in LR for _ in range(STEPS)]
    # round 0's optimizer starts afresh right after step 10 = theta_2, as every later round does
    assert [i for i, row in enumerate(r0) if row["fresh"]] == [0, 10]
    theta_k = torch.load(tmp_path / results.THETA_K, weights_only=True)
    assert all(torch.equal(theta_k[k], r0[9]["state"][k]) for k in theta_k)

    assert len(r1) == (T - 2) * STEPS == 10
    assert [row["lr"] for row in r1] == [LR[2]] * 5 + [LR[3]] * 5 and r1[0]["lr"] == 0.05 * 0.1
    assert [row["fresh"] for row in r1] == [True] + [False] * 9
    assert [row["epoch"] for row in r1] == [2] * 5 + [3] * 5
    splits = loop.build.load_data(config())
    for i, row in enumerate(r1):
        assert torch.equal(row["y"], order_batch(splits, 1, 2 + i // STEPS, i % STEPS)), i

    assert [e["epoch"] for e in res["rounds"][1]["epochs"]] == [2, 3]
    assert [e["epoch"] for e in res["rounds"][0]["epochs"]] == [0, 1, 2, 3]
    assert tb == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 2, 6), (1, 3, 7)]  # step = round * T + epoch
    lines = [m for m in caplog.messages if m.startswith("round 1/1  epoch")]
    assert [m[: len("round 1/1  epoch 3/4")] for m in lines] == ["round 1/1  epoch 3/4", "round 1/1  epoch 4/4"]


def test_rewind_step_mid_epoch(tmp_path, steps):
    """rewind.step=12: theta_12 is round 0's state after its 12th step (epoch 2, after its batch 1); round 1
    starts at batch 12 mod 5 = 2 of epoch 12 // 5 = 2 at that epoch's LR 0.005, and trains 20 - 12 = 8 steps:
    batches 2, 3, 4 of epoch 2, then epoch 3, with augmentation as the whole epoch 2 would have drawn it."""
    res = loop.run(config("rewind.step=12", "dataset.augment=true"), tmp_path)
    r0, r1 = steps.of(0), steps.of(1)
    theta_s = torch.load(tmp_path / results.THETA_K, weights_only=True)
    assert all(torch.equal(theta_s[k], r0[11]["state"][k]) for k in theta_s)
    assert [i for i, row in enumerate(r0) if row["fresh"]] == [0, 12]

    assert len(r1) == 20 - 12 == 8
    assert [row["lr"] for row in r1] == [LR[2]] * 3 + [LR[3]] * 5
    assert [row["epoch"] for row in r1] == [2, 2, 2, 3, 3, 3, 3, 3] and r1[0]["fresh"]
    splits = loop.build.load_data(config())
    assert torch.equal(r1[0]["y"], order_batch(splits, 1, 2, 2))
    # against the whole epoch 2 of round 1 as Batches makes it (augmented): its batches 2.. are round 1's first
    whole = data.loaders(settings(config("dataset.augment=true")), splits, BS, SEED)[0]
    whole.set_epoch(1, 2)
    full = list(whole)
    assert len(full) == STEPS
    for row, (x, y) in zip(r1[:3], full[2:], strict=True):
        assert torch.equal(row["y"], y) and torch.equal(row["x"], x)
    assert [e["epoch"] for e in res["rounds"][1]["epochs"]] == [2, 3]


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_the_schedule_is_positioned_at_the_first_epoch():
    """make_optimizer(first_epoch=e) is round 0's schedule stepped e times: multistep at epoch 2 of 4 is
    0.05 * 0.1; cosine at epoch 2 of 4 is 0.05 * (1 + cos(pi / 2)) / 2 = 0.025."""
    p = [torch.nn.Parameter(torch.zeros(2))]
    multistep = {"name": "multistep", "at": [0.5, 0.75], "gamma": 0.1}
    opt, _ = make_optimizer(p, {"name": "sgd", "lr": 0.05}, multistep, 4, first_epoch=2)
    assert opt.param_groups[0]["lr"] == 0.05 * 0.1
    opt, _ = make_optimizer(p, {"name": "sgd", "lr": 0.05}, {"name": "cosine"}, 4, first_epoch=2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025, abs=1e-12)
    ref, sched = make_optimizer(p, {"name": "sgd", "lr": 0.05}, {"name": "cosine"}, 4)
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]  # the very floats round 0 steps with
    opt, _ = make_optimizer(p, {"name": "sgd", "lr": 0.05}, {"name": "none"}, 4, first_epoch=3)
    assert opt.param_groups[0]["lr"] == 0.05


def test_plan_by_hand():
    """T = 4 epochs of 4 steps, s = 6: rounds >= 1 start at (epoch 1, batch 2) and train 16 - 6 = 10 steps,
    4 - 1 = 3 fit epochs, 2.5 epochs of training; rounds 0..2 are 4 + 2 * 2.5 = 9 epochs."""
    p = Plan(4, 6, 4)
    assert p.start(0) == (0, 0) and p.start(1) == p.start(2) == (1, 2)
    assert (p.fit_epochs(0), p.fit_epochs(1)) == (4, 3) and (p.steps(0), p.steps(2)) == (16, 10)
    assert (p.first_batch(1, 1), p.first_batch(1, 2), p.first_batch(0, 0)) == (2, 0, 0)
    assert p.total(2) == 9.0
    assert p.position(0, 2.0) == 2.0 and p.position(1, 1.0) == 4.0  # round 1 before its start: 0 done in it
    assert p.position(1, 2.0) == 4.5 and p.position(2, 3.0) == 4 + 2.5 + 1.5
    assert Plan(4).total(2) == 12.0 and Plan(4).position(2, 1.0) == 9.0  # no rewinding: whole rounds
    cfg = config("rewind.epoch=1")
    assert Plan.of(cfg, 4, 5).step == 5 and Plan.of(config("rewind.step=19"), 4, 5).start(1) == (3, 4)
    with pytest.raises(ConfigError, match=r"rewind.step=20 is not inside round 0 \(4 epochs of 5 steps = 20 "):
        Plan.of(config("rewind.step=20"), 4, 5)


def test_spans_keep_the_groups_places():
    """5 batches in groups of 2 from batch 3: the items of a whole epoch ([0,1], [2,3], [4]), less batches
    0..2: (3, 0 batches), (3, 1), (4, 1)."""
    assert list(data.spans(5, 2, 3)) == [(3, 0), (3, 1), (4, 1)]
    assert list(data.spans(5, 2)) == [(0, 2), (2, 2), (4, 1)]
    assert list(data.spans(3, 1, 2)) == [(2, 0), (2, 0), (2, 1)]


@pytest.mark.parametrize("pipeline", ["fast", "torchvision"])
@pytest.mark.parametrize("group", [1, 3])
def test_an_epoch_from_batch_j_is_the_whole_epochs_batches_from_j(pipeline, group):
    """set_epoch(r, e, start=j): as many items as a whole epoch, holding exactly its batches j.. (augmented
    alike: the fast pipeline draws the left-out batches' augmentation)."""
    s = data.load("synthetic", ".", val_size=30, n_train=160, n_test=41, shape=(3, 8, 8), seed=0)
    whole, part = (data.make_loaders(s, 16, seed=3, augment=True, pipeline=pipeline, group=group)[0] for _ in range(2))
    whole.set_epoch(2, 1)
    part.set_epoch(2, 1, start=5)
    full = [b for item in whole for b in ([item] if group == 1 else list(item))]
    items = list(part)
    assert len(full) == 9 and len(items) == len(part) == len(whole)
    assert [len(i) for i in items] == ([0] * 5 + [1] * 4 if group == 1 else [0, 1, 3])
    got = [b for item in items for b in list(item)]
    assert len(got) == 4
    for (x1, y1), (x2, y2) in zip(full[5:], got, strict=True):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)
    part.set_epoch(2, 1)  # the next epoch starts whole again
    assert len([b for item in part for b in ([item] if group == 1 else list(item))]) == 9


def variants(setting: str, k: int) -> list[Variant]:
    combos = [("lth", 0.0), ("mask1", 0.02)][:k]
    return [Variant(variant_name(p, s) if k > 1 else "", config(setting, strategy=s, phi=p)) for s, p in combos]


@pytest.mark.parametrize(
    "setting,die,k,again",
    [
        ("rewind.epoch=1", 6, 1, 2),  # round 1 trains epochs 1..3; dies in epoch 2's validation: 2, 3 again
        ("rewind.step=12", 6, 2, 1),  # round 1: epoch 2 from batch 2, then 3; dies in epoch 3: only 3 again
        ("rewind.step=12", 2, 1, 5),  # dies in round 0's epoch 1, before theta_12: round 0's 1..3, round 1's 2, 3
    ],
    ids=["epoch-k1", "step-k2", "step-round0-k1"],
)
def test_killed_mid_round_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, setting, die, k, again):
    """Killed mid-round, relaunched: the round continues from its last epoch checkpoint at the right epoch of
    the schedule, and every number and weight ends identical to the run never stopped."""
    vs = variants(setting, k)
    ref = loop.train(vs, tmp_path / "ref")
    calls = die_at_validation(monkeypatch, die)
    with pytest.raises(loop.CohortFailed):
        loop.train(vs, tmp_path / "run")
    counted(monkeypatch, calls)
    got = loop.train(vs, tmp_path / "run")
    assert calls["n"] == again
    for v in vs:
        a, b = got[v.name], ref[v.name]
        assert a["status"] == "complete"
        assert [e["epoch"] for e in a["rounds"][1]["epochs"]] == [e["epoch"] for e in b["rounds"][1]["epochs"]]
        for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
            for key in ("sparsity", "val_acc", "test_acc", "train_loss", "test_loss", "flipped_vs_init"):
                assert ra[key] == rb[key], (v.name, ra["round"], key)
            assert [e["train_loss"] for e in ra["epochs"]] == [e["train_loss"] for e in rb["epochs"]]
        for r in (0, 1):
            wa = torch.load(results.checkpoint_path(tmp_path / "run" / v.name, r), weights_only=True)["model"]
            wb = torch.load(results.checkpoint_path(tmp_path / "ref" / v.name, r), weights_only=True)["model"]
            assert all(torch.equal(wa[key], wb[key]) for key in wb)
        ta = torch.load(tmp_path / "run" / v.name / results.THETA_K, weights_only=True)
        tb = torch.load(tmp_path / "ref" / v.name / results.THETA_K, weights_only=True)
        assert all(torch.equal(ta[key], tb[key]) for key in tb)


def test_a_cohort_trains_each_variant_as_it_would_alone(tmp_path):
    """K = 2 (the stacked module): theta_12 taken inside a group of steps, the stacked optimizer cleared there,
    round 1 from batch 2 of epoch 2; each variant bit-identical to the same run alone."""
    vs = variants("rewind.step=12", 2)
    packed = loop.train(vs, tmp_path / "packed")
    for v in vs:
        alone = loop.run(v.cfg, tmp_path / "alone" / v.name)
        for ra, rb in zip(packed[v.name]["rounds"], alone["rounds"], strict=True):
            assert (ra["test_acc"], ra["epochs"]) == (rb["test_acc"], rb["epochs"]), (v.name, ra["round"])
        ta = torch.load(tmp_path / "packed" / v.name / results.THETA_K, weights_only=True)
        tb = torch.load(tmp_path / "alone" / v.name / results.THETA_K, weights_only=True)
        assert all(torch.equal(ta[key], tb[key]) for key in tb)


def test_round_store_reuses_a_rewinding_run_whole(tmp_path):
    """With the store on, the same rewinding run again takes every round from it (round 0 with its theta_s)
    to the same numbers; its rounds' keys cover rewind.step (another s: other keys)."""
    store = f"round_store.dir={tmp_path / 'store'}"
    cfg = config("rewind.step=7", "round_store.enabled=true", store)
    first = loop.run(cfg, tmp_path / "a")
    second = loop.run(cfg, tmp_path / "b")
    assert [r["reused_from"] for r in first["rounds"]] == [None, None]
    assert all(r["reused_from"] for r in second["rounds"])
    for ra, rb in zip(first["rounds"], second["rounds"], strict=True):
        assert (ra["round_key"], ra["test_acc"], ra["epochs"]) == (rb["round_key"], rb["test_acc"], rb["epochs"])
    ta = torch.load(tmp_path / "a" / results.THETA_K, weights_only=True)
    tb = torch.load(tmp_path / "b" / results.THETA_K, weights_only=True)
    assert all(torch.equal(ta[key], tb[key]) for key in ta)
    other = loop.run(config("rewind.step=8", "round_store.enabled=true", store, "prune.iterations=0"), tmp_path / "c")
    assert other["rounds"][0]["round_key"] != first["rounds"][0]["round_key"]


def test_a_rewind_step_past_round_0_is_refused_in_one_line(tmp_path):
    """digits: 1797 - 360 test - 180 val = 1257 training samples, 21 batches of 60, 2 epochs = 42 steps."""
    proc = train("epochs=2", "rewind.step=42", "threads=1", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0] == (
        "phicenter train: error: rewind.step=42 is not inside round 0 (2 epochs of 21 steps = 42 "
        "optimizer steps): rounds >= 1 train from the rewind point to the end of round 0's schedule"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("strategy", ["lrr", "sign_transfer"])
def test_a_rewind_point_is_refused_for_strategies_that_do_not_rewind_weights(strategy):
    """lrr (Renda et al.) and sign_transfer (Oh et al.: lrr's lineage) never rewind weights: a rewind point is one
    line at the config check, for a single run and for a pack's variant alike (CLI: tests/test_cli.py)."""
    from phicenter.engine.cohort import check_variants, make_variants

    with pytest.raises(ConfigError, match=rf"^rewind.epoch=1 does not apply to strategy={strategy}: "):
        settings(config("rewind.epoch=1", strategy=strategy))
    base = config("rewind.step=3")
    nodes = [compose_config("strategy=lth").strategy, compose_config(f"strategy={strategy}").strategy]
    with pytest.raises(ConfigError, match=rf"^rewind.step=3 does not apply to strategy={strategy}: "):
        check_variants(make_variants(base, [0.0], nodes))
    settings(config("rewind.epoch=0", "rewind.step=0", strategy=strategy))  # no rewind point: as before


def test_data_parallel_round_counts_its_own_steps(tmp_path):
    """2 processes: 400 training samples, each process 200 of them in batches of 10, 20 steps an epoch; so
    rewind.step=25 is batch 5 of epoch 1 and round 1 trains that epoch's last 15 steps of each process."""
    run = [
        "threads=1",
        "dataset=synthetic",
        "dataset.n_train=500",
        "batch_size=10",
        "+model.hidden=[16]",
        "epochs=2",
        "prune.iterations=1",
        "round_store.enabled=false",
        "rewind.step=25",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "+trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path}",
    ]
    train(*run)
    res = results.read_json(tmp_path / results.RESULTS)
    assert res["status"] == "complete" and [e["epoch"] for e in res["rounds"][1]["epochs"]] == [1]
    digests = res["rounds"][1]["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (tmp_path / results.THETA_K).exists()
