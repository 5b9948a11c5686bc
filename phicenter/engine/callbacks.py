"""Lightning callbacks: the IMP round boundary (engine.boundary), the late-rewinding point, and epoch checkpoints
that make a kill cost one epoch at most."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from phicenter.engine.rundir import DIGEST
from phicenter.io import newest_loadable, write_with
from phicenter.method import pruning
from phicenter.method.imp import IMP
from phicenter.spec import ConfigError


class RewindPoint(pl.Callback):
    """Late rewinding (engine.rewinding): right after round 0's s-th optimizer step, each variant's state becomes
    its rewind point theta_s (IMP.set_rewind), saved beside its theta0 so that a resumed run uses the same one,
    and the optimizer's state starts afresh, as it does where every later round starts (open_lth trains each
    level, its word for a round, the dense one included, from step s with a new optimizer). The LR schedule runs on."""

    def __init__(self, imps: list[IMP], folders: list, step: int):
        self.imps, self.folders, self.step = list(imps), list(folders), int(step)

    def on_fit_start(self, trainer, pl_module):
        pl_module.after_step = (self.step, lambda: self.reached(trainer, pl_module))

    def on_fit_end(self, trainer, pl_module):
        pl_module.after_step = None

    def reached(self, trainer, pl_module) -> None:
        pl_module.scatter()
        for imp, folder in zip(self.imps, self.folders):
            imp.set_rewind({k: v.detach().to("cpu", copy=True) for k, v in imp.model.state_dict().items()})
            folder.save_rewind(imp.rewind)
        for opt in trainer.optimizers:
            opt.state.clear()


class EpochCheckpoint(pl.callbacks.Checkpoint):
    """Saves the whole fit state (weights, masks, optimizer, schedule, loop progress) after every epoch,
    atomically (phicenter.io), keeping the previous one as a fallback. Runs after the module's own epoch-end
    hook."""

    def __init__(self, folder: Path, every_n_epochs: int = 1, digests: list[str | None] | None = None):
        self.folder = Path(folder)
        self.every = max(1, int(every_n_epochs))
        self.digests = list(digests or [])  # the configuration digest of each variant of the fit, in its order

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[DIGEST] = self.digests

    @property
    def last(self) -> Path:
        return self.folder / "last.ckpt"

    @property
    def prev(self) -> Path:
        return self.folder / "prev.ckpt"

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.every:
            return
        if trainer.is_global_zero:  # Lightning writes the temporary file, phicenter.io puts it in place
            write_with(self.last, trainer.save_checkpoint, keep=self.prev)
        else:  # every process takes part in saving; the first one writes
            trainer.save_checkpoint(self.last)

    def resumable(self, log) -> str | None:
        """The newest epoch checkpoint that loads; a corrupt or truncated one is reported and skipped. One
        saved while masks were parametrizations is not resumed (its optimizer state follows another order of
        the parameters): the round is trained again from its start.

        The load is a safe one (weights_only=True: everything Lightning and phicenter put in an epoch checkpoint
        is tensors and plain containers), so a file holding code is refused here, named, and never reaches
        Lightning's own load of the path returned (trainer.fit(..., weights_only=True) in engine.fit)."""
        found = newest_loadable(
            (self.last, self.prev), lambda path: torch.load(path, map_location="cpu", weights_only=True), log
        )
        if not found:
            return None
        path, state = found
        if isinstance(state, dict) and state.get(DIGEST) not in (None, self.digests):  # None: an older phicenter
            raise ConfigError(
                f"{path} was trained under configuration {state[DIGEST]}, and this fit is {self.digests}; "
                "relaunch the run with its own settings, use another folder, or resume=false to start over"
            )
        if isinstance(state, dict) and pruning.is_legacy(state.get("state_dict", {})):
            log(
                f"checkpoint {path} holds masks as parametrizations (an older phicenter): the round "
                "starts again from its beginning, to the same result"
            )
            return None
        return str(path)
