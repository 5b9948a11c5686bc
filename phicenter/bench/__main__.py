"""`python -m phicenter.bench [--quick] [--out FILE]`: phicenter's training path against plain PyTorch.

Everything runs in one process, on the same model objects and the same resident data, interleaved (the order
alternates every repeat) and repeated; each number is the median of the repeats.

  (a) loop overhead: one training epoch through the real path (the experiment's composed config, the round
      loop's Trainer settings and callbacks, CohortModule, data.loaders) ÷ the same epoch in a minimal hand-written
      loop (same masked net, optimizer, batch size and device; pre-normalised float data indexed by a
      permutation). fc_lot on MNIST-shaped data, conv4 on CIFAR-shaped data, augmentation off in both.
      The ratio is the median over repeats of each repeat's two back-to-back epochs (drifting load cancels).
  (b) data path: phicenter's Batches (crop + flip + normalise, batched on the device) ÷ a torchvision
      DataLoader over per-sample PIL transforms (num_workers 0 and 2, unseeded: the usual way), CIFAR-shaped.
  (c) prune + re-sign + reinit (IMP.advance) as a share of a round of the paper's length, each strategy.
  (d) throughput: images/s and model FLOPs per image (counted by torch.utils.flop_counter on one real
      step), and on a GPU the model FLOPs utilisation and an estimate of the whole paper grid in GPU-hours.
  (e) masks: the module's training step on a masked net ÷ on the same net unmasked (fc_lot, conv4), and a
      real run's masked round ÷ its dense round (bench.masking).
  (f) threads: fc_lot and conv2 epochs of the real path at 1 and 2 torch threads (bench.masking).

Real MNIST/CIFAR-10 are used when --data-dir holds them; otherwise seeded synthetic data of the same shapes.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

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

SIZES = {  # default / --quick: training images per epoch for (a) and (e), images for (b), repeats; (e)'s round
    False: {"fc_lot": 30000, "conv4": 240, "data": 4000, "repeats": 7, "gpu_images": 20000, "round_epochs": 2},
    True: {"fc_lot": 6000, "conv4": 120, "data": 600, "repeats": 3, "gpu_images": 4000, "round_epochs": 1},
}


def _quiet():
    warnings.filterwarnings(
        "ignore",
        message=".*(does not have many workers|validation_step|val_dataloader|"
        "log_every_n_steps|LeafSpec|GPU available|TPU available).*",
    )
    import logging

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def bench_loop(sizes, args, device) -> dict:
    out = {}
    for key, experiment in (("fc_lot", "mnist_fc_lot"), ("conv4", "cifar10_conv4")):
        case = Case(experiment, sizes[key], args.data_dir, device, workdir=args.workdir / key)
        t = interleaved({"phicenter": case.phicenter_epoch, "plain": case.plain_epoch}, sizes["repeats"])
        p, q = med(t["phicenter"]), med(t["plain"])
        # Each repeat's two epochs ran back to back: the median of their ratios cancels slow drifts in load.
        ratio = med([a / b for a, b in zip(t["phicenter"], t["plain"])])
        ckpts = case.checkpoint_s[-len(t["phicenter"]) :]
        fpi = case.flops_per_image()
        out[key] = {
            "experiment": experiment,
            "data": case.source,
            "images": case.n,
            "batch_size": case.batch_size,
            "phicenter_epoch_s": p,
            "plain_epoch_s": q,
            "ratio": ratio,
            "ratio_of_medians": p / q,
            "epoch_checkpoint_s": med(ckpts),
            "ratio_without_checkpoint": med([(a - c) / b for a, b, c in zip(t["phicenter"], t["plain"], ckpts)]),
            "phicenter_all_s": t["phicenter"],
            "plain_all_s": t["plain"],
            "images_per_s": case.n / p,
            "train_flops_per_image": fpi,
            "case": case,
        }
    return out


def bench_data(sizes, args, device) -> dict:
    """CIFAR-shaped, augmentation on, batch 128: phicenter's Batches vs a torchvision DataLoader."""
    from phicenter import data

    n, bs = sizes["data"], 128
    splits = data.load("synthetic", ".", val_size=10, n_train=n + 10, n_test=10, shape=(3, 32, 32))
    dev = torch.device(device)
    fast = data.Batches(
        splits.x_train, splits.y_train, splits.mean, splits.std, bs, shuffle=True, augment=True, seed=0
    ).to(dev)

    def tv(workers):
        ds = data.ImageDataset(splits.x_train, splits.y_train, splits.mean, splits.std, augment=True, seeded=False)
        return data.LoaderBatches(ds, bs, shuffle=True, num_workers=workers).to(dev)

    loaders = {"fast": fast, "torchvision_workers0": tv(0), "torchvision_workers2": tv(2)}

    def epoch(b):
        def go():
            t0 = time.perf_counter()
            for x, y in b:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        return go

    t = interleaved({k: epoch(b) for k, b in loaders.items()}, sizes["repeats"])
    m = {k: med(v) for k, v in t.items()}
    best_tv = min(m["torchvision_workers0"], m["torchvision_workers2"])
    return {
        "images": n,
        "batch_size": bs,
        "augment": True,
        **{f"{k}_epoch_s": v for k, v in m.items()},
        "speedup_vs_workers0": m["torchvision_workers0"] / m["fast"],
        "speedup_vs_workers2": m["torchvision_workers2"] / m["fast"],
        "speedup": best_tv / m["fast"],
        "fast_images_per_s": n / m["fast"],
        "torchvision_images_per_s": n / best_tv,
    }


