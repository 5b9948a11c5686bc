"""The complexity gradient: how the best ϕ and its gain over ϕ = 0 change as the task gets harder.

A dataset swept over its own options (`-m dataset.corr_noise_scale=0,0.1,...`, as experiment=complexity_gradient
does) gives one report dataset per value (analysis.runs.label puts the options in its label): these are its
*difficulty levels*. For each (dataset, architecture) with two levels or more, per level and strategy:

- ϕ*: the cell's ϕ chosen on validation (analysis.stats.select: the best mean over seeds, ϕ = 0 included,
  inactive ϕ never offered), and the spread of that choice over seeds: ϕ chosen the same way in each seed alone,
  their mean ± 95 % t interval;
- the test accuracy at ϕ* against ϕ = 0, paired by seed (analysis.stats.compare: mean difference in points,
  its 95 % CI, the paired t-test);
- the level's difficulty: its dense network's test accuracy (round 0, the same for every ϕ and strategy of a
  seed), mean over seeds. Levels are ordered by it, easiest first, and the figure draws against its error.

Plain Python + numpy/matplotlib, as the rest of the report."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from phicenter.analysis.runs import PhiGroup, column_key, num
from phicenter.analysis.stats import Cell, baseline, choose, compare, mean_ci
from phicenter.analysis.tables import acc_text, fmt_phi, pct, pval
from phicenter.config import flatten


@dataclass
class Level:
    """One difficulty of a dataset: its report label, the options that set it, its dense test accuracy (mean over
    seeds, fraction) and its cells by strategy."""

    label: str
    options: str
    dense: list[float]
    cells: dict[str, Cell]

    @property
    def dense_mean(self) -> float:
        return mean_ci(self.dense)[0]


def _runs(c: Cell) -> list:
    return [r for g in c.groups.values() for r in g.runs]


def _dense(cells: list[Cell]) -> list[float]:
    """Round 0's test accuracy per seed (every run of a seed shares round 0)."""
    by_seed = {}
    for r in (r for c in cells for r in _runs(c)):
        first = next((e for e in r.rounds if e.get("round") == 0), None)
        if first is not None and r.seed not in by_seed and math.isfinite(num(first.get("test_acc"))):
            by_seed[r.seed] = num(first["test_acc"])
    return [by_seed[s] for s in sorted(by_seed)]


def levels(cells: list[Cell]) -> dict[tuple[str, str], list[Level]]:
    """{(dataset name, architecture): its difficulty levels, easiest first}, for those with two levels or more."""
    by_name = defaultdict(lambda: defaultdict(list))
    for c in cells:
        runs = _runs(c)
        if runs:
            by_name[(runs[0].config["dataset"]["name"], c.row)][c.dataset].append(c)
    out = {}
    for key, by_label in by_name.items():
        if len(by_label) < 2:
            continue
        flats = {lab: _dataset_options(cs) for lab, cs in by_label.items()}
        varying = sorted({k for f in flats.values() for k in f if len({g.get(k) for g in flats.values()}) > 1})
        made = [
            Level(
                lab,
                ", ".join(f"{k}={flats[lab].get(k, '—')}" for k in varying),
                _dense(cs),
                {c.col: c for c in cs},
            )
            for lab, cs in by_label.items()
        ]
        out[key] = sorted(made, key=lambda lv: (-_finite(lv.dense_mean), lv.label))
    return out


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _dataset_options(cs: list[Cell]) -> dict[str, str]:
    cfg = _runs(cs[0])[0].config.get("dataset") or {}
    return {k: json.dumps(v) for k, v in flatten(cfg).items() if k != "name"}


def seed_choices(c: Cell) -> dict[int, float]:
    """ϕ chosen in each seed alone, as the cell's ϕ is chosen over the mean of all seeds (stats.choose)."""
    seeds = sorted({r.seed for r in _runs(c)})
    out = {}
    for s in seeds:
        groups = {p: PhiGroup(p, [g.by_seed()[s]]) for p, g in c.groups.items() if s in g.by_seed()}
        best = choose(groups, c.chosen_on, baseline(groups))
        if best is not None:
            out[s] = best.phi
    return out


def row(name: str, arch: str, level: Level, c: Cell) -> dict:
    """One (difficulty, strategy) row of the gradient table."""
    per_seed = seed_choices(c)
    m, half, n = mean_ci(per_seed.values())
    vs = compare(c.zero, c.best) if c.best is not None else None
    if c.best is None or c.zero is None:
        verdict = "no ϕ = 0 run (nor an inactive ϕ) to compare with" if c.best is not None else "no usable run"
    elif c.best is c.zero:
        verdict = "ϕ* = 0"
    else:
        verdict = vs["verdict"]
    return {
        "dataset": name,
        "architecture": arch,
        "difficulty": level.options,
        "dense_test": acc_text(level.dense),
        "strategy": c.col,
        "phi_star": fmt_phi(c.best.phi) if c.best is not None else "—",
        "chosen_on": c.chosen_on,
        "phi_star_per_seed": " ".join(f"{s}:{fmt_phi(p)}" for s, p in per_seed.items()),
        "phi_star_seed_mean": "—" if n == 0 else f"{m:.3g}",
        "phi_star_seed_ci95": "—" if half is None else f"{half:.3g}",
        "n": n,
        "test_at_zero": acc_text(r.test for r in c.zero.runs) if c.zero else "—",
        "test_at_phi_star": acc_text(r.test for r in c.best.runs) if c.best else "—",
        "gap_pp": pct(vs["mean"]) if vs and vs["n"] else "—",
        "gap_ci95_pp": pct(vs["ci"]) if vs else "—",
        "p_paired_t": pval(vs["p_t"]) if vs else "—",
        "verdict": verdict,
    }


