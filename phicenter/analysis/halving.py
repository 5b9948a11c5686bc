"""phi_halving against the grid it stands in for: `python -m phicenter.analysis.halving GRID SEARCH`.

GRID holds the runs of a phi grid (every phi, every seed); SEARCH holds `hparams_search=phi_halving` jobs of the
same settings (their pack.json names each survivor). For each search job, on its own seed: is its survivor the
grid's best phi on validation (ties count: an inactive phi is the phi = 0 run to the bit), is it the phi* the
grid picks over all seeds (highest mean validation accuracy), and what it loses against the seed's best in
validation and test accuracy. The rounds >= 1 it trained are set against the grid's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

from phicenter.analysis import runs as runs_mod


def _setting(config: dict) -> str:
    """What a search job and the grid's runs share: dataset, model, strategy and the schedule (not phi, seed)."""
    keep = {k: config.get(k) for k in ("dataset", "model", "strategy", "prune", "epochs", "optim")}
    return json.dumps(keep, sort_keys=True, default=str)


def grid_table(grid: Path) -> dict:
    """{setting: {seed: {phi: (val, test)}}} of the grid's usable runs."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in runs_mod.load([grid]):
        if r.problem is None:
            out[_setting(r.config)][r.seed][r.phi] = (r.val, r.test)
    return out


def searches(search: Path) -> list[dict]:
    """One entry per search job: its survivor's settings, seed, phi and final accuracies, and its round counts."""
    out = []
    for pack in sorted(search.rglob("pack.json")):
        halving = json.loads(pack.read_text()).get("halving") or {}
        if not halving.get("survivor"):
            continue
        run = runs_mod.read_run(pack.parent / halving["survivor"] / runs_mod.RESULTS)
        out.append({"job": pack.parent, "run": run, **halving})
    return out


def compare(grid: Path, search: Path) -> list[dict]:
    """Each search job against the grid on the same seed (jobs whose settings the grid lacks are left out)."""
    table, rows = grid_table(grid), []
    for s in searches(search):
        run, cells = s["run"], table.get(_setting(s["run"].config))
        if not cells or run.seed not in cells:
            continue
        mine = cells[run.seed]
        best_val = max(v for v, _ in mine.values())
        best_test = max(mine.values())[1]  # the test accuracy of the (first) best phi on validation
        pooled = {p: mean(cells[seed][p][0] for seed in cells if p in cells[seed]) for p in mine}
        phi_star = max(pooled.values())
        val, test = mine.get(s["phi"], (math.nan, math.nan))
        rows.append(
            {
                "strategy": run.config["strategy"]["name"],
                "dataset": run.config["dataset"],
                "seed": run.seed,
                "survivor_phi": s["phi"],
                "best_on_seed": val == best_val,
                "is_phi_star": pooled.get(s["phi"], -math.inf) == phi_star,
                "val_loss": best_val - val,
                "test_loss": best_test - test,
                "rounds_trained": s["rounds_trained"],
                "rounds_grid": s["rounds_grid"],
            }
        )
    return rows


def summary(rows: list[dict]) -> str:
    n = len(rows)
    if not n:
        return "no search job matched a grid cell"
    seed_hits = sum(r["best_on_seed"] for r in rows)
    star_hits = sum(r["is_phi_star"] for r in rows)
    trained, grid = sum(r["rounds_trained"] for r in rows), sum(r["rounds_grid"] for r in rows)
    return (
        f"{n} searches: the seed's best phi on validation in {seed_hits} ({100 * seed_hits / n:.0f} %), the grid's "
        f"phi* in {star_hits} ({100 * star_hits / n:.0f} %); validation accuracy lost against the seed's best: mean "
        f"{100 * mean(r['val_loss'] for r in rows):.2f}, max {100 * max(r['val_loss'] for r in rows):.2f} points; "
        f"test: mean {100 * mean(r['test_loss'] for r in rows):.2f} points; rounds >= 1 trained {trained} of the "
        f"grid's {grid} ({100 * trained / grid:.0f} %)"
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no "


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m phicenter.analysis.halving", description=__doc__.split("\n")[0])
    p.add_argument("grid", type=Path, help="folder of the phi grid's runs")
    p.add_argument("search", type=Path, help="folder of the hparams_search=phi_halving jobs")
    p.add_argument("--out", type=Path, help="also write the rows and the summary as JSON here")
    a = p.parse_args(argv)
    for d in (a.grid, a.search):
        if not d.is_dir():
            print(f"{p.prog}: error: {d} is not a folder", file=sys.stderr)
            return 2
    rows = compare(a.grid, a.search)
    varying = sorted({k for r in rows for k, v in r["dataset"].items() if v != rows[0]["dataset"].get(k)})
    for r in rows:
        where = " ".join(f"dataset.{k}={r['dataset'].get(k)}" for k in varying)
        print(
            f"{where + '  ' if where else ''}{r['strategy']:9s} seed {r['seed']}  survivor phi={r['survivor_phi']:<8g} "
            f"best on its seed: {_yes(r['best_on_seed'])}  phi*: {_yes(r['is_phi_star'])}"
            f"  against the seed's best: val {-100 * r['val_loss']:+.2f}, test {-100 * r['test_loss']:+.2f} points"
        )
    line = summary(rows)
    print(line)
    if a.out:
        a.out.write_text(json.dumps({"rows": rows, "summary": line}, indent=1, default=str))
    return 0 if rows else 2


if __name__ == "__main__":
    sys.exit(main())
