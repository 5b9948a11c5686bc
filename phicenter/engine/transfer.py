"""The engine's part of sign_transfer (Oh, Baik & Lee, 2025; docs/method.md, "sign_transfer"): AWS while stage 1
trains (`AWSTraining`, used by the cohort module), and stage 2 (`Transfer`, a step of the round loop after each
round): at every round r >= 1 the round's signed mask, signs(trained, phi) on its mask, is put on a fresh
initialisation of the transfer seed (method.transfer), trained once (one fit of `epochs` epochs, a fresh
optimizer and schedule, the transfer's own data order), and tested. The transferred network is not part of the
stage-1 lineage: it is built, trained, recorded in the round's entry (`transfer`) and dropped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from phicenter import data
from phicenter.config import settings
from phicenter.config.groups import SCHEDULES
from phicenter.engine import build
from phicenter.engine.fit import clear, fit_round
from phicenter.engine.module import CohortModule
from phicenter.engine.rundir import is_writer
from phicenter.method import aws, pruning, seeding
from phicenter.method import transfer as method
from phicenter.method.strategies import STRATEGIES
from phicenter.spec import named

log = logging.getLogger("phicenter")


def transfers(cfg) -> bool:
    """Whether a run's strategy transfers its signed masks (sign_transfer)."""
    return STRATEGIES[settings(cfg).strategy.name].transfers


def transfer_seed(cfg) -> int:
    """strategy.transfer_seed, or by default seed + 1 (their scripts: stage 1 with seed 1, transfers with 2, 3)."""
    s = settings(cfg)
    return s.seed + 1 if s.strategy.transfer_seed is None else s.strategy.transfer_seed


def transfer_recipe(cfg) -> tuple[int, object]:
    """(epochs, LR schedule) of the transfer fit: strategy.transfer_epochs and strategy.transfer_schedule, each by
    default the run's own. A schedule named there keeps the run's settings when the run's schedule has that name,
    else the schedule's declared defaults (multistep: LR / 10 at 50 % and 75 %, Oh et al.'s)."""
    s = settings(cfg)
    epochs = s.strategy.transfer_epochs or s.epochs
    name = s.strategy.transfer_schedule
    if name is not None and name != s.schedule.name:
        return epochs, named(SCHEDULES, {"name": name}, "strategy.transfer_schedule")
    return epochs, s.schedule


# ---------------------------------------------------------------- AWS while stage 1 trains


class AWSTraining:
    """AWS for one cohort module: the variants that train with it (`strategy.aws`), the normalisation layers'
    affine parameters, and alpha per batch (method.aws.Alphas, seeded by the run's seed). Evaluation never
    comes here."""

    def __init__(self, seed: int, on: list[bool], names: dict[str, str]):
        self.alphas, self.on, self.names = aws.Alphas(seed), torch.tensor(on, dtype=torch.bool), names

    @classmethod
    def of(cls, members: list, nets: list[nn.Module], seed: int | None = None) -> AWSTraining | None:
        """For the members a module trains, alpha drawn from `seed` (default: the run's); None when none of them
        uses AWS or the net has no normalisation layer with affine parameters (then AWS changes nothing)."""
        on = [getattr(m.settings.strategy, "aws", False) for m in members]  # (sign_transfer's option)
        names = aws.affine_names(nets[0])
        if not any(on) or not names:
            return None
        return cls(members[0].settings.seed if seed is None else seed, on, names)

    def start(self, round_index: int, epoch: int) -> None:
        self.alphas.start(round_index, epoch)

    def forward(self, module: CohortModule, x: torch.Tensor) -> torch.Tensor:
        """One training batch's logits with this batch's alpha: the plain net (K = 1) or the stacked one."""
        alpha = self.alphas.next()
        if module.stack is None:
            return aws.forward(module.net, x, alpha, self.names)
        stack = module.stack
        stack.transform = lambda p: {**p, **aws.towards_identity(p, self.names, alpha, self.on)}
        try:
            return stack(x, training=True)
        finally:
            stack.transform = None


# ---------------------------------------------------------------- stage 2


