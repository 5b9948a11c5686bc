"""Bench row (d) on a GPU: throughput, model FLOPs utilisation against the GPU's peak, and the GPU-hours of each
reference experiment and of the whole paper grid at that speed."""

from __future__ import annotations

import math
import platform

import torch

from phicenter import CONF_DIR as CONF
from phicenter.bench.cases import EVAL_SIZE, TRAIN_SIZE, Case, compose, interleaved, med

PEAKS = [
    ("H100 PCIe", {"bf16": 756.0, "16": 756.0, "32": 51.2}),
    ("H100", {"bf16": 989.4, "16": 989.4, "32": 66.9}),
    ("H200", {"bf16": 989.4, "16": 989.4, "32": 66.9}),
    ("A100", {"bf16": 312.0, "16": 312.0, "32": 19.5}),
    ("L40S", {"bf16": 362.0, "16": 362.0, "32": 91.6}),
    ("L4", {"bf16": 121.0, "16": 121.0, "32": 30.3}),
]


def _peak(device_name: str, precision: str) -> float | None:
    kind = "bf16" if "bf16" in precision else "16" if precision.startswith("16") else "32"
    for name, peaks in PEAKS:
        if name.lower() in device_name.lower():
            return peaks[kind]
    return None


def reference_experiments() -> set[str]:
    """The experiments that reproduce another paper (a `reference` block): apart from the paper grid."""
    from omegaconf import OmegaConf

    return {p.stem for p in (CONF / "experiment").glob("*.yaml") if OmegaConf.load(p).get("reference") is not None}


def _grid_hours(exp: str, case: Case, images_per_s: float) -> tuple[int, int, int, float]:
    """(runs of its sweep, rounds, epochs a round, GPU-hours) of an experiment at the measured speed. Evaluation
    (a forward pass, about a third of a training step's FLOPs) every epoch on val, once on test. sign_transfer
    also trains a transfer at every round >= 1, of its own epochs (engine.transfer.transfer_recipe)."""
    from omegaconf import OmegaConf

    base = compose([f"experiment={exp}"])
    sweep = OmegaConf.select(OmegaConf.load(CONF / "experiment" / f"{exp}.yaml"), "hydra.sweeper.params") or {}
    runs = math.prod(len(str(values).split(",")) for values in sweep.values())
    rounds, epochs = int(base.prune.iterations) + 1, int(base.epochs)
    n_train = TRAIN_SIZE.get(case.dataset, case.n)
    val, test = EVAL_SIZE.get(case.dataset, (0, 0))
    fit_s = lambda n_epochs: n_epochs * (n_train + (val / 3)) / images_per_s + (test / 3) / images_per_s
    seconds = rounds * fit_s(epochs)
    if base.strategy.name == "sign_transfer":
        from phicenter.engine.transfer import transfer_recipe

        seconds += (rounds - 1) * fit_s(transfer_recipe(base)[0])
    return runs, rounds, epochs, runs * seconds / 3600


def bench_gpu(sizes, args, device) -> dict:
    """Per experiment: images/s of phicenter epochs at the given precision, FLOPs/image, MFU, and the grid (the
    paper's experiments; with --reference also each reference experiment, estimated apart)."""
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    rows, grid_h, ref_h = {}, 0.0, 0.0
    refs = reference_experiments()
    experiments = sorted(
        p.stem
        for p in (CONF / "experiment").glob("*.yaml")
        if p.stem != "quickstart" and (getattr(args, "reference", False) or p.stem not in refs)
    )
    for exp in experiments:
        if args.gpu_experiments and exp not in args.gpu_experiments:
            continue
        case = Case(
            exp,
            sizes["gpu_images"],
            args.data_dir,
            device,
            precision=args.precision,
            workdir=args.workdir / f"gpu-{exp}",
            compile=args.compile,
        )
        t = interleaved({"phicenter": case.phicenter_epoch}, sizes["repeats"])
        sec = med(t["phicenter"])
        ips, fpi = case.n / sec, case.flops_per_image()
        peak = args.peak_tflops or _peak(name, args.precision)
        runs, rounds, epochs, hours = _grid_hours(exp, case, ips)
        if exp in refs:
            ref_h += hours
        else:
            grid_h += hours
        rows[exp] = {
            "model": case.cfg.model.name,
            "precision": args.precision,
            "images": case.n,
            "batch_size": case.batch_size,
            "epoch_s": sec,
            "images_per_s": ips,
            "train_flops_per_image": fpi,
            "tflops_per_s": ips * fpi / 1e12,
            "peak_tflops": peak,
            "mfu": (ips * fpi / 1e12 / peak) if peak else None,
            "compile": args.compile,
            "runs": runs,
            "rounds": rounds,
            "epochs_per_round": epochs,
            "grid_hours_est": hours,
            "reference": exp in refs,
        }
    paper = [e for e in rows if e not in refs]
    return {
        "device_name": name,
        "rows": rows,
        "grid_hours_est": grid_h if paper else None,
        "reference_hours_est": ref_h if len(paper) < len(rows) else None,
    }


# ---------------------------------------------------------------------------------------------------------
