"""Statistics of the cells: means with 95 % t intervals, the paired-by-seed test against ϕ = 0, and the choice
of a cell's ϕ (on validation or on test accuracy)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phicenter.analysis.runs import PhiGroup, column_key


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
    out = {
        "n": n,
        "mean": float(d.mean()) if n else math.nan,
        "ci": None,
        "p_t": None,
        "p_wilcoxon": None,
        "p_sign": None,
        "better": int((d > 0).sum()),
        "worse": int((d < 0).sum()),
        "tied": int((d == 0).sum()),
    }
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
    groups: dict  # phi -> PhiGroup
    chosen_on: str  # "val" or "test"
    fell_back: bool  # asked for val, but some run has no validation accuracy
    zero: PhiGroup | None  # ϕ = 0, or the inactive ϕ standing in for it (see baseline)
    best: PhiGroup | None
    best_nonzero: PhiGroup | None
    vs_zero: dict | None  # compare(zero, best non-zero)

    @property
    def stand_in(self) -> bool:
        return self.zero is not None and self.zero.phi != 0


def select(cells: dict, by: str) -> list[Cell]:
    out = []
    for (ds, row, col), groups in sorted(cells.items(), key=lambda kv: (*kv[0][:2], column_key(kv[0][2]))):
        fell_back = by == "val" and any(not math.isfinite(r.val) for g in groups.values() for r in g.runs)
        metric = "test" if fell_back else by  # no validation split: fall back, and say so in the table
        zero = baseline(groups)
        best = choose(groups, metric, zero)
        best_nz = choose(groups, metric, None)
        out.append(Cell(ds, row, col, groups, metric, fell_back, zero, best, best_nz, compare(zero, best_nz)))
    return out
