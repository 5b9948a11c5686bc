"""Lightning callbacks: the IMP round boundary happens here, between fits, never inside the loop."""
from __future__ import annotations

import pytorch_lightning as pl

from phicenter.imp import IMP


class PruneReinit(pl.Callback):
    """At the start of round k >= 1: prune the trained weights, re-sign survivors relative to phi,
    reinitialise them at the constant magnitude. The optimizer is created fresh by the new fit."""

    def __init__(self, imp: IMP, round_index: int):
        self.imp, self.round_index = imp, round_index
        self.diagnostics: dict | None = None

    def on_fit_start(self, trainer, pl_module):
        if self.round_index > 0 and self.diagnostics is None:
            self.diagnostics = self.imp.advance(self.round_index)
