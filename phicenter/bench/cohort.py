"""The cohort harness: K variants trained as one cohort vs the same K runs one after another, and where a
stacked step's time goes. `python -m phicenter.bench` reports both (docs/benchmarks.md)."""

from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from phicenter import CONF_DIR
from phicenter.engine.cohort import make_variants
from phicenter.engine.module import make_optimizer
from phicenter.engine.records import cohort_of
from phicenter.engine.stacked import StackedNet, stacked_step
from phicenter.method import paper

PAPER_PHIS = paper.PHIS


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its config tree
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _mem_start(device: torch.device) -> dict:
    """Start a peak-memory window: CUDA allocator peak, or the process's resident-set high-water mark
    (reset through /proc/self/clear_refs, after returning freed heap to the OS)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return {"base": torch.cuda.memory_allocated(), "how": "torch.cuda.max_memory_allocated"}
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    base = _rss_kib("VmRSS") * 1024
    how = "resident set high-water mark (VmHWM) above the RSS at the start"
    if not reset or _rss_kib("VmHWM") * 1024 > base * 1.05:
        how += " (could not reset VmHWM: includes earlier peaks)"
    return {"base": base, "how": how}


def _mem_peak(device: torch.device, start: dict) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - start["base"])
    return max(0, _rss_kib("VmHWM") * 1024 - start["base"])


def _pick_dataset(base: list[str], dataset: str) -> str:
    """The dataset: "auto" is MNIST when it is readable under data_dir (no download), else scikit-learn's digits."""
    from phicenter.data import DataError
    from phicenter.engine.build import load_data

    if dataset != "auto":
        return dataset
    try:
        load_data(_compose(base + ["dataset=mnist", "dataset.download=false"]))
    except DataError:
        return "digits"
    return "mnist"


def _speedup_record(spec, seq, pk, n_seq, dataset, epochs, iterations, isolate, load_before) -> dict:
    """cohort_speedup's result: the sequential side scaled from its n_seq timed runs to K."""
    k, model = spec["k"], spec["model"]
    scale = k / n_seq
    return {
        "cohort_speedup": seq["wall"] * scale / pk["wall"],
        "cohort_speedup_cpu": seq["cpu"] * scale / pk["cpu"] if pk["cpu"] > 0 else math.nan,
        "cohort_peak_memory_ratio": pk["peak"] / seq["peak"] if seq["peak"] > 0 else math.nan,
        "k": k,
        "model": model,
        "dataset": dataset,
        "epochs": epochs,
        "rounds": iterations + 1,
        "device": pk["device"],
        "threads": spec["threads"],
        "impl": pk["impl"],
        "isolated": isolate,
        "cohort_seconds": pk["wall"],
        "sequential_seconds": seq["wall"] * scale,
        "sequential_runs_timed": n_seq,
        "cohort_cpu_seconds": pk["cpu"],
        "sequential_cpu_seconds": seq["cpu"] * scale,
        "cohort_peak_bytes": pk["peak"],
        "single_run_peak_bytes": seq["peak"],
        "memory": pk["memory"],
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def cohort_speedup(
    k: int = 11,
    model: str = "fc_lot",
    dataset: str = "auto",
    epochs: int = 1,
    iterations: int = 0,
    sequential: int | None = None,
    overrides=(),
    workdir: str | Path | None = None,
    impl: str = "auto",
    isolate: bool = True,
) -> dict:
    """Throughput of K variants (the paper's phi grid, strategy mask0) trained in a cohort vs the same K runs one
    after another through phicenter.engine.run.run (Lightning), and their peak memory.

    dataset "auto": MNIST when readable under data_dir, else digits. `sequential`: time only this many of the
    K sequential runs and scale (all are the same work); None: all.
    `overrides`: extra Hydra overrides for both (e.g. ["data_dir=../shared/data", "batch_size=60"]).
    `isolate`: each side in a fresh Python process (clean allocator, so peak memories compare), the decode
    cache warmed first, lazy imports paid by an untimed tiny run on each side.
    Returns cohort_speedup (sequential / cohort wall time), cohort_speedup_cpu (the same in CPU time, steadier
    on a shared machine), cohort_peak_memory_ratio (cohort peak / one run's, each above the memory in use just
    before it: CUDA allocator peak, or resident set on CPU), the raw figures and the load average."""
    import shutil
    import tempfile

    from phicenter.engine.build import load_data

    if k < 1:
        raise ValueError("k must be >= 1")
    # both sides train every round of every variant: the round store would reuse the shared ones
    base = [
        f"model={model}",
        f"epochs={epochs}",
        f"prune.iterations={iterations}",
        "round_store.enabled=false",
        *overrides,
    ]
    dataset = _pick_dataset(base, dataset)
    base.append(f"dataset={dataset}")
    load_data(_compose(base))  # decode cache warm for both sides
    n_seq = k if sequential is None else max(1, min(int(sequential), k))
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="phicenter-cohort-bench-")) if own else Path(workdir)
    spec = {
        "k": k,
        "overrides": base,
        "model": model,
        "impl": impl,
        "threads": torch.get_num_threads(),
        "work": str(work),
    }
    try:
        load_before = _loadavg()
        seq = _phase(dict(spec, side="sequential", n=n_seq), isolate)
        pk = _phase(dict(spec, side="cohort", n=k), isolate)
        return _speedup_record(spec, seq, pk, n_seq, dataset, epochs, iterations, isolate, load_before)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _masked_net(model: str, input_shape, num_classes: int, seed: int, g: torch.Generator):
    """The net as in round 1: a seeded 20 % of each layer's weights dead."""
    from phicenter import models
    from phicenter.method import pruning

    net = models.build(model, input_shape, num_classes, seed=seed)
    for layer in pruning.attach_masks(net).values():
        mask = pruning.mask_of(layer).mask
        mask.copy_(torch.rand(mask.shape, generator=g) >= 0.2)
    pruning.reapply_masks(net)
    return net