def bench_prune(loop: dict, sizes, args, device) -> dict:
    """IMP.advance for each strategy, against a round of the experiment's length at the measured speed."""
    from phicenter.config import validate
    from phicenter.engine import build

    out = {}
    for key, row in loop.items():
        if key != "fc_lot" and args.quick:
            continue  # --quick: the smallest model only (the largest share: shortest round)
        # every strategy for fc_lot; the paper's four for the bigger model, whose share is far smaller
        strategies = ("mask0", "mask1", "gradual", "standard") + (("lth", "random") if key == "fc_lot" else ())
        case = row["case"]
        epochs = int(case.cfg.epochs)
        times = {}
        for s in strategies:
            cfg = compose([f"experiment={case.experiment}", f"strategy={s}"])
            net = build.build_model(cfg, case.splits).to(device)
            imp = build.build_imp(cfg, net, validate(cfg))
            ts = []
            for r in range(1, sizes["repeats"] + 1):
                with torch.no_grad():  # stand-in for training: move every weight a little
                    for p in net.parameters():
                        p.add_(torch.randn_like(p) * 1e-2)
                case.sync()
                t0 = time.perf_counter()
                imp.advance(r)
                case.sync()
                ts.append(time.perf_counter() - t0)
            times[s] = med(ts)
        n_real = TRAIN_SIZE.get(case.dataset, case.n)
        round_train = epochs * n_real / row["images_per_s"]
        worst = max(times, key=times.get)
        out[key] = {
            "advance_s": times,
            "epochs_per_round": epochs,
            "train_images": n_real,
            "round_train_s_est": round_train,
            "worst_strategy": worst,
            "share": times[worst] / (times[worst] + round_train),
        }
    return out


