"""The report's figures as PNG bytes: accuracy and flip share vs ϕ, accuracy vs sparsity, critical ϕ per layer."""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict

import numpy as np

from phicenter.analysis.runs import num, phi_record
from phicenter.analysis.stats import Cell, mean_ci
from phicenter.analysis.tables import fmt_phi, mean_flip


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _against_phi(ax, phis, ylabel: str, title: str) -> None:
    """The axes of a figure against phi: a symmetric log x axis ticked at the phis, labels, grid, the legend
    beside the axes."""
    ax.set(xlabel="ϕ (symmetric log)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=8)
    phi_axis(ax, phis)


def _legend_beside(ax, **kw) -> None:
    """The legend right of the axes, outside the data area (two columns when it is long)."""
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, ncol=1 if n <= 14 else 2, **kw)


def phi_label(phi: float) -> str:
    """A phi as a tick label: 0, 0.05, -1e-3, 5e-5, 2.5e-4 (no exponent zeros or plus sign)."""
    if phi == 0:
        return "0"
    if 1e-2 <= abs(phi) < 1e3:
        return f"{phi:g}"
    mantissa, exponent = f"{phi:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _tick_label(phi: float) -> str:
    """`phi_label` with matplotlib's minus sign (rcParams axes.unicode_minus), as its own tick labels have."""
    from matplotlib.ticker import Formatter

    return Formatter.fix_minus(phi_label(phi))


def _priority(phi: float, present: set[float], ends: set[float]) -> tuple:
    """The order ticks are kept in when their labels would overlap: 0, the extreme phis, the phis present (powers
    of ten first, the largest first), then the powers of ten of the data around them."""
    decade = phi != 0 and math.isclose(abs(phi), 10 ** round(math.log10(abs(phi))))
    return (phi != 0, phi not in ends, phi not in present, not decade, -abs(phi), phi)


def phi_axis(ax, phis, axis: str = "x", data=()) -> None:
    """A symmetric log phi axis (linear within the smallest non-zero |phi| of `phis` and `data`), ticked at 0 and
    at the `phis` present (with `data`, the values drawn besides them: also the powers of ten within the axis'
    limits), each labelled compactly (`phi_label`). Ticks whose labels would overlap at the figure's size are
    dropped in `_priority`'s order (every phi present keeps an unlabelled minor tick). Call it last: it draws
    the figure to measure the labels."""
    finite = [float(v) for v in (*phis, *data) if math.isfinite(v)]
    nonzero = sorted({abs(v) for v in finite if v != 0})
    (ax.set_xscale if axis == "x" else ax.set_yscale)("symlog", linthresh=nonzero[0] if nonzero else 1e-5)
    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    present = {float(p) for p in phis if math.isfinite(p)} | {0.0}
    decades = {s * 10.0**k for k in range(-12, 4) for s in (-1, 1)} if data else set()
    candidates = sorted(present | {d for d in decades if lo <= d <= hi})
    a.set_ticks(candidates, labels=[_tick_label(v) for v in candidates])
    ax.figure.canvas.draw()
    boxes = dict(zip(a.get_majorticklocs(), (t.get_window_extent() for t in a.get_majorticklabels())))
    pad = ax.figure.dpi * 3 / 72  # 3 points between two labels
    ends = {min(present), max(present)}
    kept = []
    for v in sorted(candidates, key=lambda v: _priority(v, present, ends)):
        box = boxes[v].padded(pad)
        if not any(box.overlaps(boxes[k]) for k in kept):
            kept.append(v)
    kept.sort()
    a.set_ticks(kept, labels=[_tick_label(v) for v in kept])
    a.set_ticks(sorted(present), minor=True)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def slug(*parts: str) -> str:
    return "__".join(re.sub(r"[^A-Za-z0-9.=-]+", "_", p).strip("_") for p in parts)


def figures(cells: list[Cell], render=None) -> list[tuple[str, str, bytes]]:
    """The PNGs as (caption, file name, PNG bytes), in the order they should appear. `render`: what each drawn
    figure becomes (default: its PNG bytes, the figure closed; the tests keep the figure itself)."""
    plt, render = _plt(), render or _png
    made = []
    by_row = defaultdict(list)
    for c in cells:
        by_row[(c.dataset, c.row)].append(c)

    for (ds, row), cs in by_row.items():
        phis = sorted({p for c in cs for p in c.groups})
        name = slug("acc_vs_phi", ds, row) + ".png"
        made.append((f"{ds} · {row}: final test accuracy vs ϕ", name, render(_accuracy_figure(plt, ds, row, cs, phis))))

        # Share of survivors re-signed by phi, per strategy.
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c in cs:
            xs = sorted(c.groups)
            ax.plot(xs, [100 * mean_flip(c.groups[p]) for p in xs], "o-", label=c.col)
        title = f"{ds} · {row}: flip fraction vs ϕ (mean over rounds ≥ 1 and seeds)"
        _against_phi(ax, phis, "survivors re-signed by ϕ (%)", title)
        name = slug("flips_vs_phi", ds, row) + ".png"
        made.append((f"{ds} · {row}: share of survivors whose sign ϕ changed", name, render(fig)))

        for c in cs:
            for caption, n, fig in _sparsity_figure(plt, c) + _critical_figure(plt, c):
                made.append((caption, n, render(fig)))
    return made


