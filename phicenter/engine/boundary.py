"""PhiCenterPruning: the round boundary as a Lightning callback, for any LightningModule and for the round loop.

In someone's own Trainer it runs every round in one fit: epochs_per_round epochs a round, and at each round's
first epoch the boundary (prune, re-sign at phi, reinitialise: method.imp.IMP.advance), a fresh optimizer state
and the LR schedule back at its round start. The round loop (engine.loop) makes one per fit instead
(`for_round`): the boundary of that fit's round, applied before the fit, for every variant of the cohort.
docs/method.md, "The Lightning callback", says what it does at a boundary, step by step.
"""

from __future__ import annotations

import copy
import warnings

import pytorch_lightning as pl
import torch

from phicenter.engine import distributed
from phicenter.method import pruning, seeding
from phicenter.method.imp import IMP
from phicenter.method.pruner import Pruner, Selection, make_imp

DIAGNOSTICS = ("flipped_by_phi", "flipped_vs_init", "dead_zone")


class PhiCenterPruning(pl.Callback):
    """Iterative magnitude pruning with signs decided at phi, inside one `trainer.fit`:
    `iterations` prunings, so iterations + 1 rounds of `epochs_per_round` epochs (`max_epochs` is the
    Trainer's max_epochs). Linear and Conv weights are pruned, or those `parameters` selects (names, globs,
    or a predicate `(module name, module) -> bool`). The other keywords are the method's options
    (method.pruner.make_imp: base, scope, method, phi_scale, magnitude, output_base, conv_base,
    strategy_options). With `seed`, torch's global RNG is seeded from (seed, round) at each round start, as the
    round loop does. Late rewinding: `rewind_epoch` = k, or `rewind_step` = s with `steps_per_epoch`."""

    def __init__(
        self,
        strategy: str = "mask0",
        phi: float = 0.0,
        iterations: int = 10,
        epochs_per_round: int = 1,
        *,
        parameters: Selection = None,
        seed: int | None = None,
        rewind_epoch: int | None = None,
        rewind_step: int | None = None,
        steps_per_epoch: int | None = None,
        **method,
    ):
        self._check(iterations, epochs_per_round, seed, rewind_epoch, rewind_step, steps_per_epoch)
        self.iterations, self.epochs_per_round, self.seed = iterations, epochs_per_round, seed
        self.rewind_epoch, self.rewind_step, self.steps_per_epoch = rewind_epoch, rewind_step, steps_per_epoch
        self._method = dict(method, strategy=strategy, phi=phi, parameters=parameters, seed=seed or 0)
        stand_in = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))  # checks now
        make_imp(stand_in, **{**self._method, "parameters": None})
        if parameters is not None and not callable(parameters) and not all(isinstance(p, str) for p in parameters):
            raise ValueError("PhiCenterPruning: parameters must be names (or globs) of weights, or a predicate")
        self.strategy, self.phi = strategy, phi
        self.pruner: Pruner | None = None
        self.imps: list[IMP] = []
        self.start, self.done, self.hold = 0, 0, True
        self.diagnostics: list[dict] | None = None
        self.rounds: list[dict] = []  # one record per finished round (round/* as logged)
        self._fit_start = None

    @staticmethod
    def _check(iterations, epochs, seed, rewind_epoch, rewind_step, steps_per_epoch) -> None:
        def count(name, v, low):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"PhiCenterPruning: {name} must be an integer >= {low}, got {v!r}")

        count("iterations", iterations, 0)
        count("epochs_per_round", epochs, 1)
        if seed is not None:
            count("seed", seed, 0)
        if rewind_epoch is not None and rewind_step is not None:
            raise ValueError("PhiCenterPruning: give rewind_epoch or rewind_step, not both")
        if rewind_epoch is not None:
            count("rewind_epoch", rewind_epoch, 1)
            if rewind_epoch >= epochs:
                raise ValueError(f"PhiCenterPruning: rewind_epoch must lie inside round 0 (< {epochs})")
        if rewind_step is not None:
            count("rewind_step", rewind_step, 1)
            if steps_per_epoch is None:
                raise ValueError("PhiCenterPruning: rewind_step needs steps_per_epoch (the batches of an epoch)")
            count("steps_per_epoch", steps_per_epoch, 1)
            if rewind_step >= epochs * steps_per_epoch:
                raise ValueError(
                    f"PhiCenterPruning: rewind_step must lie inside round 0 (< {epochs * steps_per_epoch})"
                )

    @classmethod
    def for_round(cls, imps: list[IMP], round_index: int) -> PhiCenterPruning:
        """The round loop's boundary: one fit trains round `round_index` of every variant (its IMP); the
        boundary is applied before the fit (`apply`), since a round's key is computed on the state after it
        (engine.reuse). The module holds the masks itself (engine.module.CohortModule)."""
        self = cls(iterations=round_index)  # the defaults; the round loop seeds and rewinds itself
        self.imps, self.start, self.done, self.hold = list(imps), round_index, round_index - 1, False
        self.epochs_per_round = None  # the whole fit is the one round
        return self

    # -- the rounds of the fit --------------------------------------------------------------------------------
    @property
    def offset(self) -> int:
        """Epochs of round 0 before the rewind point: rounds >= 1 train the rest (0 without rewinding)."""
        if self.rewind_epoch is not None:
            return self.rewind_epoch
        return self.rewind_step // self.steps_per_epoch if self.rewind_step is not None else 0

    @property
    def max_epochs(self) -> int:
        """The Trainer's max_epochs: round 0 whole, every later round from the rewind point on."""
        return self.epochs_per_round + self.iterations * (self.epochs_per_round - self.offset)

    def round_of(self, epoch: int) -> int:
        """The round that the fit's epoch `epoch` trains."""
        if self.epochs_per_round is None or epoch < self.epochs_per_round:
            return self.start
        return 1 + (epoch - self.epochs_per_round) // (self.epochs_per_round - self.offset)

    def last_epoch_of(self, r: int) -> int:
        return self.epochs_per_round - 1 + r * (self.epochs_per_round - self.offset)

    # -- the boundary -----------------------------------------------------------------------------------------
    def boundary(self, r: int, pl_module=None) -> None:
        """Round r's boundary for every IMP, once (round 0 has none). A cohort's module (K > 1) is scattered
        into the variants' nets first and gathered back after."""
        if r == 0 or self.done >= r:
            return
        if self.seed is not None:
            torch.manual_seed(seeding.derive(self.seed, "round", r))  # anything random in training: (seed, round)
        if pl_module is not None and hasattr(pl_module, "scatter"):
            pl_module.scatter()
        self.diagnostics = [imp.advance(r) for imp in self.imps]
        if pl_module is not None and hasattr(pl_module, "gather"):
            pl_module.gather()
        self.done = r
        if self.pruner is not None:
            self.pruner.round, self.pruner.diagnostics = r, self.diagnostics[0]

    def apply(self, pl_module=None) -> None:
        """The round loop's call: the boundary of this fit's round, before the fit."""
        self.boundary(self.start, pl_module)

    def _agree(self, trainer, r: int) -> None:
        """Data-parallel: every process did the boundary on its own nets; their masks and signs must agree
        (engine.distributed.agree; each process's digest goes on record)."""
        if not self.diagnostics or distributed.world_size(trainer) == 1:
            return
        per = distributed.agree([distributed.digest(imp) for imp in self.imps], f"the masks and signs of round {r}")
        for d, digests in zip(self.diagnostics, per):
            d["rank_digests"] = digests

    # -- Lightning's hooks ------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        if self.epochs_per_round is not None and (self.pruner is None or self.pruner.model is not pl_module):
            self.pruner = Pruner(pl_module, iterations=self.iterations, **self._method)
            self.imps = [self.pruner.imp]
        if self.epochs_per_round is None:  # the round loop's fit: its round's boundary, on every process
            self.apply(pl_module)
            self._agree(trainer, self.start)

    def on_fit_start(self, trainer, pl_module):
        """The round loop's fit: its boundary (done already unless the fit was started without `apply`). Own
        Trainer: the masks in force, the Trainer's max_epochs checked, the optimizers' and schedules' state
        as configure_optimizers made them kept (a resumed fit restores its own state only after this hook)."""
        if self.epochs_per_round is None:
            self.apply(pl_module)
            return
        if trainer.max_epochs != self.max_epochs:
            raise ValueError(
                f"PhiCenterPruning: {self.iterations + 1} rounds need Trainer(max_epochs={self.max_epochs}) "
                f"(prune.max_epochs), got max_epochs={trainer.max_epochs}"
            )
        pruning.reapply_masks(pl_module)
        self._fit_start = (
            [copy.deepcopy(opt.state_dict()["param_groups"]) for opt in trainer.optimizers],
            [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
        )

    def on_train_start(self, trainer, pl_module):
        """The batches of an epoch are known now: late rewinding to a step needs them as declared."""
        if self.steps_per_epoch is not None and trainer.num_training_batches != self.steps_per_epoch:
            raise ValueError(
                f"PhiCenterPruning: steps_per_epoch={self.steps_per_epoch}, but an epoch of this fit has "
                f"{trainer.num_training_batches} batches"
            )

    def on_train_epoch_start(self, trainer, pl_module):
        r = self.round_of(trainer.current_epoch)
        if self.epochs_per_round is None or r <= self.done:
            return
        if self.seed is not None and r == 0:
            torch.manual_seed(seeding.derive(self.seed, "round", 0))
        self.boundary(r, pl_module)
        self._agree(trainer, r)
        self._restart_optimizers(trainer)

    def _restart_optimizers(self, trainer) -> None:
        """A fresh optimizer state (no momentum or moments carried across the boundary), the hyperparameters
        and the LR schedules as at the fit's start, then moved on to the rewind point (late rewinding)."""
        groups, schedules = self._fit_start
        for opt, saved in zip(trainer.optimizers, groups):
            opt.state.clear()
            for g, s in zip(opt.param_groups, saved):
                g.update({k: copy.deepcopy(v) for k, v in s.items() if k != "params"})
        for c, s in zip(trainer.lr_scheduler_configs, schedules):
            c.scheduler.load_state_dict(copy.deepcopy(s))
            ahead = self.offset * (1 if c.interval == "epoch" else trainer.num_training_batches)
            if self.rewind_step is not None and c.interval == "step":
                ahead = self.rewind_step
            with warnings.catch_warnings():  # (torch warns of a schedule stepped before the optimizer)
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(ahead):
                    c.scheduler.step()
            if hasattr(c.scheduler, "_last_lr"):
                c.scheduler._last_lr = [g["lr"] for g in c.scheduler.optimizer.param_groups]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.hold:
            self._written = pruning.zero_dead_grads(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.hold:
            return
        if self.__dict__.pop("_written", False) or any(pruning.step_can_move_dead(o) for o in trainer.optimizers):
            pruning.reapply_masks(pl_module)
        if self.rewind_step is not None and self.done == 0 and trainer.global_step == self.rewind_step:
            self._set_rewind(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.epochs_per_round is None:
            return
        e = trainer.current_epoch
        if self.rewind_epoch is not None and self.done == 0 and e == self.rewind_epoch - 1:
            self._set_rewind(pl_module)
        r = self.round_of(e)
        if e == self.last_epoch_of(r) and len(self.rounds) == r:
            self._record(trainer, r)

    def _set_rewind(self, pl_module) -> None:
        """The rewind point: the module's state now (theta_k, theta_s)."""
        self.imps[0].set_rewind({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def _record(self, trainer, r: int) -> None:
        """round/* for the finished round r to the Trainer's loggers: sparsities, what the boundary's phi did,
        and the validation (and test) metrics of the round's last epoch."""
        row = {"round": r, **self.pruner.sparsities()}
        diag = (self.diagnostics or [{}])[0] if r else {}
        row.update({k: diag.get(k, 0.0) for k in DIAGNOSTICS})
        for k, v in trainer.callback_metrics.items():
            if k.startswith(("val", "test")) and torch.as_tensor(v).numel() == 1:
                row[k] = float(v)
        self.rounds.append(row)
        metrics = {f"round/{'index' if k == 'round' else k}": float(v) for k, v in row.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self):
        """The boundary's state (the masks are the module's own buffers): the round, its diagnostics, the
        records, and theta0 and the rewind point, which a resumed fit needs to go on."""
        state = {"round": self.start, "done": self.done, "diagnostics": self.diagnostics, "rounds": self.rounds}
        if self.pruner is not None:
            state["pruner"] = self.pruner.state_dict()
        return state

    def load_state_dict(self, state):
        if self.epochs_per_round is None:
            if state.get("round") == self.start:
                self.diagnostics = state.get("diagnostics")
            return
        self.done, self.diagnostics, self.rounds = state["done"], state["diagnostics"], list(state["rounds"])
        if self.pruner is not None and "pruner" in state:
            self.pruner.load_state_dict(state["pruner"])
