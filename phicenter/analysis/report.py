"""The paper's tables and figures from multirun folders, with seeds, a validation-chosen ϕ and a paired test of
"the best non-zero ϕ beats ϕ = 0"; runs of a reference experiment beside its paper's figures (analysis.literature).

    python -m phicenter.report DIR [DIR...] [--out OUT] [--select val|test]

Reads every results.json under the DIRs and writes report.md, CSVs and PNG figures into OUT (default DIR/report),
each file atomically (phicenter.io); a file that cannot be written stops it with one line and exit code 1.
Plain Python + numpy/scipy/matplotlib: no Lightning or Hydra. What each part means: docs/report.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path

from phicenter.analysis import gradient, literature, literature_tables
from phicenter.analysis.figures import figures, slug
from phicenter.analysis.runs import Run, group, label, load
from phicenter.analysis.stats import mean_ci, paired, select  # noqa: F401 (mean_ci, paired: part of this API)
from phicenter.analysis.tables import ACTING_PRUNED, INACTIVE, fmt_phi, md_table, pct, table_columns, tables
from phicenter.io import write_file

# ---------------------------------------------------------------- output


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    buf = io.StringIO()
    columns = columns or (list(rows[0]) if rows else [])
    if columns:
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write_file(path, buf.getvalue())


RUN_COLUMNS = [
    "path",
    "status",
    "dataset",
    "architecture",
    "strategy",
    "phi",
    "seed",
    "val_acc",
    "test_acc",
    "transfer_val_acc",
    "transfer_test_acc",
    "sparsity",
    "effective_sparsity",
    "instability_barrier",
    "inactive",
    "rounds_trained",
    "rounds_reused",
    "problem",
]


def run_rows(runs: list[Run]) -> list[dict]:
    return [
        {
            "path": str(r.path.parent),
            "status": r.status,
            "dataset": r.dataset,
            "architecture": r.row,
            "strategy": r.col,
            "phi": "" if math.isnan(r.phi) else fmt_phi(r.phi),
            "seed": "" if r.seed is None else r.seed,
            "val_acc": pct(r.round_val, 4),
            "test_acc": pct(r.round_test, 4),
            "transfer_val_acc": _blank(pct(r.transfer_val, 4)),
            "transfer_test_acc": _blank(pct(r.transfer_test, 4)),
            "sparsity": pct(r.sparsity, 4),
            "effective_sparsity": pct(r.effective_sparsity, 4),
            "instability_barrier": _blank(pct(r.barrier, 4)),
            "inactive": r.inactive,
            "rounds_trained": r.rounds_trained,
            "rounds_reused": r.rounds_reused,
            "problem": r.problem or "",
        }
        for r in runs
    ]


def _blank(text: str) -> str:
    return "" if text == "—" else text


def report(dirs: list[Path], out: Path, by: str = "val") -> dict:
    """Load, group, select, test, write. Returns counts; never raises on bad runs."""
    runs = load(dirs, skip=out.resolve())
    usable = [r for r in runs if r.problem is None]
    label(usable)
    cells = group(usable)
    usable = [r for r in usable if r.problem is None]  # less the duplicates
    cs = select(cells, by)
    t = tables(cs)
    out.mkdir(parents=True, exist_ok=True)
    made = figures(cs) if cs else []
    lit = literature.compare(cs, runs)  # reference experiments beside their papers' figures
    lit_figs = literature_tables.figures(lit)
    grad, grad_figs = gradient.gradient(cs), gradient.figures(cs)  # phi* against difficulty
    for _, name, png in made + lit_figs + grad_figs:
        write_file(out / name, png)

    not_used = [r for r in runs if r.problem is not None]
    files = {
        "runs.csv": run_rows(runs),
        "summary.csv": t["summary"],
        "best_vs_zero.csv": t["tests"],
        "not_used.csv": run_rows(not_used),
    }
    columns = {"runs.csv": RUN_COLUMNS, "not_used.csv": RUN_COLUMNS}
    if lit:
        files["literature.csv"] = literature_tables.rows_csv(lit)
        files["matching.csv"] = literature_tables.matching_csv(lit)
    if grad:
        files["gradient.csv"] = grad
    for ds, rows in t["paper"].items():
        files[slug("table", ds) + ".csv"] = rows
        columns[slug("table", ds) + ".csv"] = table_columns(rows)
        files[slug("sparsity", ds) + ".csv"] = t["paper_sparsity"][ds]
        columns[slug("sparsity", ds) + ".csv"] = table_columns(rows)
    for name, rows in files.items():
        write_csv(out / name, rows, columns.get(name))
    sections = gradient.markdown(grad, grad_figs) + literature_tables.markdown(lit, lit_figs, md_table)
    write_file(out / "report.md", markdown(dirs, by, cs, t, made, usable, not_used, sections))
    return {
        "runs": len(runs),
        "used": len(usable),
        "not_used": len(not_used),
        "cells": len(cs),
        "figures": len(made) + len(lit_figs) + len(grad_figs),
        "literature": len(lit),
        "files": sorted(files) + ["report.md"] + [m[1] for m in made + lit_figs + grad_figs],
    }


def _dataset_section(ds: str, by: str, t: dict, made: list) -> list[str]:
    """A dataset's part of the report: the paper's table, the test of the best non-zero phi against phi = 0, every
    phi, and its figures."""
    rows = t["paper"][ds]
    cols = table_columns(rows)
    lines = [
        f"## {ds}",
        "",
        f"Best final test accuracy (%) and its ϕ (chosen on {by}).",
        "",
        md_table(rows, cols),
        *_sparsity_lines(t["paper_sparsity"][ds], cols),
        "### Is the best non-zero ϕ better than ϕ = 0?",
        "",
        "Test accuracy, paired by seed (same seed = same θ0 and data order): difference in percentage "
        "points, its 95 % CI, the paired t-test and, for small n, the Wilcoxon signed-rank and sign "
        "tests beside it; better/worse/tied counts seeds.",
        "",
        md_table([{k: v for k, v in r.items() if k != "dataset"} for r in t["tests"] if r["dataset"] == ds]),
        "### Every ϕ",
        "",
        md_table(
            [
                {k: v for k, v in r.items() if k not in ("dataset", "inactive")}
                for r in t["summary"]
                if r["dataset"] == ds
            ]
        ),
    ]
    figs = [(cap, f) for cap, f, _ in made if cap.startswith(ds + " · ")]
    if figs:
        lines += ["### Figures", ""] + [f"![{cap}]({f})\n" for cap, f in figs]
    return lines


def _sparsity_lines(rows: list[dict], cols: list[str]) -> list[str]:
    """The sparsity of the paper table's cells, pruned beside effective: a network whose pruned weights still act
    (standard) is about dense whatever its pruned share."""
    lines = [
        "Sparsity of these cells (%): pruned / effective, final round at the cell's ϕ, mean over seeds. Effective "
        "sparsity is the share of prunable weights that can no longer change the output (docs/method.md, "
        '"Effective sparsity").',
        "",
        md_table(rows, cols),
    ]
    if any("§" in str(v) for r in rows for v in r.values()):
        lines += [ACTING_PRUNED + ".", ""]
    return lines


def markdown(dirs, by, cells, t, made, usable, not_used, literature_lines=()) -> str:
    how = (
        "ϕ chosen on **validation** accuracy (mean over seeds); the cell is the **test** accuracy at that ϕ."
        if by == "val"
        else "ϕ chosen on **test** accuracy — **the paper's way**: the same numbers pick ϕ and report it, so cells "
        "and p-values are optimistic. Run without `--select test` for the honest version."
    )
    everything = usable + not_used
    trained, reused = sum(r.rounds_trained for r in everything), sum(r.rounds_reused for r in everything)
    lines = [
        "# phicenter report",
        "",
        f"Sources: {', '.join(f'`{d}`' for d in dirs)} — {len(usable)} runs used, "
        f"{len(not_used)} not used (listed at the end).",
        "",
        f"Rounds: {trained} trained, {reused} reused (an identical round trained once, by another run "
        "or a cohort twin, and taken from the round store: `reused_from` in results.json).",
        "",
        how + " Cells: mean ± 95 % CI over seeds (t interval), the chosen ϕ in brackets, n = seeds. "
        f"Non-zero ϕ values that changed no sign in any round are marked “{INACTIVE}” "
        "and are never offered as a best ϕ.",
        "",
    ]
    if any(math.isfinite(r.transfer_test) for r in usable):
        lines += [
            "sign_transfer: its cells, ϕ choice and tests use the accuracy of the last round's transferred "
            "network (its signed mask on a fresh initialisation, trained once); runs.csv gives both that "
            "(`transfer_*`) and stage 1's own (`val_acc`, `test_acc`).",
            "",
        ]
    if any(c.fell_back for c in cells):
        lines += ["† no validation accuracy in these runs: ϕ chosen on test.", ""]
    if any(c.stand_in and c.best is c.zero for c in cells):
        lines += [
            "‡ ϕ = 0 was not run; an inactive ϕ (it changed no sign, so it is the ϕ = 0 network) stands in for it.",
            "",
        ]
    for ds in sorted(t["paper"]):
        lines += _dataset_section(ds, by, t, made)
    if not cells:
        lines += ["No complete run was found.", ""]
    lines += list(literature_lines)
    lines += [
        "## Runs not used",
        "",
        "Incomplete, failed, diverged, corrupt and duplicate runs; none of them is in any table above.",
        "",
        md_table([{"run": r["path"], "status": r["status"], "problem": r["problem"]} for r in run_rows(not_used)]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="phicenter report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="multirun or run folders")
    p.add_argument("--out", type=Path, help="output folder (default: DIR/report of the first DIR)")
    p.add_argument(
        "--select",
        choices=("val", "test"),
        default="val",
        help="choose ϕ on validation (default) or on test accuracy (the paper's way)",
    )
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"phicenter report: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0] / "report"
    try:
        res = report(args.dirs, out, args.select)
    except OSError as e:  # each file is written whole or not at all: those written stand, the rest as before
        print(f"phicenter report: error: {e}", file=sys.stderr)
        return 1
    print(
        f"phicenter.report: {out / 'report.md'}: {res['used']} runs used in {res['cells']} cells, "
        f"{res['not_used']} not used, {res['figures']} figures"
    )
    return 0 if res["used"] else 1


if __name__ == "__main__":
    sys.exit(main())