def bench_masks(sizes, args, device) -> dict | None:
    """(e): masked vs dense training steps (fc_lot, conv4) and rounds (fc_lot), on the CPU."""
    if device != "cpu":
        return None
    from phicenter.bench import masking

    reps = sizes["repeats"]
    return {
        "step": {
            "fc_lot": masking.masked_step("mnist_fc_lot", sizes["fc_lot"], reps, args.data_dir),
            "conv4": masking.masked_step("cifar10_conv4", sizes["conv4"], max(1, reps // 2), args.data_dir),
        },
        "round": masking.masked_round(
            sizes["fc_lot"], sizes["round_epochs"], max(1, reps // 2), args.data_dir, workdir=args.workdir / "rounds"
        ),
    }


def bench_threads(sizes, args, device) -> dict | None:
    """(f): fc_lot and conv2 epochs at 1 and 2 torch threads (a CPU with 2 cores or more)."""
    if device != "cpu" or (os.cpu_count() or 1) < 2:
        return None
    from phicenter.bench import masking

    return masking.threads(
        {"mnist_fc_lot": sizes["fc_lot"], "cifar10_conv2": 2 * sizes["conv4"]},
        max(1, sizes["repeats"] // 2),
        args.data_dir,
        workdir=args.workdir / "threads",
    )


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


def bench_gpu(sizes, args, device) -> dict:
    """Per experiment: images/s of phicenter epochs at the given precision, FLOPs/image, MFU, and the grid (the
    paper's experiments; with --reference also each reference experiment, estimated apart)."""
    from omegaconf import OmegaConf

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
        base = compose([f"experiment={exp}"])
        sweep = OmegaConf.select(OmegaConf.load(CONF / "experiment" / f"{exp}.yaml"), "hydra.sweeper.params") or {}
        runs = math.prod(len(str(values).split(",")) for values in sweep.values())
        rounds = int(base.prune.iterations) + 1
        n_train = TRAIN_SIZE.get(case.dataset, case.n)
        val, test = EVAL_SIZE.get(case.dataset, (0, 0))
        # Evaluation (a forward pass, about a third of a training step's FLOPs) every epoch on val, once on test.
        round_s = int(base.epochs) * (n_train + (val / 3)) / ips + (test / 3) / ips
        hours = runs * rounds * round_s / 3600
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
            "epochs_per_round": int(base.epochs),
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
def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def table(res: dict) -> str:
    L = [
        f"phicenter.bench on {res['device_name']} ({res['device']}, {res['threads']} torch threads, "
        f"{'quick' if res['quick'] else 'default'}, median of {res['repeats']}; loadavg {res['loadavg_start']})",
        "",
        "| measure | phicenter | baseline | ratio | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, r in res["loop"].items():
        L.append(
            f"| (a) {key} epoch, {r['data']}, {r['images']} images, batch {r['batch_size']} | "
            f"{r['phicenter_epoch_s']:.3f} s | {r['plain_epoch_s']:.3f} s (plain loop) | {r['ratio']:.3f} | "
            f"{'≤ 1.10' if key == 'fc_lot' else '—'} |"
        )
    d = res["data"]
    L.append(
        f"| (b) data epoch, CIFAR-shaped, crop+flip, {d['images']} images, batch {d['batch_size']} | "
        f"{d['fast_epoch_s']:.3f} s | {d['torchvision_workers0_epoch_s']:.3f} s (0 workers), "
        f"{d['torchvision_workers2_epoch_s']:.3f} s (2 workers) | {d['speedup']:.1f}× faster | ≥ 3× |"
    )
    for key, p in res["prune"].items():
        L.append(
            f"| (c) {key} prune+re-sign+reinit ({p['worst_strategy']}, slowest) vs a round "
            f"({p['epochs_per_round']} epochs × {p['train_images']} images, est.) | "
            f"{p['advance_s'][p['worst_strategy']]:.3f} s | {p['round_train_s_est']:.1f} s | "
            f"{100 * p['share']:.3f} % | < 1 % |"
        )
    for key, r in res["loop"].items():
        L.append(
            f"| (d) {key} throughput ({res['device']}, 32-bit) | {r['images_per_s']:.0f} images/s | "
            f"{r['train_flops_per_image'] / 1e6:.1f} MFLOP/image | "
            f"{r['images_per_s'] * r['train_flops_per_image'] / 1e9:.2f} GFLOP/s | — |"
        )
    m = res.get("masks")
    if m:
        for key, r in m["step"].items():
            L.append(
                f"| (e) {key} training step, masked ({r['strategy']}, {100 * r['sparsity']:.0f} % dead) vs "
                f"the same net unmasked, {r['images']} images | {r['masked_step_ms']:.3f} ms | "
                f"{r['dense_step_ms']:.3f} ms | {r['ratio']:.3f} (CPU time {r['cpu_ratio']:.3f}) | "
                f"{'≤ 1.05' if key == 'fc_lot' else '—'} |"
            )
        r = m["round"]
        L.append(
            f"| (e) fc_lot round 1 (masked) vs round 0 (dense), {r['epochs']} epochs × {r['images']} images | "
            f"{r['masked_round_s']:.2f} s | {r['dense_round_s']:.2f} s | {r['ratio']:.3f} | — |"
        )
    t = res.get("threads_rows")
    if t:
        for r in t["rows"].values():
            L.append(
                f"| (f) {r['model']} epoch at 2 threads vs 1, {r['images']} images | {r['epoch_s']['2']:.3f} s | "
                f"{r['epoch_s']['1']:.3f} s (1 thread) | {r['speedup_2_vs_1']:.2f}× | — |"
            )
    g = res.get("gpu")
    if g:
        for exp, r in g["rows"].items():
            ref = f", reference: {r['grid_hours_est']:.2f} GPU-hours a seed" if r.get("reference") else ""
            L.append(
                f"| (d) {exp} ({r['precision']}{ref}) | {r['images_per_s']:.0f} images/s | "
                f"{r['tflops_per_s']:.1f} TFLOP/s of {_fmt(r['peak_tflops'], '.0f')} | MFU {_fmt(r['mfu'])} | "
                f"{'≥ 0.30' if r['model'] == 'vgg16' else '—'} |"
            )
        L.append(f"| (d) paper grid, estimated | {_fmt(g['grid_hours_est'], '.2f')} GPU-hours | | | ≤ 12 |")
        if g.get("reference_hours_est") is not None:
            L.append(
                f"| (d) reference experiments, estimated | {g['reference_hours_est']:.2f} GPU-hours (one seed "
                "each) | | | — |"
            )
    else:
        L.append("| (d) MFU, paper grid in GPU-hours | — (no GPU) | | | |")
    return "\n".join(L)


def packed_rows(res: dict, args, device: str) -> None:
    """K = 11 variants trained as one cohort vs one after another (fc_lot; conv2 on a GPU or on request),
    and on CPU where a stacked step's time goes."""
    from phicenter.bench.packed import packed_speedup

    t0 = time.perf_counter()
    over = [f"data_dir={args.data_dir}"] if args.data_dir else []
    res["packed"] = packed_speedup(k=11, model="fc_lot", epochs=1, overrides=over, sequential=3 if args.quick else None)
    res["section_s"]["packed"] = round(time.perf_counter() - t0, 1)
    res["packed_speedup"] = res["packed"]["packed_speedup"]
    res["packed_peak_memory_ratio"] = res["packed"]["packed_peak_memory_ratio"]
    if device == "cuda" or args.packed_conv2:  # the issue's second GPU row: a small conv net
        n = 1000 if args.quick else 10000
        res["packed_conv2"] = packed_speedup(
            k=11,
            model="conv2",
            dataset="synthetic",
            epochs=1,
            sequential=3 if args.quick else None,
            overrides=[
                "dataset.shape=[3,32,32]",
                f"dataset.n_train={n}",
                "dataset.n_test=500",
                "dataset.val_size=500",
                "batch_size=60",
            ],
        )
        res["packed_speedup_conv2"] = res["packed_conv2"]["packed_speedup"]
    if device == "cpu":  # what packing can gain at all here: the variants' own kernels stay
        from phicenter.bench.packed import packed_step_breakdown

        res["packed_step"] = packed_step_breakdown(k=11, steps=20 if args.quick else 40, repeats=3 if args.quick else 7)
        res["section_s"]["packed"] = round(time.perf_counter() - t0, 1)


def print_summary(res: dict) -> None:
    print(
        f"\nloop_overhead_ratio {res['loop_overhead_ratio']:.3f}  data_speedup {res['data_speedup']:.1f}  "
        f"prune_share {100 * res['prune_share']:.3f} %  ({res['seconds']:.0f} s)"
    )
    if "masked_step_ratio" in res:
        print(
            f"masked_step_ratio {res['masked_step_ratio']:.3f} (fc_lot; conv4 {res['masked_step_ratio_conv4']:.3f})  "
            f"masked_round_ratio {res['masked_round_ratio']:.3f}"
        )
    if "packed_speedup" in res:
        print(
            f"packed_speedup {res['packed_speedup']:.2f} (K = 11 fc_lot, packed vs sequential)  "
            f"packed_peak_memory_ratio {res['packed_peak_memory_ratio']:.2f}"
        )
    if "packed_speedup_conv2" in res:
        print(
            f"packed_speedup_conv2 {res['packed_speedup_conv2']:.2f} (K = 11 conv2, CIFAR-shaped, packed vs "
            f"sequential)  peak memory ratio {res['packed_conv2']['packed_peak_memory_ratio']:.2f}"
        )
    if res.get("packed_step"):
        st = res["packed_step"]
        kernels = ", ".join(f"{k[6:]} {v:.2f}" for k, v in st["top_kernels_ms_per_variant"].items() if v >= 0.05)
        print(
            f"packed step (fc_lot, K = 11): one lean unpacked step {st['single_ms']:.2f} ms; packed "
            f"{st['packed_ms_per_variant']:.2f} ms per variant, of which {st['kernel_ms_per_variant']:.2f} ms in "
            f"the variant's own kernels ({kernels}): per-step gain {st['packing_gain']:.2f}x, bound for any "
            f"packing here {st['packing_bound']:.2f}x"
        )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m phicenter.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller version, under a minute on 2 CPU cores")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--data-dir",
        default=os.environ.get("PHICENTER_DATA_DIR"),
        help="use real MNIST / CIFAR-10 from here when present (default: $PHICENTER_DATA_DIR)",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: stable on a shared machine; both sides use the same)",
    )
    ap.add_argument("--repeats", type=int, help="timed repeats of each measurement (median is reported)")
    ap.add_argument(
        "--images",
        type=int,
        nargs=3,
        metavar=("FC_LOT", "CONV4", "DATA"),
        help="images per epoch for (a) fc_lot, (a) conv4 and (b)",
    )
    ap.add_argument("--precision", default="bf16-mixed", help="trainer.precision for the GPU rows")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at that precision, for MFU")
    ap.add_argument("--gpu-rows", action="store_true", help="run the per-experiment throughput rows off a GPU too")
    ap.add_argument("--gpu-experiments", nargs="*", help="only these experiments in the GPU rows")
    ap.add_argument("--compile", action="store_true", help="compile=true for the GPU rows")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="the GPU rows also estimate each reference experiment (docs/reproductions.md), apart",
    )
    ap.add_argument(
        "--no-packed",
        dest="packed",
        action="store_false",
        help="skip the packed-sweep row (K = 11 variants packed vs 11 sequential runs)",
    )
    ap.add_argument(
        "--packed-conv2", action="store_true", help="add the packed conv2 row off a GPU too (on a GPU it always runs)"
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    _quiet()
    from phicenter.engine import build

    build.quiet_lightning()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    sizes = dict(SIZES[args.quick])
    if args.repeats:
        sizes["repeats"] = args.repeats
    if args.images:
        sizes["fc_lot"], sizes["conv4"], sizes["data"] = args.images
        sizes["gpu_images"] = max(args.images[:2])
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    res = {
        "device": device,
        "device_name": (torch.cuda.get_device_name() if device == "cuda" else _cpu_name()),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "repeats": sizes["repeats"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in load0],
    }
    with tempfile.TemporaryDirectory(prefix="phicenter-bench-") as tmp:
        args.workdir = Path(tmp)
        res["section_s"] = {}
        for key, fn in (
            ("loop", bench_loop),
            ("data", bench_data),
            ("prune", bench_prune),
            ("gpu", bench_gpu),
            ("masks", bench_masks),
            ("threads_rows", bench_threads),
        ):
            t0 = time.perf_counter()
            if key == "gpu" and not (device == "cuda" or args.gpu_rows):
                res[key] = None
                continue
            res[key] = fn(res["loop"], sizes, args, device) if key == "prune" else fn(sizes, args, device)
            res["section_s"][key] = round(time.perf_counter() - t0, 1)
    for row in res["loop"].values():
        row.pop("case")
    res["loop_overhead_ratio"] = res["loop"]["fc_lot"]["ratio"]
    res["loop_overhead_ratio_conv4"] = res["loop"]["conv4"]["ratio"]
    res["data_speedup"] = res["data"]["speedup"]
    res["prune_share"] = res["prune"]["fc_lot"]["share"]
    res["mfu"] = res["gpu"]["rows"].get("cifar10_vgg16", {}).get("mfu") if res["gpu"] else None
    res["grid_gpu_hours_est"] = res["gpu"]["grid_hours_est"] if res["gpu"] and device == "cuda" else None
    if res["masks"]:
        res["masked_step_ratio"] = res["masks"]["step"]["fc_lot"]["ratio"]
        res["masked_step_ratio_conv4"] = res["masks"]["step"]["conv4"]["ratio"]
        res["masked_round_ratio"] = res["masks"]["round"]["ratio"]
    res["reference_gpu_hours_est"] = res["gpu"].get("reference_hours_est") if res["gpu"] and device == "cuda" else None
    if args.packed:
        packed_rows(res, args, device)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["seconds"] = time.perf_counter() - t_start
    print(table(res))
    print_summary(res)
    if args.out:
        from phicenter.io import write_json

        write_json(Path(args.out), res)
    return res


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
