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
from collections import defaultdict
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
    transfer (sign_transfer's levels) counts its transferred network's accuracy, the method's result, as the
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


# ---------------------------------------------------------------- tables


def _acc(mean, ci) -> str:
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.2f}" + ("" if ci is None else f" ± {ci:.2f}")


def _pub(p: dict | None) -> str:
    if p is None:
        return "—"
    spread = p.get("spread")
    return (
        f"{float(p['accuracy']):.2f}"
        + (f" [{spread[0]:.2f}, {spread[1]:.2f}]" if spread else "")
        + (" (read off a plot)" if p.get("read_off_plot") else "")
    )


def side_by_side(comp: Comparison) -> list[dict]:
    """Our rounds and the published points on shared rows: a point sits beside the round whose remaining
    weights are nearest to its own, within 5 %; the others get their own rows."""
    points = sorted(comp.curve.get("points") or [], key=lambda p: -float(p["remaining"]))
    rows = [
        {
            "remaining": r.remaining,
            "round": r.round,
            "ours": _acc(r.mean, r.ci),
            "n": r.n,
            "paper": "—",
            "_ours": r,
            "_paper": None,
        }
        for r in comp.rounds
    ]
    for p in points:
        rem = float(p["remaining"])
        near = [
            row
            for row in rows
            if row["_paper"] is None
            and row["round"] != "—"
            and max(rem, row["remaining"]) / min(rem, row["remaining"]) <= NEAR
        ]
        if near:
            row = min(near, key=lambda row: abs(math.log(row["remaining"] / rem)))
        else:
            row = {"remaining": rem, "round": "—", "ours": "—", "n": "", "_ours": None}
            rows.append(row)
        row["paper"], row["_paper"] = _pub(p), p
    rows.sort(key=lambda row: -row["remaining"])
    return rows


def matching_text(comp: Comparison) -> str:
    m, p = comp.ours, comp.paper
    if comp.problems:
        ours = "ours: " + "; ".join(comp.problems)
    elif m.get("round") is None:
        ours = f"ours: {m.get('why', 'none')}"
    else:
        seeds = f"{m['n']} seed{'s' if m['n'] != 1 else ''}"
        band = (
            f"dense {_acc(m['dense_mean'], m['dense_ci'])} %, threshold {m['threshold']:.2f} %"
            if m["dense_ci"] is not None
            else f"dense {m['dense_mean']:.2f} %, one seed: no interval"
        )
        ours = (
            f"ours: round {m['round']}, {m['remaining']:.2f} % of the weights remaining, test accuracy "
            f"{_acc(m['mean'], m['ci'])} % ({seeds}; {band})"
        )
    if p is None:
        paper = "the paper's: not stated, and no published points to derive it from"
    elif p["how"] == "stated":
        paper = f"the paper's: {p['remaining']:g} % remaining, as its text states it"
    else:
        paper = (
            f"the paper's: {p['remaining']:g} % remaining, derived from the published points (the sparsest "
            f"at or above their dense {p['dense']:.2f} %)"
        )
    below = comp.curve.get("below_remaining")
    if below is not None:
        paper += f"; it falls below the dense accuracy from {below:g} % remaining"
    return f"{ours}; {paper}"


def rows_csv(comps: list[Comparison]) -> list[dict]:
    out = []
    for comp in comps:
        if comp.cell is None:
            continue
        for row in side_by_side(comp):
            o, p = row["_ours"], row["_paper"]
            spread = (p or {}).get("spread") or (None, None)
            out.append(
                {
                    "source": comp.reference.get("source", ""),
                    "curve": comp.curve["label"],
                    "dataset": comp.cell.dataset,
                    "architecture": comp.cell.row,
                    "strategy": comp.cell.col,
                    "remaining_pct": f"{row['remaining']:.3f}",
                    "round": row["round"],
                    "ours_test_pct": "" if o is None else f"{o.mean:.4f}",
                    "ours_ci95": "" if o is None or o.ci is None else f"{o.ci:.4f}",
                    "n": "" if o is None else o.n,
                    "paper_test_pct": "" if p is None else p["accuracy"],
                    "paper_low": "" if spread[0] is None else spread[0],
                    "paper_high": "" if spread[1] is None else spread[1],
                    "read_off_plot": "" if p is None else bool(p.get("read_off_plot")),
                }
            )
    return out


def matching_csv(comps: list[Comparison]) -> list[dict]:
    out = []
    for comp in comps:
        m, p = comp.ours, comp.paper or {}
        out.append(
            {
                "source": comp.reference.get("source", ""),
                "curve": comp.curve["label"],
                "dataset": comp.cell.dataset if comp.cell else "",
                "architecture": comp.cell.row if comp.cell else "",
                "strategy": comp.cell.col if comp.cell else comp.curve["strategy"],
                "ours_round": "" if m.get("round") is None else m["round"],
                "ours_remaining_pct": "" if m.get("round") is None else f"{m['remaining']:.3f}",
                "ours_test_pct": "" if m.get("round") is None else f"{m['mean']:.4f}",
                "ours_ci95": "" if m.get("ci") is None else f"{m['ci']:.4f}",
                "dense_test_pct": "" if m.get("round") is None else f"{m['dense_mean']:.4f}",
                "threshold_pct": "" if m.get("round") is None else f"{m['threshold']:.4f}",
                "n": m.get("n", ""),
                "paper_remaining_pct": p.get("remaining", ""),
                "paper_how": p.get("how", ""),
                "paper_below_pct": comp.curve.get("below_remaining") or "",
                "problem": "; ".join(comp.problems),
            }
        )
    return out


