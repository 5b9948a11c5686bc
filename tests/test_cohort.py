"""Cohorts (phicenter/engine): K variants trained as one is an execution detail, never a change of results.

The central check trains the same four variants (one per paper strategy, each with its own phi) twice: as
one cohort of K = 4, and each as the cohort of one a plain run is. Per round, every accuracy, loss and flip
diagnostic must agree, and the final weights too. On CPU the stacked default ("loop") issues the
kernels of each variant alone on its shapes, so the test asserts what that gives: equal bit for bit.

Every config here has the round store off (`round_store.enabled=false`): each side trains every round of
every variant itself, so what is compared is training (tests/test_round_store.py tests the reuse).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.cli import compose_config
from tests.faults import counted, die_at_validation
from torch import nn

from phicenter import models
from phicenter.bench import cohort as harness
from phicenter.config import ConfigError
from phicenter.engine import loop
from phicenter.engine import module as cohort_module
from phicenter.engine import rundir as results
from phicenter.engine.batched import batched_plan
from phicenter.engine.cohort import Variant, check_variants, make_variants, variant_name
from phicenter.engine.module import make_optimizer
from phicenter.engine.stacked import StackedNet, stacked_losses, stacked_step
from phicenter.method import pruning

ROOT = Path(__file__).resolve().parent.parent
CONF = str(ROOT / "conf")
# one variant per paper strategy; phi large enough to re-sign a good share of the weights
COMBOS = [("mask0", 0.0), ("mask1", 0.02), ("gradual", -0.02), ("standard", 0.01)]
SHAPES = {"fc_lot": ("[1,8,8]", 600), "conv2": ("[3,8,8]", 340)}


def config(model: str, strategy: str = "mask0", phi: float = 0.0, *extra: str):
    shape, n_train = SHAPES[model]
    return compose_config(
        f"model={model}",
        "dataset=synthetic",
        f"dataset.shape={shape}",
        f"dataset.n_train={n_train}",
        "dataset.n_test=150",
        "epochs=2",
        "prune.iterations=2",
        f"strategy={strategy}",
        f"phi={phi}",
        "checkpoint.keep_all=true",
        "round_store.enabled=false",
        *extra,
    )


def variants(model: str, combos=COMBOS, *extra: str):
    return [Variant(variant_name(p, s), config(model, s, p, *extra)) for s, p in combos]


@pytest.fixture(scope="module", params=["fc_lot", "conv2"])
def pair(request, tmp_path_factory):
    """(model, variants, cohort results, alone results, folder): the same variants in a cohort and alone."""
    model = request.param
    out = tmp_path_factory.mktemp(model)
    vs = variants(model)
    res_cohort = loop.train(vs, out / "cohort")
    res_alone = {v.name: loop.run(v.cfg, out / "alone" / v.name) for v in vs}
    return model, vs, res_cohort, res_alone, out


ROUND_KEYS_EXACT = ("round", "sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone", "dead_zone_count")
ROUND_KEYS_ACC = ("val_acc", "test_acc", "train_acc")
ROUND_KEYS_LOSS = ("train_loss", "test_loss")


def assert_same_rounds(a: dict, b: dict, label: str) -> float:
    """Per-round agreement of two results dicts; returns the largest accuracy difference."""
    assert len(a["rounds"]) == len(b["rounds"]), label
    worst = 0.0
    for ra, rb in zip(a["rounds"], b["rounds"]):
        for k in ROUND_KEYS_EXACT:
            assert ra[k] == rb[k], (label, ra["round"], k, ra[k], rb[k])
        for k in ROUND_KEYS_ACC:
            worst = max(worst, abs(ra[k] - rb[k]))
            assert abs(ra[k] - rb[k]) <= 1e-6, (label, ra["round"], k, ra[k], rb[k])
        for k in ROUND_KEYS_LOSS:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6), (label, ra["round"], k)
        for ea, eb in zip(ra["epochs"], rb["epochs"]):
            for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
                assert ea[k] == pytest.approx(eb[k], rel=1e-6, abs=1e-9), (label, ra["round"], ea["epoch"], k)
        for name, la in ra["layers"].items():
            lb = rb["layers"][name]
            for k in ("sparsity", "c", "phi", "survivors", "flipped_by_phi_count", "flipped_vs_init_count"):
                if k in lb:
                    assert la[k] == lb[k], (label, ra["round"], name, k)
    return worst


def test_cohort_equals_alone(pair):
    """mask0, mask1, gradual and standard, in a cohort vs alone: same per-round accuracies, losses, diagnostics
    and final weights (fc_lot and conv2)."""
    model, vs, res_cohort, res_alone, out = pair
    n_rounds = vs[0].cfg.prune.iterations + 1
    for v in vs:
        a, b = res_cohort[v.name], res_alone[v.name]
        assert a["status"] == b["status"] == "complete"
        assert len(a["rounds"]) == n_rounds
        assert_same_rounds(a, b, v.name)
        # final weights, masks, fills and biases
        wa = torch.load(out / "cohort" / v.name / "checkpoints" / f"round_{n_rounds - 1:03d}.pt", weights_only=True)[
            "model"
        ]
        wb = torch.load(out / "alone" / v.name / "checkpoints" / f"round_{n_rounds - 1:03d}.pt", weights_only=True)[
            "model"
        ]
        assert wa.keys() == wb.keys()
        for key in wb:
            x, y = wa[key].double(), wb[key].double()
            rel = float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) if y.numel() else 0.0
            assert rel <= 1e-5, (v.name, key, rel)  # the spec's bound
            assert torch.equal(wa[key], wb[key]), (v.name, key)  # what the loop implementation gives
        assert [r[k] for r in a["rounds"] for k in ROUND_KEYS_ACC] == [
            r[k] for r in b["rounds"] for k in ROUND_KEYS_ACC
        ]
        # the variants really differ from each other (phi and the strategy did something)
    finals = {v.name: res_cohort[v.name]["final"]["test_acc"] for v in vs}
    flips = [res_cohort[v.name]["rounds"][1]["flipped_by_phi"] for v in vs]
    assert any(f > 0 for f in flips), flips
    assert res_cohort[vs[1].name]["rounds"][1]["train_loss"] != res_cohort[vs[0].name]["rounds"][1]["train_loss"]
    assert all(0.0 <= f <= 1.0 for f in finals.values())


def test_cohort_results_layout(pair):
    """One folder per variant, named like a multirun job, holding what a run alone writes; the config
    recorded is that of the same run alone, its cohort is recorded beside it."""
    model, vs, res_cohort, res_alone, out = pair
    for v in vs:
        d = out / "cohort" / v.name
        assert d.name.startswith("phi=") and ",strategy=" in d.name
        on_disk = json.loads((d / results.RESULTS).read_text())
        alone = json.loads((out / "alone" / v.name / results.RESULTS).read_text())
        assert on_disk["config"] == alone["config"]
        assert set(alone) - {"traceback"} <= set(on_disk)
        assert set(alone["rounds"][-1]) <= set(on_disk["rounds"][-1])
        assert on_disk["cohort"]["variants"] == [x.name for x in vs]
        assert (d / results.THETA0).is_file()
        assert list((d / "tb").glob("events.out.tfevents.*"))


def test_cohort_record_read_under_its_earlier_name():
    """results.json of earlier versions name the cohort record "packed": it is read, and written anew as
    "cohort" with the last impl kept when every variant took its round from the store (impl None)."""
    from phicenter.engine import records

    earlier = {"status": "running", "packed": {"variants": ["a", "b"], "impl": "loop"}}
    assert records.cohort_of(earlier) == {"variants": ["a", "b"], "impl": "loop"}
    assert records.cohort_of({"status": "running"}) is None
    records.set_cohort(earlier, ["a", "b"], None)
    assert earlier == {"status": "running", "cohort": {"variants": ["a", "b"], "impl": "loop"}}
    records.set_cohort(earlier, ["a"], "batched")
    assert records.cohort_of(earlier) == {"variants": ["a"], "impl": "batched"}


def test_chunks_equal_one_pack(tmp_path):
    """pack_chunk: three variants in chunks of two give the same results as all three at once."""
    vs = variants("fc_lot", COMBOS[:3], "prune.iterations=1")
    one = loop.train(vs, tmp_path / "one")
    chunked = loop.train(vs, tmp_path / "chunked", chunk=2)
    assert chunked[vs[0].name]["cohort"]["variants"] == [vs[0].name, vs[1].name]
    assert chunked[vs[2].name]["cohort"]["variants"] == [vs[2].name]
    for v in vs:
        assert_same_rounds(chunked[v.name], one[v.name], v.name)


def test_out_of_memory_halves_the_chunk(tmp_path, monkeypatch):
    """A cohort that runs out of memory mid-way is split in halves, each resumed where it stopped (here: the
    start of round 1), to the same results."""
    vs = variants("fc_lot", COMBOS[:3], "prune.iterations=1")
    ref = loop.train(vs, tmp_path / "ref")
    real_cohort, real_opt = loop.train_cohort, cohort_module.make_optimizer
    sizes, starts, calls = [], [], []

    def cohort(members, start, *a, **kw):
        sizes.append(len(members))
        starts.append(start)
        return real_cohort(members, start, *a, **kw)

    def optimizer(*a, **kw):  # called at the start of every round: fail at round 1 of the first cohort
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_opt(*a, **kw)

    monkeypatch.setattr(loop, "train_cohort", cohort)
    monkeypatch.setattr(cohort_module, "make_optimizer", optimizer)
    got = loop.train(vs, tmp_path / "oom")
    assert sizes == [3, 2, 1] and starts == [0, 1, 1]
    for v in vs:
        assert got[v.name]["status"] == "complete"
        assert_same_rounds(got[v.name], ref[v.name], v.name)


def test_resume_and_complete_runs_skipped(tmp_path):
    """A relaunch skips complete variants and resumes the others from their last round checkpoint, to the
    same results."""
    vs = variants("fc_lot", COMBOS[:2], "prune.iterations=1")
    first = loop.train(vs, tmp_path)
    # make the second variant look interrupted after round 0
    d = tmp_path / vs[1].name
    (d / "checkpoints" / "round_001.pt").unlink()
    partial = dict(first[vs[1].name], status="running", rounds=first[vs[1].name]["rounds"][:1])
    results.write_json(d / results.RESULTS, partial)
    stamp = (tmp_path / vs[0].name / results.RESULTS).stat().st_mtime_ns
    again = loop.train(vs, tmp_path)
    assert (tmp_path / vs[0].name / results.RESULTS).stat().st_mtime_ns == stamp
    assert again[vs[1].name]["status"] == "complete"
    assert_same_rounds(again[vs[1].name], first[vs[1].name], vs[1].name)


@pytest.mark.parametrize("optim", ["adam", "sgd"])
@pytest.mark.parametrize("k", [1, 2])
def test_killed_mid_round_resumes_from_the_last_epoch(tmp_path, monkeypatch, optim, k):
    """A cohort that dies mid-round resumes from its last epoch checkpoint (weights, masks, optimizer and
    schedule state, epoch history) to results identical to an uninterrupted one; no epoch is redone."""
    extra = ["prune.iterations=1", "epochs=4", f"optim.name={optim}"]
    if optim == "sgd":  # the LR drops after epoch 2, i.e. after the resume point
        extra += ["optim.lr=0.05", "+optim.momentum=0.9", "schedule.name=multistep", "+schedule.at=[0.75]"]
    vs = variants("fc_lot", COMBOS[1 : 1 + k], *extra)
    reference = loop.train(vs, tmp_path / "reference")
    calls = die_at_validation(monkeypatch, 7)  # round 0: 4 epochs; round 1: after epochs 0 and 1, then this one
    with pytest.raises(loop.CohortFailed):
        loop.train(vs, tmp_path / "run")
    epochs_dir = next((tmp_path / "run" / "checkpoints").glob("cohort_*/round_001_epochs"))
    assert sorted(p.name for p in epochs_dir.iterdir()) == ["last.ckpt", "prev.ckpt"]
    counted(monkeypatch, calls)
    again = loop.train(vs, tmp_path / "run")
    assert calls["n"] == 2  # validation after epochs 2 and 3: 0 and 1 were not trained again
    for v in vs:
        assert again[v.name]["status"] == "complete"
        assert_same_rounds(again[v.name], reference[v.name], v.name)
        for ra, rb in zip(again[v.name]["rounds"], reference[v.name]["rounds"]):
            assert [e["train_loss"] for e in ra["epochs"]] == [e["train_loss"] for e in rb["epochs"]]
        wa = torch.load(results.checkpoint_path(tmp_path / "run" / v.name, 1), weights_only=True)["model"]
        wb = torch.load(results.checkpoint_path(tmp_path / "reference" / v.name, 1), weights_only=True)["model"]
        assert all(torch.equal(wa[key], wb[key]) for key in wb)
    assert not list((tmp_path / "run" / "checkpoints").glob("cohort_*/round_001_epochs"))


def test_relaunch_under_another_config_is_refused(tmp_path):
    """Each variant folder resumes only its own configuration; the check comes before any training."""
    vs = variants("fc_lot", COMBOS[:2], "prune.iterations=0", "epochs=1")
    loop.train(vs, tmp_path)
    before = {v.name: (tmp_path / v.name / results.RESULTS).read_bytes() for v in vs}
    changed = variants("fc_lot", COMBOS[:2], "prune.iterations=0", "epochs=1", "optim.lr=0.01")
    with pytest.raises(ConfigError, match=r"another configuration \(optim.lr: 0.0012 -> 0.01\)"):
        loop.train(changed, tmp_path)
    assert {v.name: (tmp_path / v.name / results.RESULTS).read_bytes() for v in vs} == before


def test_divergence_stops_only_that_variant(tmp_path, monkeypatch):
    """A variant whose loss stops being finite is recorded as diverged; the others train on unchanged."""
    vs = variants("fc_lot", COMBOS[:3], "prune.iterations=1")
    ref = loop.train(vs, tmp_path / "ref")
    real = cohort_module.stacked_losses

    def poisoned(logits, y):
        losses, values = real(logits, y)
        if logits.shape[0] == 3 and torch.is_grad_enabled():
            values = values.clone()
            values[1] = math.nan
        return losses, values

    monkeypatch.setattr(cohort_module, "stacked_losses", poisoned)
    with pytest.raises(loop.CohortFailed, match="1 of 3 runs did not complete"):
        loop.train(vs, tmp_path / "nan")
    got = {v.name: results.read_json(tmp_path / "nan" / v.name / results.RESULTS) for v in vs}
    assert got[vs[1].name]["status"] == "diverged"
    assert "round 0, epoch 0" in got[vs[1].name]["error"]
    for i in (0, 2):
        assert_same_rounds(got[vs[i].name], ref[vs[i].name], vs[i].name)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("adam", {"lr": 1.2e-3}),
        ("adamw", {"lr": 1e-3, "weight_decay": 0.01}),
        ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}),
    ],
)
def test_optimizer_over_variant_views_is_k_optimizers(name, kw):
    """The cohort's optimizer (per-variant views of the stacked tensors) updates each variant exactly as its
    own optimizer would, momentum and weight decay included."""
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)) for _ in range(3)]
    for n in nets[1:]:
        n.load_state_dict(nets[0].state_dict())
    for n in nets:
        pruning.attach_masks(n)
    for i, n in enumerate(nets):  # different masks and fills per variant
        pruning.mask_of(n[0]).mask.copy_(torch.rand(7, 5) > 0.3 * i)
        pruning.mask_of(n[0]).fill.copy_(torch.randn(7, 5) * i)
        pruning.reapply_masks(n)
    alone = [list(n.parameters()) for n in nets]
    pk = StackedNet([_clone(n) for n in nets])
    opt, _ = make_optimizer(pk.optimizer_parameters(), {"name": name, **kw}, {"name": "none"}, 1)
    own = [make_optimizer(ps, {"name": name, **kw}, {"name": "none"}, 1)[0] for ps in alone]
    for _step in range(4):
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        stacked_step(pk, opt, x, y)
        for n, o in zip(nets, own):
            o.zero_grad()
            F.cross_entropy(n(x), y).backward()
            pruning.zero_dead_grads(n)
            o.step()
            pruning.reapply_masks(n)
    for k, n in enumerate(nets):
        for pname, p in n.named_parameters():
            assert torch.equal(pk.params[pname][k], p.detach()), (name, k, pname)


def _clone(net):
    import copy

    return copy.deepcopy(net)


def _bn_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.BatchNorm2d(5, momentum=None),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


class _Wrapped(nn.Module):
    """Not an nn.Sequential: no batched implementation (loop or vmap)."""

    def __init__(self):
        super().__init__()
        self.body = _bn_net()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("impl", ["loop", "batched", "vmap"])
@pytest.mark.parametrize("arch", ["fc_lot", "conv2", "bn", "wrapped"])
def test_forward_backward_and_batchnorm_per_variant(arch, impl):
    """Logits, loss values, gradients and BatchNorm running statistics of each variant, in a cohort vs its own
    module, in train and eval mode, with different masks and fills per variant. "loop" (the CPU default) is
    bit-identical; "batched" and "vmap" (the GPU paths) agree to float rounding."""
    if impl == "batched" and arch == "wrapped":
        pytest.skip("batched packs nn.Sequential nets only")
    torch.manual_seed(0)
    shape = (1, 8, 8) if arch == "fc_lot" else (3, 8, 8)
    if arch in ("fc_lot", "conv2"):
        nets = [models.build(arch, shape, 10, seed=0) for _ in range(3)]
    else:
        first = _bn_net() if arch == "bn" else _Wrapped()
        nets = [_clone(first) for _ in range(3)]
    for i, n in enumerate(nets):
        layers = pruning.attach_masks(n)
        for layer in layers.values():
            mf = pruning.mask_of(layer)
            mf.mask.copy_(torch.rand(mf.mask.shape) > 0.25 * i)
            mf.fill.copy_(torch.randn(mf.fill.shape) * 0.01 * i)
        pruning.reapply_masks(n)
    pk = StackedNet([_clone(n) for n in nets], impl=impl)
    assert pk.impl == impl
    if impl == "loop":
        check = torch.equal
    else:

        def check(a, b):
            return torch.allclose(a, b, rtol=1e-4, atol=1e-6)

    for training, batch in ((True, 7), (True, 5), (False, 9)):
        x, y = torch.randn(batch, *shape), torch.randint(0, 3, (batch,))
        logits = pk(x, training=training)
        losses, values = stacked_losses(logits, y)
        pk.zero_grad()
        losses.sum().backward()
        for k, n in enumerate(nets):
            n.train(training)
            n.zero_grad()
            out = n(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            assert check(logits[k].detach(), out.detach()), (arch, training, k)
            assert check(values[k], loss.detach()), (arch, training, k)
            for pname, p in n.named_parameters():
                assert check(pk.grad(pname, k), p.grad), (arch, training, k, pname)
            for bname, b in n.named_buffers():
                if b.is_floating_point():
                    assert check(pk.bufs[bname][k], b), (arch, training, k, bname)
                else:
                    assert torch.equal(pk.bufs[bname][k], b), (arch, k, bname)


def test_auto_picks_loop_on_cpu():
    nets = [models.build("fc_lot", (1, 8, 8), 10) for _ in range(2)]
    for n in nets:
        pruning.attach_masks(n)
    assert StackedNet(nets).impl == "loop"
    assert batched_plan(nets[0]) is not None and batched_plan(_Wrapped()) is None


def test_bad_packs_fail_in_one_line():
    """Variants that differ in more than phi and strategy, duplicates, or one loss scale for several."""
    a = config("fc_lot", "mask0", 0.0)
    with pytest.raises(ConfigError, match="only phi and strategy may vary"):
        check_variants([Variant("a", a), Variant("b", config("fc_lot", "mask0", 0.1, "seed=3"))])
    with pytest.raises(ConfigError, match="given twice"):
        check_variants([Variant("a", a), Variant("a", a)])
    half = config("fc_lot", "mask0", 0.0, "trainer.precision=16-mixed")
    with pytest.raises(ConfigError, match="one loss scale"):
        check_variants([Variant("a", half), Variant("b", config("fc_lot", "mask1", 0.0, "trainer.precision=16-mixed"))])
    check_variants([Variant("", half)])  # alone, a run may scale its loss
    with pytest.raises(ConfigError, match="phi must be a number"):
        make_variants(a, ["x"])


def test_cli_pack_in_a_multirun(tmp_path):
    """The real CLI: `-m seed=0,1 pack=true 'phi=[...]' 'strategy=[...]'` packs each seed's 2x2 grid in one
    job; strategy.trained_fraction applies to the gradual variants only."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "phicenter.train",
        "-m",
        "seed=0,1",
        "pack=true",
        "phi=[0,0.02]",
        "strategy=[mask0,gradual]",
        "strategy.trained_fraction=0.5",
        "dataset=synthetic",
        "epochs=1",
        "prune.iterations=1",
        f"hydra.sweep.dir={tmp_path}",
        "hydra/job_logging=disabled",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob(results.RESULTS))
    assert len(found) == 8, found
    for path in tmp_path.rglob(results.RESULTS):
        res = json.loads(path.read_text())
        variant = path.parent.name
        assert res["status"] == "complete" and len(res["rounds"]) == 2
        cfg = res["config"]
        assert variant == f"phi={float(cfg['phi'])!r},strategy={cfg['strategy']['name']}"
        assert isinstance(cfg["phi"], float) and cfg["pack"] is False
        assert cfg["seed"] == int(path.parent.parent.name.split("seed=")[1].split(",")[0])
        if cfg["strategy"]["name"] == "gradual":
            assert cfg["strategy"]["trained_fraction"] == 0.5
        else:
            assert "trained_fraction" not in cfg["strategy"]
        assert list((path.parent / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert len(summary["complete"]) == 8 and set(summary) == {"complete"}  # one entry per variant
    from phicenter.analysis import report

    made = report.report([tmp_path], tmp_path / "report")
    assert made["used"] == 8  # the report reads every variant


def test_cohort_speedup_bench_reports(tmp_path):
    """The bench row phicenter.bench calls: the two figures and what they were measured on."""
    out = harness.cohort_speedup(k=2, dataset="digits", epochs=1, iterations=0, workdir=tmp_path, isolate=False)
    assert out["cohort_speedup"] > 0 and out["cohort_speedup_cpu"] > 0
    assert out["cohort_peak_memory_ratio"] > 0 or math.isnan(out["cohort_peak_memory_ratio"])
    assert out["k"] == 2 and out["dataset"] == "digits" and out["sequential_runs_timed"] == 2
    assert (tmp_path / "cohort" / "runs" / "phi=0.0,strategy=mask0" / results.RESULTS).is_file()
    assert out["impl"] == "loop" and not out["isolated"]


def test_cohort_speedup_conv2_row(tmp_path):
    """The bench's conv2 row (run on a GPU, or with --cohort-conv2), on small CIFAR-shaped synthetic data."""
    out = harness.cohort_speedup(
        k=2,
        model="conv2",
        dataset="synthetic",
        epochs=1,
        workdir=tmp_path,
        isolate=False,
        overrides=["dataset.shape=[3,8,8]", "dataset.n_train=240", "dataset.n_test=60", "dataset.val_size=60"],
    )
    assert out["model"] == "conv2" and out["dataset"] == "synthetic" and out["cohort_speedup"] > 0
    res = json.loads((tmp_path / "cohort" / "runs" / "phi=0.0,strategy=mask0" / results.RESULTS).read_text())
    assert res["status"] == "complete" and res["data"]["input_shape"] == [3, 8, 8]


def test_cohort_step_breakdown_accounts_for_the_step():
    """The bench's bound: the variants' own kernels are a part of the cohort's step, and they are the
    products, the optimizer's arithmetic and the two mask passes (on the floats' bits: integer multiplies)."""
    out = harness.cohort_step_breakdown(k=2, input_shape=(1, 8, 8), steps=3, repeats=1)
    assert 0 < out["kernel_share"] <= 1
    assert 0 < out["kernel_ms_per_variant"] <= out["cohort_ms_per_variant"]
    assert out["cohort_bound"] == pytest.approx(out["single_ms"] / out["kernel_ms_per_variant"])
    kernels = out["kernels_ms_per_variant"]
    assert {"aten::mul_", "aten::_fused_adam_"} <= set(kernels)
    assert {"aten::mm", "aten::addmm"} & set(kernels)
    assert list(kernels.values()) == sorted(kernels.values(), reverse=True)


def test_batched_path_trains_like_alone(pair):
    """The GPU path ("batched": batched matmuls, grouped convolutions), run on CPU through whole rounds:
    the same results up to float rounding (it is not bit-identical by construction; see StackedNet)."""
    model, vs, res_cohort, res_alone, out = pair
    if model != "fc_lot":
        pytest.skip(
            "conv2's batched layers are checked per step in test_forward_backward_...; whole rounds "
            "on CPU grouped convolutions cost time for no further coverage"
        )
    got = loop.train(vs, out / "batched", impl="batched")
    for v in vs:
        a, b = got[v.name], res_alone[v.name]
        assert a["cohort"]["impl"] == "batched" and a["status"] == "complete"
        for ra, rb in zip(a["rounds"], b["rounds"]):
            for k in ROUND_KEYS_ACC:
                assert abs(ra[k] - rb[k]) <= 0.02, (v.name, ra["round"], k, ra[k], rb[k])
            assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)


def test_compiled_stack_survives_remasking_without_recompiling():
    """compile=true with K > 1: the stack is compiled once; the round boundary (scatter, IMP.advance per
    variant, gather) changes masks in place, so later rounds reuse the graphs and honour the new masks."""
    import torch._dynamo

    from phicenter.method import strategies
    from phicenter.method.imp import IMP, IMPConfig

    torch._dynamo.reset()
    nets = [models.build("fc_lot", (1, 8, 8), 10, seed=0) for _ in range(2)]
    imps = [IMP(n, strategies.build(s), IMPConfig(phi=p)) for n, (s, p) in zip(nets, [("mask0", 0.0), ("mask1", 0.02)])]
    pk = StackedNet(nets, impl="loop")
    pk.compile(backend="eager")
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    counters = torch._dynamo.utils.counters

    def step():
        stacked_losses(pk(x, training=True), y)[0].sum().backward()
        with torch.no_grad():
            return pk(x, training=False)

    step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for r in (1, 2):
        with torch.no_grad():
            for p in pk.parameters():
                p.add_(0.01)
        pk.scatter(nets)
        for imp in imps:
            imp.advance(r)
        pk.gather(nets)
        out = step()
        for k, n in enumerate(nets):
            with torch.no_grad():  # a copy: the template's own train/eval flag is part of the graphs' guards
                torch.testing.assert_close(out[k], _clone(n).eval()(x))  # each variant's new masks are in force
    assert counters["stats"]["unique_graphs"] == graphs  # ... with the graphs of round 0
    torch._dynamo.reset()


@pytest.mark.parametrize("k", [1, 2])
def test_late_rewinding_point_is_the_state_after_epoch_k(tmp_path, k):
    """rewind.epoch=1: lth's survivors restart from their values after epoch 1 of round 0 (saved as
    theta_k.pt), not from theta0; a relaunch after round 0 uses the saved point, to the same results."""
    combos = [("lth", 0.0), ("mask1", 0.02)][:k]
    vs = variants("fc_lot", combos, "prune.iterations=1", "epochs=2", "rewind.epoch=1")
    ref = loop.train(vs, tmp_path / "ref")
    d = tmp_path / "ref" / vs[0].name
    theta_k = torch.load(d / results.THETA_K, weights_only=True)
    theta0 = torch.load(d / results.THETA0, weights_only=True)
    key = "fc1.weight"
    assert not torch.equal(theta_k[key], theta0[key])  # one epoch of training moved it
    # the same cohort stopped after round 0 (a failure as round 1 starts: an execution setting) and relaunched
    again_dir = tmp_path / "again"
    stopped = variants("fc_lot", combos, "prune.iterations=1", "epochs=2", "rewind.epoch=1", "fault.fail_round=1")
    with pytest.raises(loop.CohortFailed):
        loop.train(stopped, again_dir)
    got = loop.train(vs, again_dir)
    for v in vs:
        assert_same_rounds(got[v.name], ref[v.name], v.name)


def test_lth_with_late_rewinding_restarts_from_theta_k():
    """The engine's point reaches the method: IMP.advance with lth puts theta_k's values on the survivors."""
    from phicenter.method import strategies
    from phicenter.method.imp import IMP, IMPConfig

    net = models.build("fc_lot", (1, 8, 8), 10, seed=0)
    imp = IMP(net, strategies.build("lth"), IMPConfig())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)
    theta_k = {n: t.clone() for n, t in net.state_dict().items()}
    imp.set_rewind(theta_k)
    imp.advance(1)
    layer = imp.layers["fc1"]
    keep = pruning.mask_of(layer).mask
    raw = pruning.raw_weight(layer).detach()
    assert torch.equal(raw[keep], theta_k["fc1.weight"][keep])
