"""The lean loop and its benchmark: grouped manual steps train exactly like a plain loop, torch.compile
survives re-masking, and `python -m phicenter.bench` writes its JSON. Nothing here asserts a wall time."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tests.cli import bare_trainer

from phicenter import data, models
from phicenter.engine.module import CohortModule
from phicenter.method import pruning, strategies
from phicenter.method.imp import IMP, IMPConfig

ROOT = Path(__file__).resolve().parents[1]


def _setup(seed=0, dead=0.0):
    """Synthetic data and a masked fc_lot; `dead`: that share of each layer's weights pruned (seeded), with
    standard-like non-zero fills."""
    s = data.load("synthetic", ".", val_size=40, n_train=250, n_test=40, shape=(1, 8, 8))
    net = models.build("fc_lot", s.input_shape, s.num_classes, seed=seed)
    g = torch.Generator().manual_seed(1)
    for layer in pruning.attach_masks(net).values():
        mf = pruning.mask_of(layer)
        mf.mask.copy_(torch.rand(mf.mask.shape, generator=g) >= dead)
        mf.fill.copy_(torch.randn(mf.fill.shape, generator=g) * 0.01)
    pruning.reapply_masks(net)
    return s, net


def _fit(net, batches, epochs=2, precision="32-true"):
    module = CohortModule([net], {"name": "adam", "lr": 1e-3})
    module.train_batches = batches
    trainer = bare_trainer(epochs, deterministic=True, precision=precision)
    trainer.fit(module, train_dataloaders=batches)
    return module, trainer


def test_grouped_manual_steps_are_exactly_the_plain_loop():
    """CohortModule's steps (k per Lightning call) are the hand-written loop's steps, bit for bit, the mask
    passes included: the bench's ratio compares the same work."""
    s, net_a = _setup(dead=0.3)
    _, net_b = _setup(dead=0.3)
    _, net_c = _setup(dead=0.3)
    batches = data.make_loaders(s, 32, seed=4, group=3)[0]
    module, trainer = _fit(net_a, batches)
    assert trainer.global_step == 2 * batches.n_batches()  # one global step per optimizer step
    _fit(net_b, data.make_loaders(s, 32, seed=4, group=1)[0])  # ungrouped: the same
    opt = torch.optim.Adam(net_c.parameters(), 1e-3)
    plain = data.make_loaders(s, 32, seed=4)[0]
    losses = []
    for epoch in range(2):
        plain.set_epoch(0, epoch)
        total = n = 0.0
        for x, y in plain:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net_c(x), y)
            loss.backward()
            pruning.zero_dead_grads(net_c)
            opt.step()
            pruning.reapply_masks(net_c)
            total, n = total + float(loss.detach().double()) * len(y), n + len(y)
        losses.append(total / n)
    for a, b, c in zip(net_a.state_dict().values(), net_b.state_dict().values(), net_c.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert [h["train_loss"] for h in module.history[0]] == losses  # on-device metrics, the same numbers


def test_schedule_steps_once_per_epoch_in_manual_optimisation():
    s, net = _setup()
    module = CohortModule([net], {"name": "sgd", "lr": 0.1}, {"name": "multistep", "at": [0.5, 0.75], "gamma": 0.1})
    batches = data.make_loaders(s, 64, group=2)[0]
    module.train_batches = batches
    lrs = []

    class Record(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(
        max_epochs=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[Record()],
    )
    trainer.fit(module, train_dataloaders=batches)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_other_precisions_train(precision):
    """bf16-mixed takes the direct steps under autocast; 64-true goes through Lightning's manual path."""
    s, net = _setup()
    module, trainer = _fit(net, data.make_loaders(s, 32, group=4)[0], epochs=1, precision=precision)
    assert math.isfinite(module.history[0][-1]["train_loss"])
    assert trainer.global_step == data.make_loaders(s, 32)[0].n_batches()


def test_compile_survives_remasking_without_recompiling():
    """Masks are buffers changed in place by IMP.advance: the compiled graphs stay valid and are reused
    (guards are on shapes, dtypes and grad mode, not on values), and the new masks are honoured."""
    import torch._dynamo

    torch._dynamo.reset()
    s, net = _setup()
    imp = IMP(net, strategies.build("mask0"), IMPConfig(phi=0.0))
    reference = models.build("fc_lot", s.input_shape, s.num_classes)
    pruning.attach_masks(reference)
    net.compile(backend="eager")
    x, y = s.x_train[:32].float() / 255, s.y_train[:32]
    counters = torch._dynamo.utils.counters

    def step():
        F.cross_entropy(net(x), y).backward()
        with torch.no_grad():
            net.eval()
            out = net(x)
            net.train()
        return out

    step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for r in (1, 2, 3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.01)
        imp.advance(r)
        out = step()
        reference.load_state_dict(net.state_dict())
        with torch.no_grad():
            reference.eval()
            torch.testing.assert_close(out, reference(x))  # the new masks are in force
    assert counters["stats"]["unique_graphs"] == graphs  # ... with the graphs of round 0
    fc1 = pruning.mask_of(net.fc1).mask
    assert 0 < float(fc1.float().mean()) < 1
    torch._dynamo.reset()


def test_prepare_compiles_once():
    s, net = _setup()
    keys = list(net.state_dict())
    module = CohortModule([net], {"name": "adam", "lr": 1e-3})
    module.prepare("cpu", compile=False)
    assert getattr(net, "_compiled_call_impl", None) is None
    module.prepare("cpu", compile=True)
    compiled = net._compiled_call_impl
    assert compiled is not None
    module.prepare("cpu", compile=True)
    assert net._compiled_call_impl is compiled  # not wrapped again next round
    assert list(net.state_dict()) == keys  # checkpoints and IMP see the same names


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "phicenter.bench",
        "--quick",
        "--out",
        str(out),
        "--images",
        "120",
        "60",
        "256",
        "--repeats",
        "1",
        "--gpu-rows",
        "--gpu-experiments",
        "mnist_fc_lot",
        "--precision",
        "32-true",
        "--peak-tflops",
        "1",
        "--no-cohort",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("loop_overhead_ratio", "data_speedup", "prune_share"):
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    assert res["device"] == "cpu" and res["threads"] == 1 and res["repeats"] == 1
    assert 0 < res["prune_share"] < 1
    assert set(res["loop"]) == {"fc_lot", "conv4"}
    assert res["loop"]["conv4"]["data"] == "synthetic [3, 32, 32]"
    assert res["loop"]["fc_lot"]["train_flops_per_image"] > 0
    row = res["gpu"]["rows"]["mnist_fc_lot"]  # the GPU rows' code path, exercised on the CPU
    assert row["mfu"] > 0 and row["runs"] == 44 and row["rounds"] == 11 and row["grid_hours_est"] > 0
    assert res["grid_gpu_hours_est"] is None  # never an estimate from a CPU
    assert "cohort_speedup" not in res  # --no-cohort (cohort_speedup itself: tests/test_cohort.py)
    assert "loop_overhead_ratio" in proc.stdout and "| (a) fc_lot" in proc.stdout
    for key in ("masked_step_ratio", "masked_step_ratio_conv4", "masked_round_ratio"):  # (e): masks
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    step = res["masks"]["step"]["fc_lot"]
    assert step["sparsity"] == pytest.approx(0.2) and step["threads"] == 1 and step["masked_step_ms"] > 0
    assert len(res["masks"]["round"]["rounds_s"][0]) == 2  # round 0 (dense), round 1 (masked)
    rows = res["threads_rows"]["rows"]  # (f): 1 vs 2 threads
    assert set(rows) == {"mnist_fc_lot", "cifar10_conv2"}
    assert all(set(r["epoch_s"]) == {"1", "2"} for r in rows.values())
    assert "| (e) fc_lot training step" in proc.stdout and "| (f) conv2 epoch" in proc.stdout