def markdown(comps: list[Comparison], figures: list[tuple[str, str, bytes]], md_table) -> list[str]:
    """The report's section, as lines."""
    if not comps:
        return []
    lines = [
        "## Compared with the literature",
        "",
        "Test accuracy (%) across the pruning rounds, mean ± 95 % CI over seeds, beside the published points "
        "(the paper's value and, in brackets, the spread it reports). Matching sparsity, ours: the sparsest "
        "round whose mean test accuracy is not below the dense round's by more than the dense round's 95 % CI; "
        "the paper's: as its text states it, or derived from its points.",
        "",
    ]
    by_ref = defaultdict(list)
    for comp in comps:
        by_ref[json.dumps(comp.reference, sort_keys=True)].append(comp)
    for group in by_ref.values():
        ref = group[0].reference
        lines += [
            f"### {ref.get('source', '(no source)')}",
            "",
            f"- Metric: {ref.get('metric', '—')}",
            f"- Spread: {ref.get('spread', '—')}",
        ]
        if ref.get("missing"):
            lines.append(f"- Missing: {ref['missing']}")
        lines.append("")
        for comp in group:
            title = comp.label if comp.cell else f"{comp.curve['strategy']}: {comp.curve['label']}"
            lines += [f"#### {title}", ""]
            if comp.curve.get("note"):
                lines += [f"The paper: {comp.curve['note']}", ""]
            if comp.cell is not None:
                table = [
                    {
                        "remaining (%)": f"{row['remaining']:.2f}",
                        "round": row["round"],
                        "ours": row["ours"],
                        "n": row["n"],
                        "paper": row["paper"],
                    }
                    for row in side_by_side(comp)
                ]
                lines += [md_table(table)]
            lines += [f"Matching sparsity — {matching_text(comp)}.", ""]
        figs = [(cap, name) for cap, name, _ in figures if cap.startswith(ref.get("source", "")[:40])]
        lines += [f"![{cap}]({name})\n" for cap, name in figs]
    return lines


# ---------------------------------------------------------------- figures


def figures(comps: list[Comparison]) -> list[tuple[str, str, bytes]]:
    """One figure per (reference, dataset, architecture row): our curves with their 95 % CI band and the
    published points with their spread, one colour per curve, remaining weights on a log axis from 100 % down."""
    from phicenter.analysis.figures import _plt, _png, slug

    groups = defaultdict(list)
    for comp in comps:
        if comp.cell is not None:
            groups[(json.dumps(comp.reference, sort_keys=True), comp.cell.dataset, comp.cell.row)].append(comp)
    if not groups:
        return []
    plt = _plt()
    made = []
    for (_, ds, row), group in groups.items():
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        for comp in group:
            x = [r.remaining for r in comp.rounds]
            y = [r.mean for r in comp.rounds]
            half = [r.ci or 0.0 for r in comp.rounds]
            n = max((r.n for r in comp.rounds), default=0)
            (line,) = ax.plot(x, y, "o-", ms=3, label=f"ours: {comp.cell.col} (n={n})")
            ax.fill_between(
                x,
                [a - h for a, h in zip(y, half)],
                [a + h for a, h in zip(y, half)],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
            if comp.ours.get("round") is not None:
                ax.plot([comp.ours["remaining"]], [comp.ours["mean"]], "*", ms=12, color=line.get_color())
            pts = sorted(comp.curve.get("points") or [], key=lambda p: -float(p["remaining"]))
            if pts:
                px = [float(p["remaining"]) for p in pts]
                py = [float(p["accuracy"]) for p in pts]
                lo = [max(0.0, py[i] - (p["spread"][0] if p.get("spread") else py[i])) for i, p in enumerate(pts)]
                hi = [max(0.0, (p["spread"][1] if p.get("spread") else py[i]) - py[i]) for i, p in enumerate(pts)]
                ax.errorbar(
                    px,
                    py,
                    yerr=[lo, hi],
                    fmt="s--",
                    ms=4,
                    capsize=3,
                    color=line.get_color(),
                    alpha=0.8,
                    label=f"paper: {comp.curve['label']}",
                )
            for key, style in (("matching_remaining", ":"), ("below_remaining", "-.")):
                if comp.curve.get(key) is not None:
                    ax.axvline(
                        float(comp.curve[key]),
                        ls=style,
                        color=line.get_color(),
                        alpha=0.6,
                        label=f"paper: {comp.curve['label']}, "
                        f"{'matches down to' if key == 'matching_remaining' else 'below from'} "
                        f"{comp.curve[key]:g} %",
                    )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xticks([t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2) if t >= min(ax.get_xlim())])
        ax.invert_xaxis()
        ax.set(
            xlabel="weights remaining (%)",
            ylabel="test accuracy (%)",
            title=f"{ds} · {row}: ours against the paper (★ our matching sparsity)",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        source = group[0].reference.get("source", "")
        made.append((f"{source[:40]} — {ds} · {row}", slug("literature", ds, row, source[:24]) + ".png", _png(fig)))
    return made
