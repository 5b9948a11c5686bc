"""The paper's tables and figures from multirun folders, with seeds, a validation-chosen ϕ and a paired test of
"the best non-zero ϕ beats ϕ = 0".

    python -m phicenter.report DIR [DIR...] [--out OUT] [--select val|test]

Reads every results.json under the DIRs and writes report.md, CSVs and PNG figures into OUT (default DIR/report).
Plain Python + numpy/scipy/matplotlib: no Lightning or Hydra. What each part means: docs/report.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from phicenter.config import shapes_training

RESULTS = "results.json"
# The axes the report is about: runs that differ in them only are one experiment. Settings of how a run
# executes (phicenter.config.EXECUTION_KEYS) never make two experiments either.
IGNORED_KEYS = {"seed", "phi"}
INACTIVE = "ϕ inactive — identical to ϕ = 0 by construction"
SKIP_DIRS = {"tb", "checkpoints", ".hydra"}


# ---------------------------------------------------------------- load

@dataclass
class Run:
    path: Path
    status: str
    problem: str | None = None          # why the run is not used; None for a usable run
    config: dict = field(default_factory=dict)
    rounds: list = field(default_factory=list)
    phi: float = math.nan
    seed: int | None = None
    val: float = math.nan               # final-round accuracies, fractions
    test: float = math.nan
    inactive: bool = False              # phi != 0 and phi re-signed no survivor in any round
    dataset: str = ""                   # labels, filled in by label()
    row: str = ""
    col: str = ""


def load(dirs: list[Path], skip: Path | None = None) -> list[Run]:
    """Every results.json under dirs, plus job folders that have none; nothing is dropped silently."""
    runs = []
    for root in dirs:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames
                                 if d not in SKIP_DIRS and (skip is None or (here / d).resolve() != skip))
            if RESULTS in filenames:
                runs.append(read_run(here / RESULTS))
            elif "pack.json" not in filenames and ((here / ".hydra").is_dir() or "train.log" in filenames):
                runs.append(Run(here / RESULTS, "missing", "no results.json: the job stopped before its first "
                                                          "round ended (see its train.log)"))
    return runs


def read_run(path: Path) -> Run:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return Run(path, "corrupt", f"unreadable results.json ({type(e).__name__})")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        return Run(path, "corrupt", "results.json has no config")
    status = str(data.get("status") or "unknown")
    rounds = data.get("rounds") if isinstance(data.get("rounds"), list) else []
    if not all(isinstance(r, dict) and isinstance(r.get("round"), int) for r in rounds):
        return Run(path, "corrupt", "results.json has a malformed round entry")
    run = Run(path, status, config=data["config"], rounds=rounds)
    if status != "complete":
        total = (run.config.get("prune") or {}).get("iterations")
        of = f" of {total + 1}" if isinstance(total, int) else ""
        error = f"; {data['error']}" if data.get("error") else ""
        run.problem = f"{status}: {len(rounds)}{of} rounds done{error}"
        return run
    final = data.get("final") or (rounds[-1] if rounds else None)
    try:
        run.phi = float(run.config["phi"])
        run.seed = int(run.config["seed"])
        run.test = float(final["test_acc"])
        run.val = _num(final.get("val_acc"))
        for part in ("dataset", "model", "strategy"):
            if not isinstance(run.config[part]["name"], str):
                raise TypeError(f"{part}.name")
    except (KeyError, TypeError, ValueError) as e:
        run.problem = f"corrupt: complete but {type(e).__name__} {e} in config or final round"
        return run
    if not (math.isfinite(run.test) and math.isfinite(run.phi)):
        run.problem = "corrupt: complete but ϕ or the final test accuracy is not a number"
    run.inactive = run.phi != 0 and phi_changed_no_sign(rounds)
    return run


def phi_changed_no_sign(rounds: list) -> bool:
    """True when every round >= 1 says, in every layer, that phi re-signed no survivor (False when unknown)."""
    for r in rounds:
        if r["round"] < 1:
            continue
        layers = r.get("layers") if isinstance(r.get("layers"), dict) else {}
        counts = [lay.get(k) if isinstance(lay, dict) else None
                  for lay in layers.values() for k in ("flipped_by_phi_count", "dead_zone_count")]
        if not counts:  # older results: only the round totals
            counts = [r.get("flipped_by_phi"), r.get("dead_zone_count")]
        if any(c is None or c != 0 for c in counts):
            return False
    return True


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------- group

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True)
    return out


def _varying(runs: list[Run], keep) -> list[str]:
    flats = [_flat(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f
                   if keep(k) and k not in IGNORED_KEYS and shapes_training(k)})
    return [k for k in keys if len({f.get(k) for f in flats}) > 1]


def _suffix(run: Run, keys: list[str]) -> str:
    if not keys:
        return ""
    flat = _flat(run.config)
    return " [" + ", ".join(f"{k}={json.loads(flat[k]) if k in flat else '—'}" for k in keys) + "]"


def label(runs: list[Run]) -> None:
    """Dataset, row (architecture) and column (strategy) labels; any other setting that varies within a
    dataset is added to the label it belongs to, so different experiments never share a cell."""
    by_ds = defaultdict(list)
    for r in runs:
        by_ds[r.config["dataset"]["name"]].append(r)
    for ds, rs in by_ds.items():
        ds_keys = _varying(rs, lambda k: k.startswith("dataset.") and k != "dataset.name")
        other = _varying(rs, lambda k: not k.startswith(("dataset.", "model.", "strategy.")))
        for r in rs:
            r.dataset = ds + _suffix(r, ds_keys)
        for part in ("model", "strategy"):
            by_name = defaultdict(list)
            for r in rs:
                by_name[r.config[part]["name"]].append(r)
            for name, named in by_name.items():
                keys = _varying(named, lambda k, p=part: k.startswith(p + ".") and k != p + ".name")
                for r in named:
                    if part == "model":
                        r.row = name + _suffix(r, keys + other)
                    else:
                        r.col = name + _suffix(r, keys)


@dataclass
class PhiGroup:
    """The runs of one cell at one phi, one per seed."""
    phi: float
    runs: list[Run]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def inactive(self) -> bool:
        return all(r.inactive for r in self.runs)

    def by_seed(self) -> dict[int, Run]:
        return {r.seed: r for r in self.runs}


def group(runs: list[Run]) -> dict:
    """{(dataset, row, col): {phi: PhiGroup}}. Of two runs with the same cell, phi and seed the first one found
    is kept (DIRs in the order given, folders in name order); the other gets a `problem`."""
    cells, seen = defaultdict(dict), {}
    for r in runs:
        key = (r.dataset, r.row, r.col, r.phi, r.seed)
        if key in seen:
            r.problem = f"duplicate of {seen[key].path.parent} (same settings, ϕ and seed); not counted twice"
            continue
        seen[key] = r
        cell = cells[(r.dataset, r.row, r.col)]
        cell.setdefault(r.phi, PhiGroup(r.phi, [])).runs.append(r)
    return dict(cells)


# ---------------------------------------------------------------- stats

def mean_ci(values) -> tuple[float, float | None, int]:
    """Mean, half-width of its 95 % t confidence interval (None for n < 2), n."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, None, 0
    if n == 1:
        return float(v[0]), None, 1
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n)), n


