"""One fit of a cohort module, the only place the engine calls Lightning's fit: a round of the loop, an
instability copy and a sign transfer all train through `fit_round`, so each is checkpointed every epoch,
resumed after a kill and tested alike."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from phicenter.engine import build
from phicenter.engine.callbacks import EpochCheckpoint
from phicenter.engine.module import CohortModule, Diverged
from phicenter.engine.rewinding import Plan

log = logging.getLogger("phicenter")


@dataclass
class Fitted:
    """How a fit went: the epoch checkpoint it resumed from (None: it trained from its start), and, for a fit
    apart from the run's lineage, the message of its Diverged (None: some net trained through)."""

    resumed_from: str | None
    diverged: str | None = None


def fit_round(
    module: CohortModule,
    s,
    r: int,
    batches,
    device,
    folder: Path,
    digests: list,
    epochs: int,
    plan: Plan | None = None,
    callbacks: tuple = (),
    what: str | None = None,
    apart: bool = False,
) -> Fitted:
    """Fit `module` as round r of `epochs` epochs on (train, val, test) `batches` (a late-rewinding `plan`:
    from its rewind point on, engine.rewinding), resumed from its newest epoch checkpoint in `folder` when
    there is one (under `s.resume`), then test it and scatter its stacked tensors into the variants' nets.
    `digests`: the configuration digest of each net, kept in the checkpoints; `callbacks` run before the epoch
    checkpoint; `what`: how the log names the fit (default "round r"). Every net diverged: Diverged is raised,
    or, for a fit `apart` from the run's lineage (an instability copy, a transfer), recorded in the result and
    the run goes on."""
    plan = plan or Plan(epochs)
    train_b, val_b, test_b = batches
    saver = EpochCheckpoint(folder, s.checkpoint.every_n_epochs, digests)
    resume_from = saver.resumable(log.warning) if s.resume else None
    if resume_from:
        log.info("resuming %s from %s", what or f"round {r}", resume_from)
    trainer = build.make_trainer(s, [*callbacks, saver], plan.fit_epochs(r), progress=True)
    module.start_round(r, epochs, plan)
    module.train_batches = train_b
    for b in batches:
        b.to(device)
    module.prepare(device, compile=s.compile)
    diverged = None
    try:
        # weights_only: Lightning's own load of the checkpoint is a safe one too (EpochCheckpoint.resumable)
        trainer.fit(module, train_dataloaders=train_b, val_dataloaders=val_b, ckpt_path=resume_from, weights_only=True)
        trainer.test(module, dataloaders=test_b, verbose=False)
    except Diverged as e:
        if not apart:
            raise
        diverged = str(e)
    module.scatter()
    return Fitted(resume_from, diverged)


def clear(folder: Path) -> None:
    """A fit's epoch checkpoints, and the cohort's folder of them once it is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    if parent.name.startswith("cohort_") and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
