"""phicenter: iterative magnitude pruning with polarity decided at a threshold phi_center (docs/method.md)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config tree that phicenter.train composes
