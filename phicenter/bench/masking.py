"""What masks cost, and what threads give: the bench's rows that compare an experiment's net with and without
masks, and its epochs at 1 and 2 torch threads (`python -m phicenter.bench`, docs/benchmarks.md).

  masked step: the module's real training step (CohortModule.training_step inside a Lightning fit, one epoch,
      the experiment's optimizer and batch size) on the same net twice: pruned as in round 1 (IMP.advance:
      20 % of every layer dead, the mask passes at every step) and with no mask at all. Each side's time is
      the sum of its training-step calls (the Lightning call that carries the steps, its per-call overhead
      included), per optimizer step; the ratio is the median over repeats of each repeat's two back-to-back
      epochs. On a shared machine `floor_ratio` compares the sides' 10th-percentile per-call step times (the
      calls least disturbed by other processes).
  masked round: a real two-round run (engine.loop.run, the round store off): round 1 (boundary, masked
      training, evaluation, checkpoint) against round 0 (the dense net; its masks, all alive, cost nothing),
      the same epochs.
  threads: one epoch of the real path (bench.cases.Case) at 1 and at 2 torch threads, interleaved.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from phicenter.bench.cases import Case, experiment_config, interleaved, med


class _StepClock:
    """Wall and CPU (this thread's) time inside the training-step calls of a fit, in all and per step of
    each call."""

    def __init__(self):
        import pytorch_lightning as pl

        clock = self
        self.wall = self.cpu = 0.0
        self.steps = 0
        self.per_call: list[float] = []  # wall seconds per optimizer step, one value per call

        class Cb(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                clock._t = (time.perf_counter(), time.thread_time(), trainer.global_step)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                wall, cpu, step = clock._t
                wall = time.perf_counter() - wall
                clock.wall += wall
                clock.cpu += time.thread_time() - cpu
                clock.steps += trainer.global_step - step
                clock.per_call.append(wall / max(1, trainer.global_step - step))

        self.callback = Cb()


class _Side:
    """One side of the masked-step comparison: the experiment's net, pruned once (masked) or bare (dense),
    trained by CohortModule one epoch at a time."""

    def __init__(self, cfg, splits, masked: bool):

        from phicenter import data
        from phicenter.config import settings
        from phicenter.engine import build
        from phicenter.engine.module import CohortModule
        from phicenter.method import pruning

        s = settings(cfg)
        self.cfg, self.net, self.sparsity = s, build.build_model(s, splits), 0.0
        if masked:
            imp = build.build_imp(s, self.net)
            with torch.no_grad():  # stand-in for round 0's training: every weight moved a little
                g = torch.Generator().manual_seed(0)
                for p in self.net.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 1e-2)
            imp.advance(1)
            self.sparsity = pruning.sparsity(imp.layers)[0]
        self.module = CohortModule(
            [self.net],
            s.optim,
            s.schedule,
        )
        self.batches = data.loaders(s, splits, s.batch_size, s.seed, group=data.STEPS_PER_CALL)[0]
        self.module.train_batches = self.batches
        self.epoch = 0
        self.cpu_ms: list[float] = []
        self.call_ms: list[float] = []

    def step_ms(self) -> float:
        """Wall milliseconds per optimizer step of one epoch (CPU milliseconds into self.cpu_ms)."""
        import pytorch_lightning as pl

        from phicenter.engine import build

        clock = _StepClock()  # (a Checkpoint that saves nothing: no default one writing into the folder)
        trainer = build.make_trainer(self.cfg, [clock.callback, pl.callbacks.Checkpoint()], 1)
        self.module.start_round(self.epoch, 1)  # a fresh data order each time
        trainer.fit(self.module, train_dataloaders=self.batches)
        self.epoch += 1
        self.cpu_ms.append(clock.cpu / clock.steps * 1e3)
        self.call_ms += [t * 1e3 for t in clock.per_call]
        return clock.wall / clock.steps * 1e3


def masked_step(
    experiment: str, n_train: int, repeats: int, data_dir: str | None = None, strategy: str = "mask0"
) -> dict:
    """The masked net's training step against the same net unmasked (CPU, the current torch threads)."""
    from phicenter.engine import build

    cfg, _, source = experiment_config(experiment, n_train, data_dir, "cpu", None, extra=(f"strategy={strategy}",))
    splits = build.load_data(cfg)
    if len(splits.y_train) > n_train:  # real data: the first n_train images of the train split
        splits.x_train, splits.y_train = splits.x_train[:n_train], splits.y_train[:n_train]
    sides = {"masked": _Side(cfg, splits, True), "dense": _Side(cfg, splits, False)}
    for s in sides.values():  # one untimed epoch each (lazy initialisation, first-call costs)
        s.step_ms()
        s.call_ms.clear()
        s.cpu_ms.clear()
    wall = interleaved({k: s.step_ms for k, s in sides.items()}, repeats, warmup=0)
    cpu = {k: s.cpu_ms for k, s in sides.items()}
    floor = {k: _quantile(s.call_ms, 0.1) for k, s in sides.items()}
    return {
        "experiment": experiment,
        "data": source,
        "images": len(splits.y_train),
        "strategy": strategy,
        "sparsity": sides["masked"].sparsity,
        "threads": torch.get_num_threads(),
        "masked_step_ms": med(wall["masked"]),
        "dense_step_ms": med(wall["dense"]),
        "ratio": med([a / b for a, b in zip(wall["masked"], wall["dense"])]),
        "cpu_ratio": med([a / b for a, b in zip(cpu["masked"], cpu["dense"])]),
        "floor_ratio": floor["masked"] / floor["dense"],
        "calls": len(sides["masked"].call_ms),
        "masked_all_ms": wall["masked"],
        "dense_all_ms": wall["dense"],
    }


def _quantile(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs: on a shared machine, the low end of a side's per-call times is
    its step with the least interference from other processes."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def masked_round(
    n_train: int,
    epochs: int,
    repeats: int,
    data_dir: str | None = None,
    experiment: str = "mnist_fc_lot",
    workdir: Path | None = None,
) -> dict:
    """Round 1 (masked) against round 0 (dense) of real runs of the experiment, `epochs` epochs each."""
    from phicenter.engine import loop

    extra = (
        f"epochs={epochs}",
        "prune.iterations=1",
        "round_store.enabled=false",
        f"threads={torch.get_num_threads()}",
    )
    cfg, _, source = experiment_config(experiment, n_train, data_dir, "cpu", None, extra=extra)
    work = Path(workdir or tempfile.mkdtemp(prefix="phicenter-bench-round-"))
    rows, images = [], None
    for r in range(repeats + 1):  # the first run warms up (lazy imports, first-call costs), untimed
        res = loop.run(cfg, work / f"run{r}")
        rows.append([e["seconds"] for e in res["rounds"]])
        images = res["data"]["train"]
    rows = rows[1:]
    return {
        "experiment": experiment,
        "data": source,
        "images": images,
        "epochs": epochs,
        "threads": torch.get_num_threads(),
        "dense_round_s": med([r[0] for r in rows]),
        "masked_round_s": med([r[1] for r in rows]),
        "ratio": med([r[1] / r[0] for r in rows]),
        "rounds_s": rows,
    }


def threads(
    experiments: dict[str, int], repeats: int, data_dir: str | None = None, counts=(1, 2), workdir: Path | None = None
) -> dict:
    """One epoch of each experiment's real path at each thread count, interleaved; restores the count."""
    before = torch.get_num_threads()
    work = Path(workdir or tempfile.mkdtemp(prefix="phicenter-bench-threads-"))
    out = {}
    try:
        for experiment, n in experiments.items():
            case = Case(experiment, n, data_dir, "cpu", workdir=work / experiment)

            def at(count, case=case):
                def go():
                    torch.set_num_threads(count)
                    return case.phicenter_epoch()

                return go

            t = interleaved({c: at(c) for c in counts}, repeats)
            epoch = {c: med(v) for c, v in t.items()}
            out[experiment] = {
                "model": str(case.cfg.model.name),
                "data": case.source,
                "images": case.n,
                "epoch_s": {str(c): s for c, s in epoch.items()},
                "speedup_2_vs_1": epoch[counts[0]] / epoch[counts[-1]],
                "all_s": {str(c): v for c, v in t.items()},
            }
    finally:
        torch.set_num_threads(before)
    return {"cpus": os.cpu_count(), "default_threads": _default_threads(), "rows": out}


def _default_threads() -> int:
    """torch's own default on this machine (what `threads: null` left in force before)."""
    import subprocess
    import sys

    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        return int(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
            ).stdout.strip()
        )
    except (ValueError, subprocess.SubprocessError):
        return -1
