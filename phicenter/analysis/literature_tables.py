"""A comparison with the literature (analysis.literature) as the report shows it: rows side by side, the
matching sparsity in words, the CSV rows, the markdown section and one figure per architecture."""

from __future__ import annotations

import json
import math
from collections import defaultdict

from phicenter.analysis.literature import NEAR, Comparison


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


def _draw(ax, comp: Comparison) -> None:
    """One comparison on the axes: our curve and its CI band, our matching sparsity (a star), the published
    points with their spread, and the paper's matching levels (vertical lines), in one colour."""
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
            _draw(ax, comp)
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
