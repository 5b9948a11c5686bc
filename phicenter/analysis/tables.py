"""The report's tables as rows: the paper's tables (best cell per strategy), every ϕ, the tests against ϕ = 0."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from phicenter.analysis.runs import PhiGroup, column_key, num, phi_record
from phicenter.analysis.stats import Cell, compare, mean_ci

INACTIVE = "ϕ inactive — identical to ϕ = 0 by construction"
ACTING_PRUNED = (
    "§ effective sparsity below the pruned share: pruned weights still act (standard keeps them at their trained "
    "values, `strategy.pruned_fill=trained`), so this cell is a network about that dense, beside sparse ones"
)


def pct(x, digits=2) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def pval(p) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def fmt_phi(phi: float) -> str:
    return "0" if phi == 0 else f"{phi:g}"


def acc_text(values) -> str:
    m, half, n = mean_ci(values)
    if n == 0:
        return "—"
    return pct(m) if half is None else f"{pct(m)} ± {pct(half)}"


def cell_text(cell: Cell) -> str:
    g = cell.best
    if g is None:
        return "—"
    mark = "†" if cell.fell_back else ""
    phi = "0‡" if cell.stand_in and g is cell.zero else fmt_phi(g.phi)
    return f"{acc_text(r.test for r in g.runs)} ({phi}){mark} n={g.n}"


def sparsity_text(g: PhiGroup | None) -> str:
    """A cell's final-round sparsity, pruned / effective (%), means over seeds; § where the pruned weights act
    (effective sparsity more than 0.5 points below the pruned share: ACTING_PRUNED)."""
    if g is None:
        return "—"
    pruned = mean_of(r.sparsity for r in g.runs)
    effective = mean_of(r.effective_sparsity for r in g.runs)
    mark = "§" if math.isfinite(pruned) and math.isfinite(effective) and effective < pruned - 0.005 else ""
    return f"{pct(pruned)} / {pct(effective)}{mark}"


def mean_of(values) -> float:
    """Mean of the finite values (nan when none)."""
    vals = [v for v in values if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def mean_flip(g: PhiGroup) -> float:
    """Share of survivors whose sign ϕ changed, averaged over rounds >= 1 and seeds (sign_transfer: in its
    transfers)."""
    return mean_of(num(phi_record(r).get("flipped_by_phi")) for run in g.runs for r in run.rounds if r["round"] >= 1)


def mean_dead_zone(g: PhiGroup) -> float:
    """Share of survivors whose reference lay strictly between 0 and ϕ (the dead zone), averaged over rounds >= 1
    and seeds (sign_transfer: in its transfers)."""
    return mean_of(num(phi_record(r).get("dead_zone")) for run in g.runs for r in run.rounds if r["round"] >= 1)


def noise_note(zero: PhiGroup | None, g: PhiGroup) -> str:
    """For an inactive phi: identical to ϕ = 0, or the size of the run-to-run noise that made it differ."""
    c = compare(zero, g)
    if c is None or c["n"] == 0:
        return "no ϕ = 0 run with the same seed to compare with"
    if c["tied"] == c["n"]:
        return f"identical to ϕ = 0 in all {c['n']} seed(s)"
    c_abs = max(abs(g.by_seed()[s].test - zero.by_seed()[s].test) for s in c["seeds"])
    return (
        f"differs from ϕ = 0 by up to {pct(c_abs)} pp (mean {pct(c['mean'])} pp) although ϕ changed no sign: "
        f"run-to-run noise (e.g. GPU nondeterminism); differences of that size mean nothing here"
    )


def tables(cells: list[Cell]) -> dict[str, list[dict]]:
    """The CSV tables as lists of rows; report.md is written from the same rows."""
    paper, sparsity, summary, tests = defaultdict(dict), defaultdict(dict), [], []
    for c in cells:
        paper[c.dataset].setdefault(c.row, {"architecture": c.row})[c.col] = cell_text(c)
        sparsity[c.dataset].setdefault(c.row, {"architecture": c.row})[c.col] = sparsity_text(c.best)
        zero = c.zero
        for phi in sorted(c.groups):
            g = c.groups[phi]
            vm, vh, _ = mean_ci(r.val for r in g.runs)
            tm, th, _ = mean_ci(r.test for r in g.runs)
            note = ""
            if g.phi != 0 and g.inactive:
                note = (
                    INACTIVE
                    + "; "
                    + ("ϕ = 0 was not run: this ϕ stands in for it" if g is zero else noise_note(zero, g))
                )
            elif g.phi != 0 and any(r.inactive for r in g.runs):
                note = "ϕ changed no sign in seed(s) " + " ".join(str(r.seed) for r in g.runs if r.inactive)
            if g is c.best:
                note = f"chosen on {c.chosen_on}" + ("; " + note if note else "")
            summary.append(
                {
                    "dataset": c.dataset,
                    "architecture": c.row,
                    "strategy": c.col,
                    "phi": fmt_phi(phi),
                    "n": g.n,
                    "seeds": " ".join(str(r.seed) for r in sorted(g.runs, key=lambda r: r.seed)),
                    "val_mean": pct(vm),
                    "val_ci95": pct(vh),
                    "test_mean": pct(tm),
                    "test_ci95": pct(th),
                    "flipped_by_phi_pct": pct(mean_flip(g), 4),
                    "dead_zone_pct": pct(mean_dead_zone(g), 4),
                    "sparsity_pct": pct(mean_of(r.sparsity for r in g.runs), 2),
                    "effective_sparsity_pct": pct(mean_of(r.effective_sparsity for r in g.runs), 2),
                    "inactive": g.phi != 0 and g.inactive,
                    "note": note,
                }
            )
        tests.append(_test_row(c))
    return {
        "paper": {ds: list(rows.values()) for ds, rows in paper.items()},
        "paper_sparsity": {ds: list(rows.values()) for ds, rows in sparsity.items()},
        "summary": summary,
        "tests": tests,
    }


def _test_row(c: Cell) -> dict:
    """A cell's row of the test of its best non-zero ϕ against ϕ = 0."""
    t = c.vs_zero
    return {
        "dataset": c.dataset,
        "architecture": c.row,
        "strategy": c.col,
        "best_nonzero_phi": fmt_phi(c.best_nonzero.phi) if c.best_nonzero else "—",
        "chosen_on": c.chosen_on,
        "n_pairs": t["n"] if t else 0,
        "diff_mean_pp": pct(t["mean"]) if t else "—",
        "diff_ci95_pp": pct(t["ci"]) if t else "—",
        "p_paired_t": pval(t["p_t"]) if t else "—",
        "p_wilcoxon": pval(t["p_wilcoxon"]) if t else "—",
        "p_sign": pval(t["p_sign"]) if t else "—",
        "better_worse_tied": f"{t['better']}/{t['worse']}/{t['tied']}" if t else "—",
        "verdict": _verdict(c),
    }


