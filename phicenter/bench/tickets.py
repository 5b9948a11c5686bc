"""`python -m phicenter.bench.tickets [--out FILE] [--rounds 1,2,4,6,8,10] [--models conv2,vgg16,resnet20]`: what a
structured ticket weighs and how fast it runs, side by side with the dense and the masked network.

For each model (CIFAR-shaped input, 10 classes) the structured schedule (`prune.method=structured`, base 0.8,
layer scope: each removable layer loses 20 % of its alive units per round) is applied to the initialisation
with IMP.advance (mask0), untrained: file sizes and latency depend on the masks' shapes, not on trained
values. At each round asked for, in one process on the CPU:

- file sizes: the dense network as safetensors (float32 weights), the round checkpoint phicenter keeps (torch.save
  of the state with masks and fills), the signed ticket (phicenter.ticket: packed masks and signs, survivors'
  magnitudes) and the compact ticket (the network without its removed units), and its ONNX model;
- CPU inference latency at batch 1 and batch 256 (random inputs, eval mode, torch.inference_mode) of the
  dense network, the masked one (the same shapes with pruned weights at 0: what `ticket.load` gives) and the
  compact one (`ticket.load` of the compact ticket), interleaved (the order rotates every repeat), median of
  the repeats.

Run it at one torch thread (the default) under `nice`; the report gives the machine and its load average.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time

import torch

from phicenter.bench.cases import interleaved, med

MODELS = ("conv2", "vgg16", "resnet20")
ROUNDS = (1, 2, 4, 6, 8, 10)
SHAPE, CLASSES = (3, 32, 32), 10
REPEATS = {1: 21, 256: 3}  # timed calls per batch size (after one untimed call each)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sizes(net, masked_state: dict, t, compact_t, compact_net) -> dict:
    """Bytes of each file (see the module's docstring)."""
    from safetensors.torch import save

    from phicenter import ticket
    from phicenter.ticket import onnxfile

    buf = io.BytesIO()
    torch.save({"round": 0, "model": masked_state, "rounds": []}, buf)
    dense = {k: v for k, v in masked_state.items() if not k.endswith(("_mask", "_fill"))}
    out = {
        "dense": len(save({k: v.contiguous() for k, v in dense.items()})),
        "checkpoint": buf.tell(),
        "ticket": len(ticket.to_bytes(t)),
        "compact": len(ticket.to_bytes(compact_t)),
        "onnx": None,
    }
    if onnxfile.missing() is None:
        out["onnx"] = len(onnxfile.export(compact_net, torch.zeros(1, *SHAPE)))
    return out


def latency(nets: dict, batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one forward pass of each net at `batch`, interleaved."""
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))

    def timed(net):
        def call():
            with torch.inference_mode():
                t0 = time.perf_counter()
                net(x)
                return time.perf_counter() - t0

        return call

    runs = interleaved({k: timed(n) for k, n in nets.items()}, repeats)
    return {k: med(v) for k, v in runs.items()}


def bench_model(name: str, rounds, log=print) -> list[dict]:
    """One row per round: sparsity, kept units, file sizes, latencies and the compact network's largest
    difference from the masked one's logits."""
    from phicenter import models, ticket
    from phicenter.method import pruning
    from phicenter.method.imp import IMP, IMPConfig
    from phicenter.method.strategies import build as strategy

    net = models.build(name, SHAPE, CLASSES, init="kaiming_normal").eval()
    dense = ticket.architecture(name, SHAPE, CLASSES, {})
    dense.load_state_dict({k: v.clone() for k, v in net.state_dict().items()}, assign=True)
    dense = dense.eval()
    imp = IMP(net, strategy("mask0"), IMPConfig(method="structured"))
    rows = []
    for r in range(1, max(rounds) + 1):
        imp.advance(r)
        if r not in rounds:
            continue
        masks = {n: pruning.mask_of(layer).mask.clone() for n, layer in imp.layers.items()}
        meta = {
            "model": name,
            "input_shape": list(SHAPE),
            "num_classes": CLASSES,
            "model_options": {},
            "phis": dict(imp.phis),
            "round": r,
            "config": {"model": {"name": name}},
        }
        t = ticket.encode(net, meta, imp.constants)
        compact_t = ticket.compacted(t)
        masked, compact = t.network(), compact_t.network()
        x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want = masked(x)
            diff = float((compact(x) - want).abs().max())
        kept = {n: int(m.flatten(1).any(1).sum()) for n, m in masks.items()}
        row = {
            "model": name,
            "round": r,
            "sparsity": pruning.sparsity(imp.layers)[0],
            "weights": sum(int(m.sum()) for m in masks.values()),
            "dense_weights": sum(m.numel() for m in masks.values()),
            "units_kept": kept,
            "compact_max_diff": diff,
            "largest_logit": float(want.abs().max()),
            "bytes": sizes(net, net.state_dict(), t, compact_t, compact),
            "latency_s": {},
        }
        for batch, repeats in REPEATS.items():
            row["latency_s"][batch] = latency({"dense": dense, "masked": masked, "compact": compact}, batch, repeats)
        rows.append(row)
        log(line(row))
    return rows


def _mb(n) -> str:
    return "—" if n is None else f"{n / 1e6:.3f}"


def _ms(s: float) -> str:
    return f"{1e3 * s:.2f}" if s < 1 else f"{1e3 * s:.0f}"


HEADER = (
    "| model | round | sparsity | dense / checkpoint / ticket / compact / ONNX (MB) | batch 1: dense / masked / "
    "compact (ms) | batch 256: dense / masked / compact (ms) | compact speedup (1 / 256) |\n"
    "|---|---|---|---|---|---|---|"
)


def line(row: dict) -> str:
    b, lat = row["bytes"], row["latency_s"]
    one, big = lat[1], lat[256]
    return (
        f"| {row['model']} | {row['round']} | {100 * row['sparsity']:.1f} % | {_mb(b['dense'])} / "
        f"{_mb(b['checkpoint'])} / {_mb(b['ticket'])} / {_mb(b['compact'])} / {_mb(b['onnx'])} | "
        f"{_ms(one['dense'])} / {_ms(one['masked'])} / {_ms(one['compact'])} | {_ms(big['dense'])} / "
        f"{_ms(big['masked'])} / {_ms(big['compact'])} | {one['dense'] / one['compact']:.2f}× / "
        f"{big['dense'] / big['compact']:.2f}× |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phicenter.bench.tickets", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated (default conv2,vgg16,resnet20)")
    p.add_argument("--rounds", default=",".join(map(str, ROUNDS)), help="rounds of the schedule (default 1,2,4,6,8,10)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", help="also write the rows and the machine to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = sorted({int(r) for r in args.rounds.split(",")})
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not rounds or rounds[0] < 1 or not names:
        p.error("--rounds must be rounds >= 1 and --models at least one model")
    load0, t0 = os.getloadavg(), time.perf_counter()
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {machine['threads']} thread(s); "
        f"load average {load0[0]:.2f}"
    )
    print(HEADER)
    rows = [row for name in names for row in bench_model(name, rounds)]
    load1 = os.getloadavg()
    seconds = time.perf_counter() - t0
    print(f"{seconds:.0f} s; load average (1 min) {load0[0]:.2f} at the start, {load1[0]:.2f} at the end")
    if args.out:
        from phicenter.io import write_json

        write_json(
            args.out,
            {"machine": machine, "load_average": {"start": load0, "end": load1}, "seconds": seconds, "rows": rows},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