def _accuracy_figure(plt, ds: str, row: str, cs: list[Cell], phis: list[float]):
    """Final test accuracy vs phi, one line per strategy, 95 % CI band (the paper's appendix B)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in cs:
        xs = sorted(c.groups)
        m = [mean_ci(r.test for r in c.groups[p].runs) for p in xs]
        y = np.array([100 * v[0] for v in m])
        half = np.array([100 * (v[1] or 0.0) for v in m])
        (line,) = ax.plot(xs, y, "-", label=f"{c.col} (n={max(v[2] for v in m)})")
        ax.fill_between(xs, y - half, y + half, color=line.get_color(), alpha=0.2, linewidth=0)
        act = [i for i, p in enumerate(xs) if not (p != 0 and c.groups[p].inactive)]
        ina = [i for i in range(len(xs)) if i not in act]
        ax.plot([xs[i] for i in act], y[act], "o", color=line.get_color())
        ax.plot([xs[i] for i in ina], y[ina], "o", mfc="white", color=line.get_color())
        if c.best is not None:
            best = 100 * mean_ci(r.test for r in c.best.runs)[0]
            ax.plot([c.best.phi], [best], "*", ms=14, color=line.get_color(), mec="black")
    _against_phi(
        ax,
        phis,
        "final test accuracy (%)",
        f"{ds} · {row}: final accuracy vs ϕ\n(band: 95 % CI over seeds; ★ chosen ϕ; hollow: ϕ inactive)",
    )
    return fig


def _sparsity_figure(plt, c: Cell) -> list[tuple[str, str, object]]:
    """Test accuracy across rounds against the pruned sparsity, one line per phi (sign_transfer: each round's
    transferred network; round 0, the dense stage-1 network); where the effective sparsity differs from it, the
    same accuracies against the effective sparsity, dotted, with hollow markers."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.cm.viridis(np.linspace(0, 0.95, max(len(c.groups), 1)))
    for color, phi in zip(colors, sorted(c.groups)):
        g = c.groups[phi]
        n_rounds = min(len(r.rounds) for r in g.runs)
        sp = [100 * num(g.runs[0].rounds[i].get("sparsity")) for i in range(n_rounds)]
        eff = [100 * num(g.runs[0].rounds[i].get("effective_sparsity")) for i in range(n_rounds)]
        acc = [100 * mean_ci(num(phi_record(r.rounds[i]).get("test_acc")) for r in g.runs)[0] for i in range(n_rounds)]
        inactive = phi != 0 and g.inactive
        ax.plot(
            sp,
            acc,
            "o--" if inactive else "o-",
            color=color,
            ms=3,
            label=f"ϕ = {fmt_phi(phi)}" + (" (inactive)" if inactive else ""),
        )
        if any(math.isfinite(e) and abs(e - s) > 1e-9 for e, s in zip(eff, sp)):
            ax.plot(eff, acc, "o:", color=color, ms=3, mfc="none", label=f"ϕ = {fmt_phi(phi)}, effective")
    ax.set(
        xlabel="sparsity (%): pruned (solid), effective where it differs (dotted)",
        ylabel="test accuracy (%)",
        title=f"{c.dataset} · {c.row} · {c.col}: accuracy vs sparsity (mean over seeds)",
    )
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=7)
    name = slug("acc_vs_sparsity", c.dataset, c.row, c.col) + ".png"
    return [(f"{c.dataset} · {c.row} · {c.col}: accuracy vs sparsity, one line per ϕ", name, fig)]


def _critical_figure(plt, c: Cell) -> list[tuple[str, str, object]]:
    """Each layer's critical ϕ (smallest positive / largest negative ϕ that re-signs a survivor) per round,
    against the swept ϕ values. Taken from the ϕ = 0 runs when there are any (median over seeds)."""
    source = c.groups[0.0].runs if 0.0 in c.groups else [r for g in c.groups.values() for r in g.runs]
    series = defaultdict(lambda: defaultdict(list))  # (layer, sign) -> round -> values
    for run in source:
        for r in run.rounds:
            layers = phi_record(r).get("layers")
            layers = layers if isinstance(layers, dict) else {}
            for layer, v in layers.items():
                for sign in ("pos", "neg") if isinstance(v, dict) else ():
                    x = num(v.get(f"critical_phi_{sign}"))
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
        ax.plot(
            rs,
            ys,
            "o-" if sign == "pos" else "s--",
            color=colors[layer],
            ms=3,
            label=f"{layer} ({'+' if sign == 'pos' else '−'})",
        )
    for phi in sorted(c.groups):
        if phi != 0:
            ax.axhline(phi, color="grey", lw=0.8, ls=":")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(
        xlabel="round",
        ylabel="critical ϕ (symmetric log; dotted: the swept ϕ)",
        title=f"{c.dataset} · {c.row} · {c.col}: critical ϕ per layer vs swept ϕ (dotted)\n"
        "a swept ϕ between a layer's − and + curves re-signs nothing in that layer",
    )
    ax.grid(alpha=0.3)
    _legend_beside(ax, fontsize=7)
    phi_axis(ax, list(c.groups), axis="y", data=values)
    name = slug("critical_phi", c.dataset, c.row, c.col) + ".png"
    return [(f"{c.dataset} · {c.row} · {c.col}: each layer's critical ϕ across rounds vs the swept ϕ", name, fig)]
