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
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from phicenter.bench.cases import TRAIN_SIZE, Case, compose, interleaved, med
from phicenter.bench.gpu import bench_gpu
from phicenter.bench.summary import print_summary, table
from phicenter.method import paper

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
    from phicenter.engine import build

    out = {}
    for key, row in loop.items():
        if key != "fc_lot" and args.quick:
            continue  # --quick: the smallest model only (the largest share: shortest round)
        # every strategy for fc_lot; the paper's four for the bigger model, whose share is far smaller
        strategies = paper.STRATEGIES + (("lth", "random") if key == "fc_lot" else ())
        case = row["case"]
        epochs = int(case.cfg.epochs)
        times = {}
        for s in strategies:
            cfg = compose([f"experiment={case.experiment}", f"strategy={s}"])
            net = build.build_model(cfg, case.splits).to(device)
            imp = build.build_imp(cfg, net)
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


def cohort_rows(res: dict, args, device: str) -> None:
    """K = 11 variants trained as one cohort vs one after another (fc_lot; conv2 on a GPU or on request),
    and on CPU where a stacked step's time goes."""
    from phicenter.bench.cohort import cohort_speedup

    t0 = time.perf_counter()
    over = [f"data_dir={args.data_dir}"] if args.data_dir else []
    res["cohort"] = cohort_speedup(k=11, model="fc_lot", epochs=1, overrides=over, sequential=3 if args.quick else None)
    res["section_s"]["cohort"] = round(time.perf_counter() - t0, 1)
    res["cohort_speedup"] = res["cohort"]["cohort_speedup"]
    res["cohort_peak_memory_ratio"] = res["cohort"]["cohort_peak_memory_ratio"]
    if device == "cuda" or args.cohort_conv2:  # the second GPU row: a small conv net
        n = 1000 if args.quick else 10000
        res["cohort_conv2"] = cohort_speedup(
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
        res["cohort_speedup_conv2"] = res["cohort_conv2"]["cohort_speedup"]
    if device == "cpu":  # what a cohort can gain at all here: the variants' own kernels stay
        from phicenter.bench.cohort import cohort_step_breakdown

        res["cohort_step"] = cohort_step_breakdown(k=11, steps=20 if args.quick else 40, repeats=3 if args.quick else 7)
        res["section_s"]["cohort"] = round(time.perf_counter() - t0, 1)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="phicenter bench", description=__doc__.split("\n")[0])
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
        "--no-cohort",
        dest="cohort",
        action="store_false",
        help="skip the cohort rows (K = 11 variants in a cohort vs 11 sequential runs)",
    )
    ap.add_argument(
        "--cohort-conv2", action="store_true", help="add the cohort conv2 row off a GPU too (on a GPU it always runs)"
    )
    return ap


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)

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
    res = _machine(device, args.quick, sizes["repeats"])
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
    _headline(res, device)
    if args.cohort:
        cohort_rows(res, args, device)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["seconds"] = time.perf_counter() - t_start
    print(table(res))
    print_summary(res)
    if args.out:
        from phicenter.io import write_json

        write_json(Path(args.out), res)
    return res


def _machine(device: str, quick: bool, repeats: int) -> dict:
    """What the numbers were measured on."""
    return {
        "device": device,
        "device_name": (torch.cuda.get_device_name() if device == "cuda" else _cpu_name()),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "repeats": repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _headline(res: dict, device: str) -> None:
    """The figures each target is read from, at the top level of the results."""
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
