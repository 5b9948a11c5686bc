"""Reference experiments against the literature: each run's test accuracy across the pruning rounds beside the
published points of the paper it reproduces (the experiment's `reference` block, recorded in results.json), in a
table and on one figure per architecture, and the matching sparsity of both.

Matching sparsity (ours): over the seeds of a cell, the dense round's mean test accuracy minus the half-width of
its 95 % t interval is the threshold (the mean itself with one seed); the sparsest round whose mean test accuracy
is not below it matches, and is given with its own mean and 95 % interval. The paper's: the level its text names
(`matching_remaining`), else the sparsest published point whose accuracy is not below the published dense one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import yaml

from phicenter.analysis.runs import Run, num
from phicenter.analysis.stats import Cell, mean_ci
from phicenter.config import flatten

NEAR = 1.05  # a published point sits beside a round whose remaining weights are within 5 % of its own


@dataclass
class Round:
    round: int
    remaining: float  # % of the prunable weights, mean over seeds
    mean: float  # test accuracy, %
    ci: float | None  # half-width of the 95 % t interval, % (None: one seed)
    n: int


@dataclass
class Comparison:
    """One published curve and the runs of one cell it is compared with."""

    reference: dict
    curve: dict
    cell: Cell
    phi: float
    rounds: list[Round]
    ours: dict  # matching(rounds)
    paper: dict | None  # published_matching(curve)
    problems: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.cell.dataset} · {self.cell.row} · {self.cell.col}: {self.curve['label']}"


def parse_match(items) -> dict:
    """["rewind.epoch=2", "phi=0"] -> {"rewind.epoch": 2, "phi": 0}; ValueError names a malformed item."""
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"reference match item {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def round_table(runs: list[Run]) -> list[Round]:
    """Per round present in every run: remaining weights and test accuracy over the seeds, in %. A round with a
    transfer (sign_transfer's rounds >= 1) counts its transferred network's accuracy, the method's result, as the
    report's tables do; the dense round its own."""
    by_run = [{r["round"]: r for r in run.rounds} for run in runs]
    common = sorted(set.intersection(*(set(b) for b in by_run))) if by_run else []
    out = []
    for i in common:
        rem = [100 * (1 - num(b[i].get("sparsity"))) for b in by_run]
        m, h, n = mean_ci(100 * num((b[i].get("transfer") or b[i]).get("test_acc")) for b in by_run)
        out.append(Round(i, sum(rem) / len(rem), m, h, n))
    return out


def matching(rounds: list[Round]) -> dict:
    """The sparsest round whose mean test accuracy is not below the dense round's by more than the dense round's
    95 % interval (its mean, with one seed)."""
    dense = next((r for r in rounds if r.round == 0), None)
    if dense is None or not math.isfinite(dense.mean):
        return {"round": None, "why": "no dense round (round 0)"}
    threshold = dense.mean - (dense.ci or 0.0)
    ok = [r for r in rounds if math.isfinite(r.mean) and r.mean >= threshold]
    best = min(ok, key=lambda r: (r.remaining, -r.round))
    return {
        "round": best.round,
        "remaining": best.remaining,
        "mean": best.mean,
        "ci": best.ci,
        "n": best.n,
        "dense_mean": dense.mean,
        "dense_ci": dense.ci,
        "threshold": threshold,
    }


def published_matching(curve: dict) -> dict | None:
    """The paper's matching sparsity: as its text states it, else derived from its points."""
    if curve.get("matching_remaining") is not None:
        return {"remaining": float(curve["matching_remaining"]), "how": "stated"}
    points = curve.get("points") or []
    dense = next((p for p in points if float(p["remaining"]) == 100.0), None)
    if dense is None:
        return None
    ok = [p for p in points if float(p["accuracy"]) >= float(dense["accuracy"])]
    best = min(ok, key=lambda p: float(p["remaining"]))
    return {
        "remaining": float(best["remaining"]),
        "accuracy": float(best["accuracy"]),
        "dense": float(dense["accuracy"]),
        "how": "derived",
    }


# ---------------------------------------------------------------- which runs each published curve meets


def references(runs: list[Run]) -> list[tuple[dict, set]]:
    """Each distinct reference block among the labelled runs (duplicates of a used run included: a reference
    experiment that repeats another's training still names its paper), with the (dataset, row) it was run in."""
    found: dict[str, tuple[dict, set]] = {}
    for r in runs:
        ref = r.config.get("reference")
        if isinstance(ref, dict) and r.row:
            key = json.dumps(ref, sort_keys=True)
            found.setdefault(key, (ref, set()))[1].add((r.dataset, r.row))
    return list(found.values())


def compare(cells: list[Cell], runs: list[Run]) -> list[Comparison]:
    """Every published curve of every reference against the cells of its experiment whose strategy is the
    curve's and whose runs have the curve's `match` settings (at phi = 0 unless the match names phi)."""
    out = []
    for ref, places in references(runs):
        for curve in ref.get("curves") or []:
            try:
                want = parse_match(curve.get("match"))
            except ValueError as e:
                out.append(_unmatched(ref, curve, str(e)))
                continue
            phi = float(want.pop("phi", 0.0))
            hits = 0
            for c in cells:
                g = c.groups.get(phi)
                if (c.dataset, c.row) not in places or g is None:
                    continue
                flat = flatten(g.runs[0].config)
                if flat.get("strategy.name") != curve["strategy"]:
                    continue
                if not all(k in flat and _same(flat[k], v) for k, v in want.items()):
                    continue
                rounds = round_table(g.runs)
                out.append(Comparison(ref, curve, c, phi, rounds, matching(rounds), published_matching(curve)))
                hits += 1
            if not hits:
                shown = ", ".join(
                    [f"strategy={curve['strategy']}", f"phi={phi:g}", *(f"{k}={v}" for k, v in want.items())]
                )
                out.append(_unmatched(ref, curve, f"no complete run with {shown}"))
    return out


def _unmatched(ref: dict, curve: dict, why: str) -> Comparison:
    return Comparison(ref, curve, None, math.nan, [], {"round": None}, published_matching(curve), [why])
