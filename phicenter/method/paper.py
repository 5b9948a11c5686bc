"""The seed paper's grid (Table 1): its four strategies and its eleven phi_center values, in the paper's order.
The experiments' sweeps (conf/experiment/*.yaml) list the same values; tests/test_experiments.py pins them."""

from __future__ import annotations

STRATEGIES = ("mask0", "mask1", "gradual", "standard")
PHIS = (0.0, 5e-5, -5e-5, 1e-4, -1e-4, 5e-4, -5e-4, 1e-3, -1e-3, 0.1, -0.1)
