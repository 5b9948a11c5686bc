"""`python -m phicenter.bench.rounds [--out FILE]`: one grid trained with the round store off and on, side by side.

The default grid: fc_lot on scikit-learn's digits, 4 strategies x phi in {0, ±5e-5, ±1e-3, ±0.1},
`prune.iterations=3 epochs=20`, seed 0: 28 runs x 4 rounds = 112 rounds, of which 61 are distinct (round 0 is
shared by all 28; mask0 and standard re-sign nothing at |phi| <= 1e-3, so those runs are the phi = 0 run).
Each side trains the grid run by run in this one process, as the jobs of a multirun on Hydra's basic
launcher would, each into its own folder; the store-on side starts from an empty store. The two sides are
interleaved run by run, so that the machine's load weighs on both alike. Reported: the rounds
each side trained, the wall time of each side and their ratio, the wall time of a run all of whose rounds
were reused (what reuse cannot remove: setup, records, checkpoints), and whether every run's results.json
agrees between the sides apart from timing fields and the reuse record.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from phicenter.method import paper

STRATEGIES = paper.STRATEGIES
PHIS = (0.0, 5e-5, -5e-5, 1e-3, -1e-3, 0.1, -0.1)


def _comparable(path: Path) -> dict:
    from phicenter.io import read_json

    res = read_json(path)
    res["config"].pop("round_store", None)
    res.pop("round_store", None)  # what the store did: it differs by side
    for r in res["rounds"] + [res["final"]]:
        for k in ("seconds", "seconds_packed", "reused_from"):
            r.pop(k, None)
    return res


def _sides(off: list, on: list, work: Path) -> tuple[dict, dict]:
    """Each side's runs in grid order, the two sides interleaved run by run (which goes first alternates), so
    that a drift in the machine's load weighs on both alike; a side's wall time is the sum of its runs'."""
    from phicenter.engine.loop import run

    times, cpu = {"off": [], "on": []}, {"off": 0.0, "on": 0.0}
    for i, pair in enumerate(zip(off, on)):
        order = (("off", pair[0]), ("on", pair[1]))
        for side, (name, cfg) in order if i % 2 == 0 else order[::-1]:
            t, c = time.perf_counter(), time.process_time()
            run(cfg, work / side / name)
            times[side].append(time.perf_counter() - t)
            cpu[side] += time.process_time() - c
    return tuple({"wall": sum(times[s]), "cpu": cpu[s], "runs": times[s]} for s in ("off", "on"))


def _counts(work: Path, on: list, off: list, t_on: dict, t_off: dict) -> dict:
    """What each side trained and how long it took, and whether the two sides' results are the same."""
    from phicenter.engine.rundir import RESULTS
    from phicenter.io import read_json

    rounds_on = [read_json(work / "on" / n / RESULTS)["rounds"] for n, _ in on]
    rounds_off = [read_json(work / "off" / n / RESULTS)["rounds"] for n, _ in off]
    trained_on, trained_off = (
        sum(r["reused_from"] is None for rs in side for r in rs) for side in (rounds_on, rounds_off)
    )
    all_reused = [s for s, rs in zip(t_on["runs"], rounds_on) if all(r["reused_from"] for r in rs)]
    trained_runs = [s for s, rs in zip(t_on["runs"], rounds_on) if not any(r["reused_from"] for r in rs)]
    same = all(_comparable(work / "on" / n / RESULTS) == _comparable(work / "off" / n / RESULTS) for n, _ in on)
    return {
        "round_store_wall_ratio": t_off["wall"] / t_on["wall"],
        "round_store_cpu_ratio": t_off["cpu"] / t_on["cpu"],
        "rounds_total": sum(len(rs) for rs in rounds_on),
        "rounds_trained_off": trained_off,
        "rounds_trained_on": trained_on,
        "distinct_keys": len({r["round_key"] for rs in rounds_on for r in rs}),
        "seconds_off": t_off["wall"],
        "seconds_on": t_on["wall"],
        "cpu_seconds_off": t_off["cpu"],
        "cpu_seconds_on": t_on["cpu"],
        "runs": len(on),
        "reused_run_seconds": statistics.median(all_reused) if all_reused else None,
        "trained_run_seconds": statistics.median(trained_runs) if trained_runs else None,
        "identical_results": same,
    }


def round_store_grid(
    epochs: int = 20,
    iterations: int = 3,
    strategies=STRATEGIES,
    phis=PHIS,
    dataset: str = "digits",
    overrides=(),
    workdir: str | Path | None = None,
    threads: int = 1,
) -> dict:
    """The grid trained with the store off, then on (an empty store); see the module's docstring."""
    import torch

    from phicenter.bench.cases import compose
    from phicenter.engine.loop import run
    from phicenter.engine.roundstore import RoundStore

    torch.set_num_threads(int(threads))
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="phicenter-round-bench-")) if own else Path(workdir)
    base = [
        f"dataset={dataset}",
        f"epochs={epochs}",
        f"prune.iterations={iterations}",
        f"threads={threads}",
        *overrides,
    ]
    names = [(s, p) for s in strategies for p in phis]

    def configs(store: list[str]) -> list:
        return [(f"phi={p!r},strategy={s}", compose([*base, f"strategy={s}", f"phi={p}", *store])) for s, p in names]

    off = configs(["round_store.enabled=false"])
    on = configs([f"round_store.dir={work / 'store'}"])
    try:
        run(
            compose([f"dataset={dataset}", "epochs=1", "prune.iterations=0", "round_store.enabled=false"]),
            work / "warmup",
        )  # lazy imports and first-call costs, untimed
        load_before = os.getloadavg()[0]
        t_off, t_on = _sides(off, on, work)
        return {
            **_counts(work, on, off, t_on, t_off),
            "store": RoundStore(work / "store").usage(),
            "dataset": dataset,
            "epochs": epochs,
            "iterations": iterations,
            "strategies": list(strategies),
            "phis": list(phis),
            "threads": threads,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg()[0],
        }
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def table(res: dict) -> str:
    rows = [
        ("runs x rounds", f"{res['runs']} x {res['iterations'] + 1} = {res['rounds_total']}"),
        ("rounds trained, store off", str(res["rounds_trained_off"])),
        ("rounds trained, store on", f"{res['rounds_trained_on']} ({res['distinct_keys']} distinct keys)"),
        ("wall time, store off", f"{res['seconds_off']:.1f} s"),
        ("wall time, store on", f"{res['seconds_on']:.1f} s"),
        ("wall-time ratio (off / on)", f"**{res['round_store_wall_ratio']:.2f}x**"),
        ("CPU-time ratio (off / on)", f"{res['round_store_cpu_ratio']:.2f}x"),
        ("a run with every round reused", _s(res["reused_run_seconds"])),
        ("a run with every round trained", _s(res["trained_run_seconds"])),
        ("results.json identical (timing, reuse aside)", str(res["identical_results"])),
        ("store size", f"{res['store']['entries']} rounds, {res['store']['bytes'] / 2**20:.1f} MiB"),
    ]
    return "\n".join(["| measure | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])


def _s(x) -> str:
    return "—" if x is None else f"{x:.2f} s"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m phicenter.bench.rounds", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", help="keep both sides' runs and the store here (default: a temporary folder)")
    ap.add_argument("overrides", nargs="*", help="more config overrides for every run (key=value)")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("phicenter").setLevel(logging.WARNING)
    res = round_store_grid(
        args.epochs,
        args.iterations,
        dataset=args.dataset,
        overrides=args.overrides,
        workdir=args.workdir,
        threads=args.threads,
    )
    print(table(res))
    if args.out:
        from phicenter.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