def paired(diffs) -> dict:
    """Paired-by-seed comparison from the per-seed differences (other − reference)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else math.nan, "ci": None, "p_t": None, "p_wilcoxon": None,
           "p_sign": None, "better": int((d > 0).sum()), "worse": int((d < 0).sum()), "tied": int((d == 0).sum())}
    if n == 0:
        return {**out, "verdict": "no seed was run at both ϕ values"}
    if np.all(d == 0):
        return {**out, "verdict": "identical to ϕ = 0 in every seed"}
    if n == 1:
        return {**out, "verdict": "one seed: no claim can be made"}
    sd = float(d.std(ddof=1))
    if sd > 0:
        out["ci"] = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))
        out["p_t"] = float(2 * stats.t.sf(abs(out["mean"]) / (sd / math.sqrt(n)), n - 1))
    nonzero = d[d != 0]
    out["p_sign"] = float(stats.binomtest(out["better"], len(nonzero), 0.5).pvalue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["p_wilcoxon"] = _finite_or_none(stats.wilcoxon(nonzero).pvalue)
        except ValueError:
            pass
    p = out["p_t"] if out["p_t"] is not None else out["p_sign"]  # sd == 0: the same shift in every seed
    if p < 0.05:
        out["verdict"] = "better than ϕ = 0" if out["mean"] > 0 else "worse than ϕ = 0"
    else:
        out["verdict"] = "not distinguishable from ϕ = 0"
    return out


def _finite_or_none(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def compare(zero: PhiGroup | None, other: PhiGroup | None) -> dict | None:
    """Test accuracy of `other` minus that of ϕ = 0, paired by seed."""
    if zero is None or other is None:
        return None
    a, b = zero.by_seed(), other.by_seed()
    seeds = sorted(set(a) & set(b))
    return {**paired([b[s].test - a[s].test for s in seeds]), "seeds": seeds}


# ---------------------------------------------------------------- select

def baseline(groups: dict[float, PhiGroup]) -> PhiGroup | None:
    """The ϕ = 0 runs; when ϕ = 0 was not run (an Optuna search), an inactive ϕ stands in for it: it changed no
    sign, so it is the ϕ = 0 network. The one with most seeds, then the smallest |ϕ|."""
    if 0.0 in groups:
        return groups[0.0]
    inactive = [g for g in groups.values() if g.inactive]
    return min(inactive, key=lambda g: (-g.n, abs(g.phi)), default=None)


def choose(groups: dict[float, PhiGroup], metric: str, base: PhiGroup | None) -> PhiGroup | None:
    """The phi with the best mean `metric` over seeds among the active non-zero phis and `base` (ϕ = 0 or its
    stand-in). Inactive phis are never offered as a best ϕ; ties go to `base`, then to the smaller |ϕ|."""
    best, best_key = None, None
    for g in [g for g in groups.values() if g.phi != 0 and not g.inactive] + ([base] if base else []):
        m = mean_ci(getattr(r, metric) for r in g.runs)[0]
        if not math.isfinite(m):
            continue
        key = (m, g is base, -abs(g.phi))
        if best_key is None or key > best_key:
            best, best_key = g, key
    return best


@dataclass
class Cell:
    dataset: str
    row: str
    col: str
    groups: dict                  # phi -> PhiGroup
    chosen_on: str                # "val" or "test"
    fell_back: bool               # asked for val, but some run has no validation accuracy
    zero: PhiGroup | None         # ϕ = 0, or the inactive ϕ standing in for it (see baseline)
    best: PhiGroup | None
    best_nonzero: PhiGroup | None
    vs_zero: dict | None          # compare(zero, best non-zero)

    @property
    def stand_in(self) -> bool:
        return self.zero is not None and self.zero.phi != 0


def select(cells: dict, by: str) -> list[Cell]:
    out = []
    for (ds, row, col), groups in sorted(cells.items()):
        fell_back = by == "val" and any(not math.isfinite(r.val) for g in groups.values() for r in g.runs)
        metric = "test" if fell_back else by   # no validation split: fall back, and say so in the table
        zero = baseline(groups)
        best = choose(groups, metric, zero)
        best_nz = choose(groups, metric, None)
        out.append(Cell(ds, row, col, groups, metric, fell_back, zero, best, best_nz, compare(zero, best_nz)))
    return out


# ---------------------------------------------------------------- tables

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


def mean_flip(g: PhiGroup) -> float:
    """Share of survivors whose sign ϕ changed, averaged over rounds >= 1 and seeds."""
    vals = [_num(r.get("flipped_by_phi")) for run in g.runs for r in run.rounds if r["round"] >= 1]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def noise_note(zero: PhiGroup | None, g: PhiGroup) -> str:
    """For an inactive phi: identical to ϕ = 0, or the size of the run-to-run noise that made it differ."""
    c = compare(zero, g)
    if c is None or c["n"] == 0:
        return "no ϕ = 0 run with the same seed to compare with"
    if c["tied"] == c["n"]:
        return f"identical to ϕ = 0 in all {c['n']} seed(s)"
    c_abs = max(abs(g.by_seed()[s].test - zero.by_seed()[s].test) for s in c["seeds"])
    return (f"differs from ϕ = 0 by up to {pct(c_abs)} pp (mean {pct(c['mean'])} pp) although ϕ changed no sign: "
            f"run-to-run noise (e.g. GPU nondeterminism); differences of that size mean nothing here")


def tables(cells: list[Cell]) -> dict[str, list[dict]]:
    """The CSV tables as lists of rows; report.md is written from the same rows."""
    paper, summary, tests = defaultdict(dict), [], []
    for c in cells:
        paper[c.dataset].setdefault(c.row, {"architecture": c.row})[c.col] = cell_text(c)
        zero = c.zero
        for phi in sorted(c.groups):
            g = c.groups[phi]
            vm, vh, _ = mean_ci(r.val for r in g.runs)
            tm, th, _ = mean_ci(r.test for r in g.runs)
            note = ""
            if g.phi != 0 and g.inactive:
                note = INACTIVE + "; " + ("ϕ = 0 was not run: this ϕ stands in for it" if g is zero
                                          else noise_note(zero, g))
            elif g.phi != 0 and any(r.inactive for r in g.runs):
                note = "ϕ changed no sign in seed(s) " + " ".join(str(r.seed) for r in g.runs if r.inactive)
            if g is c.best:
                note = f"chosen on {c.chosen_on}" + ("; " + note if note else "")
            summary.append({"dataset": c.dataset, "architecture": c.row, "strategy": c.col, "phi": fmt_phi(phi),
                            "n": g.n, "seeds": " ".join(str(r.seed) for r in sorted(g.runs, key=lambda r: r.seed)),
                            "val_mean": pct(vm), "val_ci95": pct(vh), "test_mean": pct(tm), "test_ci95": pct(th),
                            "flipped_by_phi_pct": pct(mean_flip(g), 4), "inactive": g.phi != 0 and g.inactive,
                            "note": note})
        t = c.vs_zero
        tests.append({"dataset": c.dataset, "architecture": c.row, "strategy": c.col,
                      "best_nonzero_phi": fmt_phi(c.best_nonzero.phi) if c.best_nonzero else "—",
                      "chosen_on": c.chosen_on, "n_pairs": t["n"] if t else 0,
                      "diff_mean_pp": pct(t["mean"]) if t else "—", "diff_ci95_pp": pct(t["ci"]) if t else "—",
                      "p_paired_t": pval(t["p_t"]) if t else "—",
                      "p_wilcoxon": pval(t["p_wilcoxon"]) if t else "—", "p_sign": pval(t["p_sign"]) if t else "—",
                      "better_worse_tied": f"{t['better']}/{t['worse']}/{t['tied']}" if t else "—",
                      "verdict": _verdict(c)})
    return {"paper": {ds: list(rows.values()) for ds, rows in paper.items()}, "summary": summary, "tests": tests}


def _verdict(c: Cell) -> str:
    if c.vs_zero is not None:
        extra = f" (ϕ = 0 was not run; compared with the inactive ϕ = {fmt_phi(c.zero.phi)})" if c.stand_in else ""
        return c.vs_zero["verdict"] + extra
    if c.zero is None:
        return "no ϕ = 0 run (nor an inactive ϕ) to compare with"
    if any(phi != 0 for phi in c.groups):
        return "every non-zero ϕ was inactive (changed no sign): nothing to compare"
    return "only ϕ = 0 was run"


HEADERS = {"architecture": "Architecture", "strategy": "Strategy", "best_nonzero_phi": "best ϕ ≠ 0",
           "chosen_on": "chosen on", "n_pairs": "n", "diff_mean_pp": "Δ test (pp)", "diff_ci95_pp": "± 95 % CI",
           "p_paired_t": "p (paired t)", "p_wilcoxon": "p (Wilcoxon)", "p_sign": "p (sign)",
           "better_worse_tied": "seeds up/down/same", "phi": "ϕ", "val_mean": "val %", "val_ci95": "± CI",
           "test_mean": "test %", "test_ci95": "± CI", "flipped_by_phi_pct": "re-signed by ϕ (%)",
           "run": "Run", "status": "Status", "problem": "Problem", "verdict": "Verdict", "note": "Note"}


def _md_escape(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_escape(r.get(k, "—")) for k in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _symlog_x(ax, phis, axis="x"):
    nonzero = [abs(p) for p in phis if p != 0]
    thresh = min(nonzero) if nonzero else 1e-5
    (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=thresh)


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    write_atomic(path, buf.getvalue())


def slug(*parts: str) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9.=-]+", "_", p).strip("_") for p in parts)


def figures(cells: list[Cell], out: Path) -> list[tuple[str, str]]:
    """Writes the PNGs; returns (caption, file name) pairs in the order they should appear."""
    plt = _plt()
    made = []
    by_row = defaultdict(list)
    for c in cells:
        by_row[(c.dataset, c.row)].append(c)

    for (ds, row), cs in by_row.items():
        # Final test accuracy vs phi, one line per strategy, 95 % CI band (the paper's appendix B).
        fig, ax = plt.subplots(figsize=(7, 4.5))
        phis = sorted({p for c in cs for p in c.groups})
        for c in cs:
            xs = sorted(c.groups)
            m = [mean_ci(r.test for r in c.groups[p].runs) for p in xs]
            y = np.array([100 * v[0] for v in m])
            half = np.array([100 * (v[1] or 0.0) for v in m])
            line, = ax.plot(xs, y, "-", label=f"{c.col} (n={max(v[2] for v in m)})")
            ax.fill_between(xs, y - half, y + half, color=line.get_color(), alpha=0.2, linewidth=0)
            act = [i for i, p in enumerate(xs) if not (p != 0 and c.groups[p].inactive)]
            ina = [i for i in range(len(xs)) if i not in act]
            ax.plot([xs[i] for i in act], y[act], "o", color=line.get_color())
            ax.plot([xs[i] for i in ina], y[ina], "o", mfc="white", color=line.get_color())
            if c.best is not None:
                ax.plot([c.best.phi], [100 * mean_ci(r.test for r in c.best.runs)[0]], "*", ms=14,
                        color=line.get_color(), mec="black")
        _symlog_x(ax, phis)
        ax.set(xlabel="ϕ (symmetric log)", ylabel="final test accuracy (%)",
               title=f"{ds} · {row}: final accuracy vs ϕ\n(band: 95 % CI over seeds; ★ chosen ϕ; "
                     f"hollow: ϕ inactive)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = slug("acc_vs_phi", ds, row) + ".png"
        _save(fig, out / name)
        made.append((f"{ds} · {row}: final test accuracy vs ϕ", name))

        # Share of survivors re-signed by phi, per strategy.
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in cs:
            xs = sorted(c.groups)
            ax.plot(xs, [100 * mean_flip(c.groups[p]) for p in xs], "o-", label=c.col)
        _symlog_x(ax, phis)
        ax.set(xlabel="ϕ (symmetric log)", ylabel="survivors re-signed by ϕ (%)",
               title=f"{ds} · {row}: flip fraction vs ϕ (mean over rounds ≥ 1 and seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        name = slug("flips_vs_phi", ds, row) + ".png"
        _save(fig, out / name)
        made.append((f"{ds} · {row}: share of survivors whose sign ϕ changed", name))

        for c in cs:
            made += _sparsity_figure(plt, c, out)
            made += _critical_figure(plt, c, out)
    return made


def _sparsity_figure(plt, c: Cell, out: Path) -> list[tuple[str, str]]:
    """Test accuracy across rounds against sparsity, one line per phi."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.95, max(len(c.groups), 1)))
    for color, phi in zip(colors, sorted(c.groups)):
        g = c.groups[phi]
        n_rounds = min(len(r.rounds) for r in g.runs)
        sp = [100 * _num(g.runs[0].rounds[i].get("sparsity")) for i in range(n_rounds)]
        acc = [100 * mean_ci(_num(r.rounds[i].get("test_acc")) for r in g.runs)[0] for i in range(n_rounds)]
        inactive = phi != 0 and g.inactive
        ax.plot(sp, acc, "o--" if inactive else "o-", color=color, ms=3,
                label=f"ϕ = {fmt_phi(phi)}" + (" (inactive)" if inactive else ""))
    ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)",
           title=f"{c.dataset} · {c.row} · {c.col}: accuracy vs sparsity (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    name = slug("acc_vs_sparsity", c.dataset, c.row, c.col) + ".png"
    _save(fig, out / name)
    return [(f"{c.dataset} · {c.row} · {c.col}: accuracy vs sparsity, one line per ϕ", name)]


