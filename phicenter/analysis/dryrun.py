"""`dry_run=phi`: which phi values can matter, before spending compute on a grid.

After round 0, re-runs round 1's boundary (prune + re-sign) on a copy of the model for every (strategy, phi)
and counts the survivors each phi re-signs. Nothing is trained beyond round 0.
"""
from __future__ import annotations

import copy

from phicenter.method import strategies
from phicenter.method.imp import IMP, IMPConfig, layer_phi

PAPER_PHIS = (-0.1, -1e-3, -5e-4, -1e-4, -5e-5, 0.0, 5e-5, 1e-4, 5e-4, 1e-3, 0.1)
PAPER_STRATEGIES = ("mask0", "mask1", "gradual", "standard")


def phi_table(imp: IMP, phis=PAPER_PHIS, strategy_names=PAPER_STRATEGIES, strategy_options=None) -> list[dict]:
    """One row per (strategy, phi): survivors at round 1, how many phi re-signs, dead-zone occupancy, per layer."""
    rows = []
    for name in strategy_names:
        for phi in phis:
            net = copy.deepcopy(imp.model)
            probe = IMP(net, strategies.build(name, **(strategy_options or {}).get(name, {})),
                        IMPConfig(**{**imp.cfg.__dict__, "phi": float(phi)}), fresh_init=imp.fresh_init)
            # theta0 and the constants come from the real run, not from the trained copy
            probe.theta0, probe.constants = imp.theta0, imp.constants
            probe.phis = {n: layer_phi(imp._theta0_weight(n), float(phi), imp.cfg.phi_scale) for n in imp.layers}
            d = probe.advance(1)
            rows.append({"strategy": name, "phi": float(phi), "survivors": d["survivors"],
                         "flipped_by_phi_count": d["flipped_by_phi_count"], "dead_zone_count": d["dead_zone_count"],
                         "flipped_by_phi": d["flipped_by_phi"], "dead_zone": d["dead_zone"],
                         "layers": {n: {k: v[k] for k in ("survivors", "flipped_by_phi_count", "dead_zone_count",
                                                           "critical_phi_pos", "critical_phi_neg")}
                                    for n, v in d["layers"].items()}})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["strategy   phi        survivors  re-signed by phi  dead zone",
             "---------  ---------  ---------  ----------------  ---------"]
    for r in rows:
        lines.append(f"{r['strategy']:<9}  {r['phi']:<9g}  {r['survivors']:>9}  {r['flipped_by_phi_count']:>16}  "
                     f"{r['dead_zone_count']:>9}")
    return "\n".join(lines)