def gradient(cells: list[Cell]) -> list[dict]:
    """The gradient table's rows: per (dataset, architecture) with two difficulty levels or more, per level
    (easiest first) and strategy."""
    return [
        row(name, arch, lv, lv.cells[col])
        for (name, arch), lvs in sorted(levels(cells).items())
        for lv in lvs
        for col in sorted(lv.cells, key=column_key)
    ]


def _points(lvs: list[Level], col: str):
    """Per level with this strategy: dense test error (%), ϕ*, the per-seed choices' mean and half-width, the gap
    (pp) and its half-width."""
    pts = []
    for lv in lvs:
        c = lv.cells.get(col)
        if c is None or c.best is None or not math.isfinite(lv.dense_mean):
            continue
        mean, half, _ = mean_ci(seed_choices(c).values())
        vs = compare(c.zero, c.best) if c.zero is not None else None
        gap = 100 * vs["mean"] if vs and vs["n"] else math.nan
        gap_half = 100 * (vs["ci"] or 0.0) if vs else 0.0
        pts.append((100 * (1 - lv.dense_mean), c.best.phi, mean, half or 0.0, gap, gap_half))
    return pts


def figure(plt, name: str, arch: str, lvs: list[Level]):
    """ϕ* (left: the line; the bars, the per-seed choices' mean ± 95 % CI) and test accuracy at ϕ* minus at ϕ = 0
    (right, ± its 95 % CI over seeds) against the dense network's test error, one line per strategy."""
    from phicenter.analysis.figures import phi_axis

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    cols = sorted({col for lv in lvs for col in lv.cells}, key=column_key)
    phis = set()
    for col in cols:
        pts = _points(lvs, col)
        if not pts:
            continue
        x, phi, seed_mean, phi_half, gap, gap_half = (np.array(v, dtype=float) for v in zip(*pts))
        (line,) = left.plot(x, phi, "o-", label=col)
        left.errorbar(x, seed_mean, yerr=phi_half, fmt="_", color=line.get_color(), capsize=3)
        right.errorbar(x, gap, yerr=gap_half, fmt="o-", capsize=3, label=col)
        phis |= {float(p) for p in phi}
    right.axhline(0.0, color="grey", linewidth=0.8)
    left.set(
        xlabel="dense test error (%): harder →",
        ylabel="ϕ* (chosen on validation)",
        title="ϕ* (bars: per-seed choices, mean ± 95 % CI)",
    )
    right.set(
        xlabel="dense test error (%): harder →",
        ylabel="test accuracy at ϕ* − at ϕ = 0 (pp)",
        title="gain at ϕ* (bars: 95 % CI over seeds)",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    fig.suptitle(f"{name} · {arch}: the complexity gradient")
    phi_axis(left, sorted(phis), axis="y", data=list(phis))
    return fig


def figures(cells: list[Cell], render=None) -> list[tuple[str, str, object]]:
    """One figure per (dataset, architecture) with two difficulty levels or more: (caption, file name, render(fig));
    `render` as analysis.figures.figures' (default: the PNG bytes)."""
    import matplotlib

    from phicenter.analysis.figures import _png, slug

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    render = render or _png
    return [
        (f"{name} · {arch}: ϕ* and its gain against difficulty", slug("gradient", name, arch) + ".png", render(fig))
        for (name, arch), lvs in sorted(levels(cells).items())
        for fig in [figure(plt, name, arch, lvs)]
    ]


HEADERS = {
    "difficulty": "difficulty",
    "dense_test": "dense test %",
    "strategy": "strategy",
    "phi_star": "ϕ*",
    "phi_star_per_seed": "ϕ* per seed",
    "phi_star_seed_mean": "ϕ* per seed: mean",
    "phi_star_seed_ci95": "± 95 % CI",
    "n": "n",
    "test_at_zero": "test % at ϕ = 0",
    "test_at_phi_star": "test % at ϕ*",
    "gap_pp": "Δ (pp)",
    "gap_ci95_pp": "± 95 % CI",
    "p_paired_t": "p (paired t)",
    "verdict": "verdict",
}


def markdown(rows: list[dict], made: list[tuple[str, str, object]]) -> list[str]:
    """The report's section: per (dataset, architecture), the table and its figure."""
    if not rows:
        return []
    lines = [
        "## The complexity gradient",
        "",
        "Per difficulty level (the dataset options that differ between its runs; easiest first, by the dense "
        "network's test accuracy, mean ± 95 % CI over seeds) and strategy: ϕ* chosen on validation (the best mean "
        "over seeds), the ϕ each seed alone would choose and their mean ± 95 % CI, and the test accuracy at ϕ* "
        "against ϕ = 0, paired by seed (difference, its 95 % CI, the paired t-test). The paper's claim: ϕ* "
        "matters little on an easy task and more as it gets harder, small and non-zero, growing with difficulty.",
        "",
    ]
    for (name, arch), part in _by_key(rows).items():
        lines += [f"### {name} · {arch}", "", _table(part)]
        lines += [f"![{cap}]({f})\n" for cap, f, _ in made if cap.startswith(f"{name} · {arch}: ")]
    return lines


def _by_key(rows: list[dict]) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[(r["dataset"], r["architecture"])].append(r)
    return out


def _table(rows: list[dict]) -> str:
    cols = list(HEADERS)
    lines = ["| " + " | ".join(HEADERS[c] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