def _aten_self_times(step, n: int) -> tuple[dict[str, float], float]:
    """({aten op: self CPU time, us}, wall time in us) of n profiled calls of step(i)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(n):
            step(i)
        wall_us = (time.perf_counter() - t) * 1e6
    return {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")}, wall_us


def _median_step_ms(a, b, steps: int, repeats: int) -> tuple[float, float]:
    """Median ms per call of a(i) and of b(i) over `repeats` interleaved runs of `steps` calls (load drifts
    cancel), after 5 untimed calls of each (allocator, lazy optimizer state)."""

    def timed(step) -> float:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        return (time.perf_counter() - t) / steps * 1e3

    for i in range(5):
        a(steps + i)
        b(steps + i)
    times = [(timed(a), timed(b)) for _ in range(repeats)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def cohort_step_breakdown(
    k: int = 11,
    model: str = "fc_lot",
    input_shape=(1, 28, 28),
    num_classes: int = 10,
    batch_size: int = 60,
    steps: int = 40,
    repeats: int = 5,
    optim: dict | None = None,
) -> dict:
    """Where a training step's time goes, on CPU, for one lean run alone vs K variants in a cohort; the nets masked
    as in round 1, so every step makes the two mask passes. single_ms: one step of a plain loop (the product's
    optimizer and mask passes, no framework); cohort_ms_per_variant: a cohort's step ("loop") divided by K;
    kernel_ms_per_variant: the part of it inside the variants' own aten kernels (torch.profiler self time),
    which a cohort on this device does not remove. So single_ms / kernel_ms_per_variant bounds what any cohort
    can gain here over a lean loop alone, and single_ms / cohort_ms_per_variant is what a cohort gains now."""
    from phicenter.method import pruning

    optim = optim or {"name": "adam", "lr": 1.2e-3, "fused": True}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 5, batch_size, *input_shape, generator=g)
    y = torch.randint(0, num_classes, (steps + 5, batch_size), generator=g)
    nets = [_masked_net(model, input_shape, num_classes, i, g) for i in range(k)]

    single = copy.deepcopy(nets[0])
    opt, _ = make_optimizer(single.parameters(), optim, None, 1)

    def single_step(i):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(single(x[i]), y[i]).backward()
        pruning.zero_dead_grads(single)
        opt.step()
        pruning.reapply_masks(single)

    pk = StackedNet(nets, impl="loop")
    popt, _ = make_optimizer(pk.optimizer_parameters(), optim, None, 1)

    cohort_one = lambda i: stacked_step(pk, popt, x[i], y[i])

    single_ms, cohort_ms = _median_step_ms(single_step, cohort_one, steps, repeats)
    ops, wall_us = _aten_self_times(cohort_one, max(5, steps // 4))
    # the profiler slows every op a little: take the kernels' share of the profiled time, applied to the
    # unprofiled step
    share = min(1.0, sum(ops.values()) / wall_us)
    kernel_ms = share * cohort_ms / k
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])
    return {
        "k": k,
        "model": model,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "optimizer": optim["name"],
        "single_ms": single_ms,
        "cohort_ms_per_variant": cohort_ms / k,
        "kernel_share": share,
        "kernel_ms_per_variant": kernel_ms,
        "kernels_ms_per_variant": {name: us / wall_us * cohort_ms / k for name, us in ranked},
        "cohort_gain": single_ms / (cohort_ms / k),
        "cohort_bound": single_ms / kernel_ms if kernel_ms > 0 else math.nan,
    }


def _device(cfg) -> torch.device:
    from phicenter.config import settings

    acc = settings(cfg).trainer.accelerator
    return (
        torch.device("cuda", 0) if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available() else torch.device("cpu")
    )


def _loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _phase(spec: dict, isolate: bool) -> dict:
    if not isolate:
        return bench_phase(spec)
    import json
    import subprocess
    import sys

    root = str(CONF_DIR.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    code = (
        "import json, sys; from phicenter.bench.cohort import bench_phase; "
        "print('PHASE ' + json.dumps(bench_phase(json.loads(sys.argv[1]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PHASE "):
            return json.loads(line[len("PHASE ") :])
    raise RuntimeError(f"bench phase {spec['side']} failed:\n{proc.stderr[-3000:]}")


def bench_phase(spec: dict) -> dict:
    """One side of cohort_speedup: {"wall", "cpu", "peak", ...} for K sequential runs or one cohort."""
    from phicenter.engine.build import load_data
    from phicenter.engine.loop import run, train

    torch.set_num_threads(int(spec["threads"]))
    work = Path(spec["work"]) / spec["side"]
    cfg = _compose(list(spec["overrides"]))
    variants = make_variants(cfg, _bench_phis(spec["k"]))[: spec["n"]]
    device = _device(cfg)
    load_data(cfg)
    warm = make_variants(
        _compose(
            [
                f"model={spec['model']}",
                "dataset=synthetic",
                "dataset.n_train=300",
                "epochs=1",
                "prune.iterations=0",
                "round_store.enabled=false",
            ]
        ),
        [0.0],
    )
    if spec["side"] == "sequential":  # lazy imports and first-call costs, untimed
        run(warm[0].cfg, work / "warmup")
    else:
        train(warm, work / "warmup", impl=spec["impl"])
    wall = cpu = 0.0
    peak, impl = 0, None
    for group in [[v] for v in variants] if spec["side"] == "sequential" else [variants]:
        m = _mem_start(device)
        t, c = time.perf_counter(), time.process_time()
        if spec["side"] == "sequential":
            run(group[0].cfg, work / group[0].name)
        else:
            impl = cohort_of(next(iter(train(group, work / "runs", impl=spec["impl"]).values())))["impl"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        peak = max(peak, _mem_peak(device, m))
    return {
        "wall": wall,
        "cpu": cpu,
        "peak": peak,
        "device": str(device),
        "impl": impl or "unstacked",
        "memory": m["how"],
    }


def _bench_phis(k: int) -> list[float]:
    return list(PAPER_PHIS[:k]) + [round(0.2 * (i + 1), 6) for i in range(max(0, k - len(PAPER_PHIS)))]