def _critical_figure(plt, c: Cell, out: Path) -> list[tuple[str, str]]:
    """Each layer's critical ϕ (smallest positive / largest negative ϕ that re-signs a survivor) per round,
    against the swept ϕ values. Taken from the ϕ = 0 runs when there are any (median over seeds)."""
    source = c.groups[0.0].runs if 0.0 in c.groups else [r for g in c.groups.values() for r in g.runs]
    series = defaultdict(lambda: defaultdict(list))   # (layer, sign) -> round -> values
    for run in source:
        for r in run.rounds:
            layers = r.get("layers") if isinstance(r.get("layers"), dict) else {}
            for layer, v in layers.items():
                for sign in ("pos", "neg") if isinstance(v, dict) else ():
                    x = _num(v.get(f"critical_phi_{sign}"))
                    if math.isfinite(x):
                        series[(layer, sign)][r.get("round")].append(x)
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {layer: f"C{i}" for i, layer in enumerate(sorted({k[0] for k in series}))}
    values = []
    for (layer, sign), by_round in sorted(series.items()):
        rs = sorted(by_round)
        ys = [float(np.median(by_round[x])) for x in rs]
        values += ys
        ax.plot(rs, ys, "o-" if sign == "pos" else "s--", color=colors[layer], ms=3,
                label=f"{layer} ({'+' if sign == 'pos' else '−'})")
    for phi in sorted(c.groups):
        if phi != 0:
            ax.axhline(phi, color="grey", lw=0.8, ls=":")
            ax.annotate(f"ϕ = {fmt_phi(phi)}", (1.0, phi), xycoords=("axes fraction", "data"), fontsize=7,
                        color="grey", va="center")
    _symlog_x(ax, values + list(c.groups), axis="y")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="round", ylabel="critical ϕ (symmetric log)",
           title=f"{c.dataset} · {c.row} · {c.col}: critical ϕ per layer vs swept ϕ (dotted)\n"
                 "a swept ϕ between a layer's − and + curves re-signs nothing in that layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    name = slug("critical_phi", c.dataset, c.row, c.col) + ".png"
    _save(fig, out / name)
    return [(f"{c.dataset} · {c.row} · {c.col}: each layer's critical ϕ across rounds vs the swept ϕ", name)]


