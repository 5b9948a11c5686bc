"""What a run's config builds: its data, net, IMP method state and the Lightning Trainer of each round."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import warnings

import pytorch_lightning as pl
import torch

from phicenter import data, models
from phicenter.config import ConfigError, settings
from phicenter.method import strategies
from phicenter.method.imp import IMP, IMPConfig


def quiet_lightning() -> None:
    """Lightning's info lines and the warnings that do not apply to the round loop (resident data needs no
    workers; the engine logs per epoch itself; submitit runs the job, not srun) stay out of a run's output."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|log_every_n_steps|LeafSpec).*")
    warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.`.*")
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used.*")


def options(group, drop=("name",)) -> dict:
    """A typed group's values as keyword arguments (its name and `drop` left out; the keys of its pass-through
    field, model=custom's `+model.width=64` say, as keywords of their own)."""
    rest = getattr(group, "PASS_THROUGH", None)
    out = {f.name: getattr(group, f.name) for f in dataclasses.fields(group) if f.name not in (*drop, rest)}
    return {**out, **(getattr(group, rest) if rest and rest not in drop else {})}


def load_data(cfg) -> data.Splits:
    s = settings(cfg)
    return data.load(s.dataset.name, s.data_dir, **options(s.dataset))


def build_model(cfg, splits: data.Splits, seed: int | None = None):
    """The run's net at theta0; with `seed`, the same architecture and init scheme drawn from that seed."""
    s = settings(cfg)
    return models.build(
        s.model.name,
        splits.input_shape,
        splits.num_classes,
        init=s.model.init,
        seed=s.seed if seed is None else seed,
        **options(s.model, ("name", "init")),
    )


def check_stackable(cfg, net, splits) -> None:
    """pack=true trains its variants as one StackedNet (engine.stacked), which runs the net's forward with each
    variant's tensors swapped in. Every built-in model is made for it; a model=custom net is tried first, on
    the CPU: two variants with different weights, stacked, must give each its own logits. One that fails, or
    reads its weights around its parameters, is refused in one line before any work."""
    s = settings(cfg)
    if s.model.name != "custom":
        return
    from phicenter.engine.stacked import StackedNet

    twins = [copy.deepcopy(net).cpu().eval() for _ in range(2)]
    x = torch.randn((2, *splits.input_shape), generator=torch.Generator().manual_seed(0))
    impls = ("loop", "vmap") if torch.cuda.is_available() else ("loop",)  # vmap: CUDA's forward of any net
    why = ""
    try:
        with torch.no_grad():
            for p in twins[1].parameters():
                p.mul_(0.5).add_(0.01)
            alone = [t(x) for t in twins]
            for impl in impls:
                stacked = StackedNet(twins, impl=impl, device="cpu")(x, training=False)
                if not all(torch.allclose(stacked[k], alone[k], rtol=1e-4, atol=1e-5) for k in range(2)):
                    why = "its stacked forward does not give each variant its own logits"
    except Exception as e:
        why = f"{type(e).__name__}: {' '.join(str(e).split())}"
    if why:
        raise ConfigError(
            f"model._target_={s.model._target_} cannot be trained in a cohort ({why}); run its variants as jobs of "
            "a multirun instead (pack=false, -m phi=...)"
        )


def build_strategy(cfg):
    s = settings(cfg)
    return strategies.STRATEGIES[s.strategy.name](s.strategy)


def build_imp(cfg, net) -> IMP:
    """The method state of one run; a setting the method refuses (a constant of 0, say) is a ConfigError."""
    s = settings(cfg)
    imp_cfg = IMPConfig(
        phi=s.phi,
        phi_scale=s.phi_scale,
        base=s.prune.base,
        output_base=s.prune.output_base,
        conv_base=s.prune.conv_base,
        scope=s.prune.scope,
        method=s.prune.method,
        magnitude=s.reinit.magnitude,
        seed=s.seed,
    )

    def fresh(name, like, g):
        return models.init_weight_(torch.empty(like.shape), s.model.init, g)

    try:
        return IMP(net, build_strategy(s), imp_cfg, fresh_init=fresh)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def deterministic(cfg) -> bool:
    """trainer.deterministic, or by default: on for CPU runs (bit-for-bit resume and pairing), off on GPU."""
    t = settings(cfg).trainer
    if t.deterministic is not None:
        return t.deterministic
    return not (t.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available())


def cheap_device_probe() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, a CUDA check through NVML that keeps a later
    fork free of a CUDA context. torch.optim asks that check inside every `step()`; with a CUDA build of torch on a
    machine without a GPU, NVML is absent, so each step loads the NVML library again, fails, and asks the CUDA
    runtime anyway (0.3-1 ms, a fifth of an fc_lot step here). With no GPU there is no context to keep out of a
    fork, so the runtime's own cached answer is used instead. Where a GPU is seen, nothing changes."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def make_trainer(cfg, callbacks, epochs: int, progress: bool = False) -> pl.Trainer:
    """One round's Trainer. Logging is the engine's own (engine.records), one event file per variant. With
    `progress`, the run's per-epoch progress (engine.progress): a live bar, or one log line per epoch."""
    from phicenter.engine import progress as shown

    cheap_device_probe()
    quiet_lightning()

    s = settings(cfg)
    kw = {**options(s.trainer, ("extra", "enable_progress_bar")), **s.trainer.extra}
    kw["deterministic"] = deterministic(s)
    if kw["deterministic"]:
        # deterministic kernels, without NaN-filling every fresh tensor: no op here reads memory it did not
        # write (tests/test_pinned.py holds the bits), and the fill cost 8-15 % of a CPU step
        # (docs/benchmarks.md, "Deterministic kernels without the fill")
        torch.utils.deterministic.fill_uninitialized_memory = False
    setting = s.trainer.enable_progress_bar
    kw["enable_progress_bar"] = bool(progress) and shown.wants_bar(setting)
    if progress:
        last = 0 if s.dry_run else s.prune.iterations
        callbacks = [*callbacks, shown.callback(setting, last)]
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "plugins" not in kw:
        # submitit requeues preempted/timed-out jobs; Lightning must not requeue them a second time
        from pytorch_lightning.plugins.environments import SLURMEnvironment

        kw["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return pl.Trainer(
        max_epochs=epochs,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=True,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def arm_write_fault(cfg) -> None:
    """For testing failure handling (`fault.write=N[+]:ERRNO[:MATCH]`): the N-th write of this process (N+: and
    every one after it) of a file whose path contains MATCH fails with ERRNO (phicenter.io.inject)."""
    from phicenter import io

    spec = settings(cfg).fault.write
    if spec is not None:
        io.inject(spec)


def fault_point(cfg, round_index: int) -> None:
    """For testing failure handling: raise at the start of round K (`fault.fail_round=K`), or press Ctrl-C there,
    between two fits (`fault.interrupt_round=K`: the process sends itself SIGINT)."""
    fault = settings(cfg).fault
    if fault.fail_round == round_index:
        raise RuntimeError(f"injected fault at round {round_index} (fault.fail_round)")
    if fault.interrupt_round == round_index:
        os.kill(os.getpid(), signal.SIGINT)