def _verdict(c: Cell) -> str:
    if c.vs_zero is not None:
        extra = f" (ϕ = 0 was not run; compared with the inactive ϕ = {fmt_phi(c.zero.phi)})" if c.stand_in else ""
        return c.vs_zero["verdict"] + extra
    if c.zero is None:
        return "no ϕ = 0 run (nor an inactive ϕ) to compare with"
    if any(phi != 0 for phi in c.groups):
        return "every non-zero ϕ was inactive (changed no sign): nothing to compare"
    return "only ϕ = 0 was run"


HEADERS = {
    "architecture": "Architecture",
    "strategy": "Strategy",
    "best_nonzero_phi": "best ϕ ≠ 0",
    "chosen_on": "chosen on",
    "n_pairs": "n",
    "diff_mean_pp": "Δ test (pp)",
    "diff_ci95_pp": "± 95 % CI",
    "p_paired_t": "p (paired t)",
    "p_wilcoxon": "p (Wilcoxon)",
    "p_sign": "p (sign)",
    "better_worse_tied": "seeds up/down/same",
    "phi": "ϕ",
    "val_mean": "val %",
    "val_ci95": "± CI",
    "test_mean": "test %",
    "test_ci95": "± CI",
    "flipped_by_phi_pct": "re-signed by ϕ (%)",
    "dead_zone_pct": "dead zone (%)",
    "sparsity_pct": "sparsity (%)",
    "effective_sparsity_pct": "effective sparsity (%)",
    "run": "Run",
    "status": "Status",
    "problem": "Problem",
    "verdict": "Verdict",
    "note": "Note",
}


def _md_escape(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_columns(rows: list[dict]) -> list[str]:
    """Columns of a paper table: the architecture, then the strategies (see runs.column_key)."""
    return ["architecture"] + sorted({k for r in rows for k in r if k != "architecture"}, key=column_key)


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_escape(r.get(k, "—")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