# ---------------------------------------------------------------- output

def write_atomic(path: Path, data: bytes | str) -> None:
    """Temp file in the same folder, then os.replace: a reader never sees a half-written file."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> None:
    buf = io.StringIO()
    columns = columns or (list(rows[0]) if rows else [])
    if columns:
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    write_atomic(path, buf.getvalue())


RUN_COLUMNS = ["path", "status", "dataset", "architecture", "strategy", "phi", "seed", "val_acc", "test_acc",
               "inactive", "problem"]


def run_rows(runs: list[Run]) -> list[dict]:
    return [{"path": str(r.path.parent), "status": r.status, "dataset": r.dataset, "architecture": r.row,
             "strategy": r.col, "phi": "" if math.isnan(r.phi) else fmt_phi(r.phi),
             "seed": "" if r.seed is None else r.seed, "val_acc": pct(r.val, 4), "test_acc": pct(r.test, 4),
             "inactive": r.inactive, "problem": r.problem or ""} for r in runs]


def report(dirs: list[Path], out: Path, by: str = "val") -> dict:
    """Load, group, select, test, write. Returns counts; never raises on bad runs."""
    runs = load(dirs, skip=out.resolve())
    usable = [r for r in runs if r.problem is None]
    label(usable)
    cells = group(usable)
    usable = [r for r in usable if r.problem is None]   # less the duplicates
    cs = select(cells, by)
    t = tables(cs)
    out.mkdir(parents=True, exist_ok=True)
    made = figures(cs, out) if cs else []

    not_used = [r for r in runs if r.problem is not None]
    files = {"runs.csv": run_rows(runs), "summary.csv": t["summary"], "best_vs_zero.csv": t["tests"],
             "not_used.csv": run_rows(not_used)}
    for ds, rows in t["paper"].items():
        files[slug("table", ds) + ".csv"] = rows
    for name, rows in files.items():
        write_csv(out / name, rows, RUN_COLUMNS if name in ("runs.csv", "not_used.csv") else None)
    write_atomic(out / "report.md", markdown(dirs, by, cs, t, made, usable, not_used))
    return {"runs": len(runs), "used": len(usable), "not_used": len(not_used), "cells": len(cs),
            "figures": len(made), "files": sorted(files) + ["report.md"] + [m[1] for m in made]}


def markdown(dirs, by, cells, t, made, usable, not_used) -> str:
    how = ("ϕ chosen on **validation** accuracy (mean over seeds); the cell is the **test** accuracy at that ϕ."
           if by == "val" else
           "ϕ chosen on **test** accuracy — **the paper's way**: the same numbers pick ϕ and report it, so cells "
           "and p-values are optimistic. Run without `--select test` for the honest version.")
    lines = ["# phicenter report", "",
             f"Sources: {', '.join(f'`{d}`' for d in dirs)} — {len(usable)} runs used, "
             f"{len(not_used)} not used (listed at the end).", "",
             how + " Cells: mean ± 95 % CI over seeds (t interval), the chosen ϕ in brackets, n = seeds. "
             f"Non-zero ϕ values that changed no sign in any round are marked “{INACTIVE}” "
             "and are never offered as a best ϕ.", ""]
    if any(c.fell_back for c in cells):
        lines += ["† no validation accuracy in these runs: ϕ chosen on test.", ""]
    if any(c.stand_in and c.best is c.zero for c in cells):
        lines += ["‡ ϕ = 0 was not run; an inactive ϕ (it changed no sign, so it is the ϕ = 0 network) stands "
                  "in for it.", ""]
    for ds in sorted(t["paper"]):
        rows = t["paper"][ds]
        cols = ["architecture"] + sorted({k for r in rows for k in r if k != "architecture"})
        lines += [f"## {ds}", "", f"Best final test accuracy (%) and its ϕ (chosen on {by}).", "",
                  md_table(rows, cols),
                  "### Is the best non-zero ϕ better than ϕ = 0?", "",
                  "Test accuracy, paired by seed (same seed = same θ0 and data order): difference in percentage "
                  "points, its 95 % CI, the paired t-test and, for small n, the Wilcoxon signed-rank and sign "
                  "tests beside it; better/worse/tied counts seeds.", "",
                  md_table([{k: v for k, v in r.items() if k != "dataset"} for r in t["tests"]
                            if r["dataset"] == ds]),
                  "### Every ϕ", "",
                  md_table([{k: v for k, v in r.items() if k not in ("dataset", "inactive")}
                            for r in t["summary"] if r["dataset"] == ds])]
        figs = [(cap, f) for cap, f in made if cap.startswith(ds + " · ")]
        if figs:
            lines += ["### Figures", ""] + [f"![{cap}]({f})\n" for cap, f in figs]
    if not cells:
        lines += ["No complete run was found.", ""]
    lines += ["## Runs not used", "",
              "Incomplete, failed, diverged, corrupt and duplicate runs; none of them is in any table above.", "",
              md_table([{"run": r["path"], "status": r["status"], "problem": r["problem"]}
                        for r in run_rows(not_used)])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phicenter.report", description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="multirun or run folders")
    p.add_argument("--out", type=Path, help="output folder (default: DIR/report of the first DIR)")
    p.add_argument("--select", choices=("val", "test"), default="val",
                   help="choose ϕ on validation (default) or on test accuracy (the paper's way)")
    args = p.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        print(f"phicenter.report: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0] / "report"
    res = report(args.dirs, out, args.select)
    print(f"phicenter.report: {out / 'report.md'}: {res['used']} runs used in {res['cells']} cells, "
          f"{res['not_used']} not used, {res['figures']} figures")
    return 0 if res["used"] else 1


if __name__ == "__main__":
    sys.exit(main())
