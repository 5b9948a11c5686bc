"""The LightningModule that wraps every architecture: a fresh optimizer and schedule each fit (round)."""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


# devices with torch's fused (one kernel per parameter list) Adam, AdamW and SGD
FUSED_DEVICES = ("cpu", "cuda")


def optimizer_kwargs(params, optim: dict) -> tuple[type, dict]:
    """The torch optimizer class and its keyword arguments. `fused: true` (the default) asks for the fused
    implementation where the parameters' device has it: one pass over each tensor instead of one per
    arithmetic op (20-30 % of an fc_lot step on CPU). Same update; float rounding may differ in the last bit
    on a few elements (fused multiply-adds)."""
    cfg = dict(optim)
    name = cfg.pop("name")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    fused = cfg.pop("fused", False)
    if (fused and not cfg.get("foreach") and not cfg.get("differentiable")
            and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)):
        cfg["fused"] = True
    return OPTIMIZERS[name], cfg


def make_optimizer(params, optim: dict, schedule: dict | None, epochs: int):
    """A fresh optimizer and per-epoch LR schedule (or None) for one round of `epochs` epochs."""
    params = list(params)
    cls, kwargs = optimizer_kwargs(params, optim)
    opt = cls(params, **kwargs)
    schedule = schedule or {}
    sched = schedule.get("name", "none")
    if sched == "none":
        return opt, None
    if sched == "multistep":
        miles = [max(1, int(round(f * epochs))) for f in schedule.get("at", (0.5, 0.75))]
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, miles, gamma=schedule.get("gamma", 0.1))
    if sched == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    raise ValueError(f"schedule.name must be none, multistep or cosine, got {sched!r}")


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


class PhiModule(pl.LightningModule):
    """Accumulates loss and accuracy on the device and logs once per epoch on a step axis continuous
    across rounds (the global epoch index), so per-step overhead stays negligible.

    Optimisation is manual (training_step runs the optimizer steps) so that one Lightning call can carry
    several steps: data.Batches(group=k) yields groups of k batches, and Lightning's per-call overhead, which
    is larger than a whole fc_lot step on a CPU, is paid once per k steps. Same steps, same order, same maths."""

    def __init__(self, net: nn.Module, optim: dict, schedule: dict | None = None):
        super().__init__()
        self.net = net
        self.optim_cfg = dict(optim)
        self.schedule_cfg = dict(schedule or {"name": "none"})
        self.round = 0
        self.epoch_offset = 0       # epochs completed in earlier rounds
        self.train_batches = None   # set by the round loop; epochs re-seed it
        self.history: list[dict] = []
        self._sums = {}
        self.automatic_optimization = False

    def forward(self, x):
        return self.net(x)

    def configure_optimizers(self):
        opt, sched = make_optimizer(self.net.parameters(), self.optim_cfg, self.schedule_cfg, self.trainer.max_epochs)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def _acc(self, stage, logits, y, loss):
        """Per step, on the device and without a sync: keep the batch's mean loss and its count of correct
        predictions (three small kernels); _take reduces them once, at the end of the epoch."""
        losses, correct, sizes = self._sums.setdefault(stage, ([], [], []))
        losses.append(loss.detach())
        correct.append((logits.argmax(1) == y).sum())
        sizes.append(len(y))

    def _take(self, stage) -> tuple[float, float]:
        """(mean loss, accuracy) over the stage's samples, summed in float64."""
        s = self._sums.pop(stage, None)
        if s is None or not s[2]:
            return math.nan, math.nan
        losses, correct, sizes = s
        n = sum(sizes)
        loss = 0.0
        for v in (torch.stack(losses).double().cpu() * torch.tensor(sizes, dtype=torch.float64)).tolist():
            loss += v  # in step order, as a running float64 sum would
        return loss / n, float(torch.stack(correct).sum()) / n

    def on_save_checkpoint(self, checkpoint):
        checkpoint["phicenter"] = {"round": self.round, "history": self.history}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("phicenter", {})
        if state.get("round") == self.round:
            self.history = list(state.get("history", []))

    def prepare(self, device, compile: bool = False) -> None:
        """Speed options, idempotent, called before each fit: conv nets in channels_last on CUDA; with
        `compile`, torch.compile the net once, in place (state_dict keys unchanged). Masks are buffers
        updated in place between rounds, so re-masking reuses the compiled graphs."""
        if torch.device(device).type == "cuda" and any(isinstance(m, nn.Conv2d) for m in self.net.modules()):
            self.net.to(memory_format=torch.channels_last)
        if compile and getattr(self.net, "_compiled_call_impl", None) is None:
            self.net.compile()

    def on_train_epoch_start(self):
        if self.train_batches is not None:
            self.train_batches.set_epoch(self.round, self.current_epoch)

    def _direct(self) -> bool:
        """Plain torch steps (no loss scaling to do: 32-bit, or mixed precision without a GradScaler) skip
        Lightning's optimizer wrapper; anything else goes through manual_backward and its step."""
        plugin = self.trainer.precision_plugin
        return type(plugin) is pl.plugins.precision.Precision or (
            type(plugin) is pl.plugins.precision.MixedPrecision and plugin.scaler is None)

    def training_step(self, batch, _):
        """One optimizer step per (x, y) pair; `batch` is one pair or a group (data.Group, or a list) of them."""
        opt = self.optimizers()
        single = isinstance(batch, (tuple, list)) and isinstance(batch[0], torch.Tensor)
        steps = [batch] if single else batch  # else a group: an iterable of (x, y) pairs
        direct = self._direct()
        convert = None if direct or single else self.trainer.precision_plugin.convert_input
        for x, y in steps:
            if convert is not None:  # a group is opaque to Lightning: e.g. 64-true's double inputs
                x, y = convert((x, y))
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            if direct:
                opt.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                opt.optimizer.step()
            else:
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
            self._acc("train", logits, y, loss)
        if direct:  # keep trainer.global_step counting optimizer steps
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            for _ in range(len(steps)):
                progress.increment_ready()
                progress.increment_completed()

    def validation_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self._acc("val", logits, y, F.cross_entropy(logits, y))

    def test_step(self, batch, _):
        x, y = batch
        logits = self(x)
        self._acc("test", logits, y, F.cross_entropy(logits, y))

    def on_train_epoch_end(self):
        loss, acc = self._take("train")
        if not math.isfinite(loss):
            raise Diverged(f"training loss became {loss} in round {self.round}, epoch {self.current_epoch}")
        row = {"round": self.round, "epoch": self.current_epoch, "train_loss": loss, "train_acc": acc}
        val_loss, val_acc = self.__dict__.pop("_last_val", (math.nan, math.nan))
        if math.isfinite(val_acc):
            row.update(val_loss=val_loss, val_acc=val_acc)
        self.history.append(row)
        scheduler = self.lr_schedulers()  # manual optimisation: the epoch's schedule step is ours to take
        if scheduler is not None:
            scheduler.step()
        if self.logger is not None:
            self.logger.log_metrics({f"epoch/{k}": v for k, v in row.items()
                                     if k not in ("round", "epoch")} | {"epoch/round": self.round},
                                    step=self.epoch_offset + self.current_epoch)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self._sums.pop("val", None)
            return
        self._last_val = self._take("val")

    def on_test_epoch_end(self):
        self.last_test = self._take("test")