class Transfer:
    """Stage 2 for one cohort's rounds: a step of the round loop that trains nothing when no member's strategy
    transfers. `loaders`: the round's (train, val, test); the transfer scores on the same val and test.
    `epochs_dir(job_dir, members, r)`: the round's epoch checkpoints (engine.loop), beside which each transfer
    keeps its own."""

    def __init__(self, splits, loaders, job_dir: Path, impl: str, device, epochs_dir):
        self.splits, self.loaders, self.job_dir = splits, loaders, Path(job_dir)
        self.impl, self.device, self.epochs_dir = impl, device, epochs_dir

    def stage_two(self, members: list, outcomes: list, r: int) -> dict[int, dict | None]:
        """{member index: its transfer record} for the members whose strategy transfers (None at round 0: the
        dense round has no mask to transfer); members whose round diverged are left out. Members with one
        transfer seed and recipe are trained as one cohort (K = 1: the plain net)."""
        out, groups = {}, {}
        for i, (m, o) in enumerate(zip(members, outcomes)):
            if not transfers(m.settings) or o.diverged is not None:
                continue
            if r == 0:
                out[i] = None
            else:
                recipe = transfer_recipe(m.settings)
                groups.setdefault((transfer_seed(m.settings), recipe[0], repr(recipe[1])), []).append(i)
        for (seed, _, _), idx in groups.items():
            group = [members[i] for i in idx]
            folder = self.epochs_dir(self.job_dir, group, r)
            folder = folder.with_name(folder.name.replace("_epochs", "_transfer_epochs"))
            records = _fit(group, seed, r, self.splits, self.loaders, folder, self.impl, self.device)
            out.update(zip(idx, records))
        return out


def transferred_net(member, seed: int, splits) -> tuple[nn.Module, dict]:
    """A member's transferred network (a fresh initialisation of `seed`, with the member's signed mask at its
    current, trained state) and what phi did in the transfer (method.transfer.diagnostics)."""
    imp = member.imp
    net = build.build_model(member.settings, splits, seed=seed)
    init = {n: layer.weight.detach().clone() for n, layer in pruning.prunable_layers(net).items()}
    signed = method.signed_mask(imp.layers, imp.phis)
    method.transfer(net, signed)
    return net, method.diagnostics(imp.layers, imp.phis, signed, init)


def _record(module: CohortModule, k: int, failed: str | None, seed: int, seconds: float, diag: dict) -> dict:
    """The transfer record of the group's k-th net: its last epoch, its test, whether it diverged."""
    history, diverged = module.history[k], failed or module.diverged.get(k)
    last = history[-1] if history and diverged is None else {}
    test = module.last_test[k] if diverged is None else (None, None)
    return {
        "seed": seed,
        "val_acc": last.get("val_acc"),
        "test_acc": test[1],
        "test_loss": test[0],
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "diverged": diverged,
        "seconds": seconds,
        **diag,
        "epochs": history,
    }


def _fit(group: list, seed: int, r: int, splits, loaders, folder: Path, impl: str, device) -> list[dict]:
    """Train the group's transferred nets as one cohort with the transfer's recipe (transfer_recipe; resumed from
    the fit's last epoch checkpoint when a kill interrupted it), test them, and return each one's record."""
    t0 = time.perf_counter()
    s = group[0].settings
    epochs, schedule = transfer_recipe(s)
    nets, diags = zip(*(transferred_net(m, seed, splits) for m in group))
    train_b = data.loaders(s, splits, s.batch_size, seeding.derive(seed, "transfer"), group=data.STEPS_PER_CALL)[0]
    torch.manual_seed(seeding.derive(seed, "transfer", r))  # anything random in the fit: (transfer seed, round)
    module = CohortModule(
        list(nets),
        s.optim,
        schedule,
        impl=impl,
        device=device,
        recorders=[None if m.recorder is None else Tagged(m.recorder) for m in group],
    )
    module.phase = "transfer"
    digests = [m.folder.digest for m in group]
    batches, what = (train_b, *loaders[1:]), f"the transfer of round {r}"
    # every transferred net of the group diverged: recorded; the stage-1 runs go on
    failed = fit_round(module, s, r, batches, device, folder, digests, epochs, what=what, apart=True).diverged
    seconds = time.perf_counter() - t0
    records = [_record(module, k, failed, seed, seconds / len(group), diags[k]) for k in range(len(group))]
    if is_writer():
        clear(folder)
    log.info(
        "round %d transfer (seed %d)  %s(%.1fs)",
        r,
        seed,
        "  ".join(
            f"{m.variant.name + ' ' if m.variant.name else ''}val {_show(rec['val_acc'])}  "
            f"test {_show(rec['test_acc'])}  "
            for m, rec in zip(group, records)
        ),
        seconds,
    )
    return records


class Tagged:
    """A run's Recorder for the transfer fit: its epoch rows go to TensorBoard as transfer_epoch/*, at step
    round × transfer epochs + epoch (beside the stage-1 round's epoch/* when the transfer trains the run's epochs)."""

    def __init__(self, recorder):
        self.recorder = recorder

    def epoch(self, row: dict, step: int) -> None:
        self.recorder.epoch(row, step, tag="transfer_epoch")


def _show(x) -> str:
    return "—" if x is None else f"{x:.4f}"
