"""`dry_run=phi`: which phi values can matter, before spending compute on a grid.

After round 0, re-runs round 1's boundary (prune + re-sign) on a copy of the model for every (strategy, phi)
and counts the survivors each phi re-signs and the survivors in its dead zone. Nothing is trained beyond
round 0. For sign_transfer, whose phi acts only in the transfer of each round, it counts what
signs(trained, phi) re-signs on round 1's mask with round 0's trained weights (round 1's transfer will read
round 1's trained weights, which a dry run does not train).
"""

from __future__ import annotations

from phicenter.method import paper, strategies, transfer
from phicenter.method.imp import IMP

PAPER_PHIS = tuple(sorted(paper.PHIS))  # the table's rows, in order
PAPER_STRATEGIES = paper.STRATEGIES
LAYER_KEYS = ("survivors", "flipped_by_phi_count", "dead_zone_count", "critical_phi_pos", "critical_phi_neg")


def phi_table(imp: IMP, phis=PAPER_PHIS, strategy_names=PAPER_STRATEGIES, strategy_options=None) -> list[dict]:
    """One row per (strategy, phi): survivors at round 1, how many phi re-signs, dead-zone occupancy, per layer."""
    rows = []
    for name in strategy_names:
        for phi in phis:
            probe = imp.probe(strategies.build(name, **(strategy_options or {}).get(name, {})), float(phi))
            d = probe.advance(1)
            if probe.strategy.transfers:  # the boundary keeps the trained values (lrr); phi acts in the transfer
                signed = transfer.signed_mask(probe.layers, probe.phis)
                d = transfer.diagnostics(
                    probe.layers, probe.phis, signed, {n: probe.theta0_weight(n) for n in probe.layers}
                )
            rows.append(
                {
                    "strategy": name,
                    "phi": float(phi),
                    "survivors": d["survivors"],
                    "flipped_by_phi_count": d["flipped_by_phi_count"],
                    "dead_zone_count": d["dead_zone_count"],
                    "flipped_by_phi": d["flipped_by_phi"],
                    "dead_zone": d["dead_zone"],
                    "layers": {n: {k: v[k] for k in LAYER_KEYS} for n, v in d["layers"].items()},
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table: per (strategy, phi) the survivors, those phi re-signs, and those in the dead zone
    (strictly between 0 and phi), as a count and a share of the survivors."""
    lines = [
        "strategy       phi        survivors  re-signed by phi  dead zone  dead zone %",
        "-------------  ---------  ---------  ----------------  ---------  -----------",
    ]
    for r in rows:
        lines.append(
            f"{r['strategy']:<13}  {r['phi']:<9g}  {r['survivors']:>9}  {r['flipped_by_phi_count']:>16}  "
            f"{r['dead_zone_count']:>9}  {100 * r['dead_zone']:>11.4f}"
        )
    return "\n".join(lines)
