"""The LightningModule that trains a cohort: K variants of one architecture, a fresh optimizer and schedule each
fit (round). For K = 1 it is the plain net; for K > 1 the variants' tensors stacked (engine.stacked)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from phicenter.config import groups
from phicenter.engine import distributed
from phicenter.engine.rewinding import Plan
from phicenter.engine.stacked import StackedNet, stacked_losses
from phicenter.method import pruning
from phicenter.spec import named

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


# devices with torch's fused (one kernel per parameter list) Adam, AdamW and SGD
FUSED_DEVICES = ("cpu", "cuda")


def optimizer_kwargs(params, optim) -> tuple[type, dict]:
    """The torch optimizer class and its keyword arguments, from the typed `optim` options (a mapping is typed
    by its declaration, config.groups.OPTIMIZERS). `fused: true` asks for the fused implementation where the
    parameters' device has it: one pass over each tensor instead of one per arithmetic op (20-30 % of an fc_lot
    step on CPU). Same update; float rounding may differ in the last bit on a few elements (fused
    multiply-adds)."""
    o = named(groups.OPTIMIZERS, optim, "optim")
    kwargs = {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name not in ("name", "fused")}
    if (
        o.fused
        and not o.foreach
        and not o.differentiable
        and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    ):
        kwargs["fused"] = True
    return OPTIMIZERS[o.name], kwargs


def make_optimizer(params, optim, schedule, epochs: int, first_epoch: int = 0):
    """A fresh optimizer and per-epoch LR schedule (or None) for one round of `epochs` epochs, the schedule
    at epoch `first_epoch` (a late-rewound round: stepped there as round 0's was, to the same rates).
    `optim` and `schedule` are typed options or mappings (typed by their declarations); schedule None: none."""
    params = list(params)
    cls, kwargs = optimizer_kwargs(params, optim)
    opt = cls(params, **kwargs)
    s = named(groups.SCHEDULES, schedule or {"name": "none"}, "schedule")
    if s.name == "none":
        return opt, None
    if s.name == "multistep":
        miles = [max(1, int(round(f * epochs))) for f in s.at]
        out = torch.optim.lr_scheduler.MultiStepLR(opt, miles, gamma=s.gamma)
    else:  # cosine
        out = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    with warnings.catch_warnings():  # (torch warns of a schedule stepped before the optimizer)
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(first_epoch):
            out.step()
    return opt, out


class Diverged(RuntimeError):
    """The training loss stopped being finite."""


class CohortModule(pl.LightningModule):
    """Accumulates each variant's loss and accuracy on the device and reports once per epoch, to each
    variant's Recorder, on a step axis continuous across rounds (the global epoch index).

    Optimisation is manual (training_step runs the optimizer steps) so that one Lightning call can carry
    several steps: data.Batches(group=k) yields groups of k batches, and Lightning's per-call overhead, which
    is larger than a whole fc_lot step on a CPU, is paid once per k steps. Same steps, same order, same maths.

    A variant whose loss stops being finite is set aside (`diverged`) and the others train on: their
    gradients never mix (the loss is the sum of the variants' own losses). Diverged is raised when none is
    left."""

    def __init__(
        self,
        nets: list[nn.Module],
        optim,
        schedule=None,
        impl: str = "auto",
        device=None,
        recorders: list | None = None,
        aws=None,
    ):
        super().__init__()
        self.k = len(nets)
        object.__setattr__(self, "nets", list(nets))  # the variants' own nets; for K > 1 not trained directly
        if self.k == 1:
            self.net, self.stack = nets[0], None
        else:
            self.stack = StackedNet(nets, impl=impl, device=device)
        self.impl = "unstacked" if self.stack is None else self.stack.impl
        self.optim = named(groups.OPTIMIZERS, optim, "optim")
        self.schedule = named(groups.SCHEDULES, schedule or {"name": "none"}, "schedule")
        self.recorders = list(recorders) if recorders is not None else [None] * self.k
        self.round = 0
        self.epoch_offset = 0  # the global epoch index of epoch 0 of this round
        self._plan = None  # where this run's rounds train on the schedule (engine.rewinding)
        self.first_epoch = 0  # the epoch of the schedule this round's fit starts at
        self.after_step = None  # (s, fn): fn() right after the fit's s-th optimizer step (RewindPoint)
        self.train_batches = None  # set by the round loop; epochs re-seed it
        self.history: list[list[dict]] = [[] for _ in range(self.k)]
        self.diverged: dict[int, str] = {}
        self.last_test: list[tuple[float, float]] = []
        self._sums = {}
        self.world = 1  # data-parallel processes of the fit (engine.distributed)
        self.aws = aws  # training batches with AWS (engine.transfer.AWSTraining), or None
        self.phase = ""  # what the progress shows beside the round ("transfer": sign_transfer's stage 2)
        self.automatic_optimization = False

    def start_round(self, round_index: int, epochs: int, plan: Plan | None = None) -> None:
        """The next fit is round `round_index` of `epochs` epochs; with a late-rewinding `plan`, a round >= 1
        trains from the rewind point to the end (plan.fit_epochs)."""
        self._plan = plan or Plan(epochs)
        self.round, self.epoch_offset = round_index, round_index * epochs
        self.first_epoch = self.plan.start(round_index)[0]
        self.history = [[] for _ in range(self.k)]

    @property
    def plan(self) -> Plan:
        """The round loop's plan (start_round); a fit without one trains its Trainer's max_epochs whole."""
        return self._plan or Plan(self.trainer.max_epochs)

    @property
    def round_epoch(self) -> int:
        """The epoch of the round's schedule being trained (0-based; the fit's own count starts at first_epoch)."""
        return self.first_epoch + self.current_epoch

    # -- the stack and the variants' nets ----------------------------------------------------------------
    def scatter(self) -> None:
        """Stack -> the variants' nets (K = 1: they are the same tensors)."""
        if self.stack is not None:
            self.stack.scatter(self.nets)

    def gather(self) -> None:
        if self.stack is not None:
            self.stack.gather(self.nets)

    def forward(self, x):
        return self.net(x) if self.stack is None else self.stack(x)

    def _losses(self, x, y, train: bool = False):
        """(logits, the loss to backpropagate, per-variant loss values [K]); `train`: a training batch (the
        only kind AWS moves)."""
        aws = self.aws if train else None
        if self.stack is None:
            logits = self.net(x) if aws is None else aws.forward(self, x)
            loss = F.cross_entropy(logits, y)
            return logits, loss, loss.detach().reshape(1)
        logits = self.stack(x, training=self.training) if aws is None else aws.forward(self, x)
        losses, values = stacked_losses(logits, y)
        return logits, losses.sum(), values

    def configure_optimizers(self):
        params = self.net.parameters() if self.stack is None else self.stack.optimizer_parameters()
        opt, sched = make_optimizer(params, self.optim, self.schedule, self.plan.epochs, self.first_epoch)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- per-epoch sums ----------------------------------------------------------------------------------
    def _acc(self, stage, logits, y, values):
        """Per step, on the device and without a sync: keep each variant's mean loss and count of correct
        predictions; _take reduces them once, at the end of the epoch."""
        losses, correct, sizes = self._sums.setdefault(stage, ([], [], []))
        losses.append(values.detach())
        correct.append(logits.argmax(-1) == y)  # [B] (or [K, B]): counted once, at the end of the epoch
        sizes.append(len(y))

    def _take(self, stage) -> list[tuple[float, float]]:
        """(mean loss, accuracy) of each variant over the stage's samples, summed in float64 in step order.
        Data-parallel, training: over every process's shard (evaluation runs whole on each process)."""
        s = self._sums.pop(stage, None)
        if s is None or not s[2]:
            return [(math.nan, math.nan)] * self.k
        losses, correct, sizes = s
        n = sum(sizes)
        weighted = torch.stack(losses).double().cpu() * torch.tensor(sizes, dtype=torch.float64)[:, None]
        hits = [float(h) for h in torch.cat(correct, -1).sum(-1).reshape(-1).tolist()]
        sums = []
        for column in weighted.t().tolist():
            loss = 0.0
            for v in column:
                loss += v  # in step order, as a running float64 sum would
            sums.append(loss)
        if self.world > 1 and stage == "train":
            *sums_hits, n = distributed.sum_over_processes([*sums, *hits, n], self.device)
            sums, hits = sums_hits[: self.k], sums_hits[self.k :]
        return [(loss / n, hit / n) for loss, hit in zip(sums, hits)]

    def on_save_checkpoint(self, checkpoint):
        checkpoint["phicenter"] = {"round": self.round, "history": self.history, "diverged": self.diverged}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("phicenter", {})
        if state.get("round") == self.round:
            self.history = [list(h) for h in state.get("history", self.history)]
            self.diverged = {int(i): m for i, m in state.get("diverged", {}).items()}

    def prepare(self, device, compile: bool = False) -> None:
        """Speed options, idempotent, called before each fit: conv nets in channels_last on CUDA; with
        `compile`, torch.compile the net (or the stack) once, in place (state_dict keys unchanged). The forward
        pass has no mask in it (weights hold their effective values), so re-masking reuses the compiled
        graphs."""
        target = self.net if self.stack is None else self.stack
        if (
            self.stack is None
            and torch.device(device).type == "cuda"
            and any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        ):
            self.net.to(memory_format=torch.channels_last)
        if compile and getattr(target, "_compiled_call_impl", None) is None:
            target.compile()

    def on_fit_start(self):
        """What the fit fixes for every step (the step's kind, its progress counter, whether its optimizer
        steps can move a dead weight), and data-parallel training (engine.distributed): gradients averaged
        here, each process on its shard of the data.

        The masks: every dead weight is put at its fill now (masks and fills written since the last fit, by
        the round boundary or anything else, are in force from the first forward pass). Each step then zeroes
        the gradients of dead weights, and re-applies the fills after the optimizer step when that step can
        move a dead weight (pruning.step_can_move_dead: weight decay, or an optimizer not known to leave
        zero-gradient entries as they are); otherwise the optimizer, new with each fit, leaves them exactly
        where they are and the re-application is skipped (it would cost a pass over every weight)."""
        self._direct_step = self._direct()
        self._step_progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        pruning.reapply_masks(self)
        self._reapply = pruning.step_can_move_dead(self.trainer.optimizers[0])
        self.world = distributed.world_size(self.trainer)
        if self.world > 1:
            distributed.own_gradients(self.trainer)
            if self.train_batches is not None:
                self.train_batches.shard(self.global_rank, self.world)

    def on_train_epoch_start(self):
        if self.train_batches is not None:
            e = self.round_epoch
            self.train_batches.set_epoch(self.round, e, self.plan.first_batch(self.round, e))
        if self.aws is not None:
            self.aws.start(self.round, self.round_epoch)

    def on_validation_epoch_start(self):
        if self.world > 1:
            distributed.broadcast_buffers(self)

    def _direct(self) -> bool:
        """Plain torch steps (no loss scaling to do: 32-bit, or mixed precision without a GradScaler) skip
        Lightning's optimizer wrapper; anything else goes through manual_backward and its step."""
        plugin = self.trainer.precision_plugin
        return type(plugin) is pl.plugins.precision.Precision or (
            type(plugin) is pl.plugins.precision.MixedPrecision and plugin.scaler is None
        )

    def _zero_grad(self, opt):
        if self.stack is None:
            opt.zero_grad(set_to_none=True)
        else:
            self.stack.zero_grad()

    def training_step(self, batch, _):
        """One optimizer step per (x, y) pair; `batch` is one pair or a group (data.Group, or a list) of them."""
        opt = self.optimizers()
        single = isinstance(batch, (tuple, list)) and len(batch) > 0 and isinstance(batch[0], torch.Tensor)
        steps = [batch] if single else batch  # else a group: an iterable of (x, y) pairs (empty: left out)
        direct = self._direct_step
        convert = None if direct or single else self.trainer.precision_plugin.convert_input
        done, hook = self.trainer.global_step, self.after_step
        for x, y in steps:
            if convert is not None:  # a group is opaque to Lightning: e.g. 64-true's double inputs
                x, y = convert((x, y))
            logits, loss, values = self._losses(x, y, train=True)
            self._zero_grad(opt.optimizer)
            if direct:
                loss.backward()
            else:
                self.manual_backward(loss)
            if self.world > 1:
                distributed.average_gradients(self.parameters(), self.world)
            if pruning.zero_dead_grads(self):  # the masks, held in place (K > 1: on the stacked tensors)
                self._reapply = True  # written mid-fit: the optimizer's state may hold now-dead gradients
            if self.stack is not None:
                self.stack.share_grads()
            (opt.optimizer if direct else opt).step()
            if self._reapply:
                pruning.reapply_masks(self)
            self._acc("train", logits, y, values)
            done += 1
            if hook is not None and done == hook[0]:
                hook[1]()
        if direct:  # keep trainer.global_step counting optimizer steps
            for _ in range(len(steps)):
                self._step_progress.increment_ready()
                self._step_progress.increment_completed()

    def _evaluate(self, stage, batch):
        x, y = batch
        logits, _, values = self._losses(x, y)
        self._acc(stage, logits, y, values)

    def validation_step(self, batch, _):
        self._evaluate("val", batch)

    def test_step(self, batch, _):
        self._evaluate("test", batch)

    def on_train_epoch_end(self):
        train = self._take("train")
        val = self.__dict__.pop("_last_val", [(math.nan, math.nan)] * self.k)
        epoch = self.round_epoch
        step = self.epoch_offset + epoch
        for i, ((loss, acc), (val_loss, val_acc)) in enumerate(zip(train, val)):
            if i in self.diverged:
                continue
            if not math.isfinite(loss):
                self.diverged[i] = f"training loss became {loss} in round {self.round}, epoch {epoch}"
                continue
            row = {"round": self.round, "epoch": epoch, "train_loss": loss, "train_acc": acc}
            if math.isfinite(val_acc):
                row.update(val_loss=val_loss, val_acc=val_acc)
            self.history[i].append(row)
            if self.recorders[i] is not None:
                self.recorders[i].epoch(row, step)
        if len(self.diverged) == self.k:
            raise Diverged(next(iter(self.diverged.values())))
        scheduler = self.lr_schedulers()  # manual optimisation: the epoch's schedule step is ours to take
        if scheduler is not None:
            scheduler.step()

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self._sums.pop("val", None)
            return
        self._last_val = self._take("val")

    def on_test_epoch_end(self):
        self.last_test = self._take("test")
