"""What a run's config builds: its data, net, IMP method state and the Lightning Trainer of each round."""

from __future__ import annotations

import logging
import os
import warnings

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from phicenter import data, models
from phicenter.config import ConfigError
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


def _options(node, drop=("name",)) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop}


def load_data(cfg: DictConfig) -> data.Splits:
    return data.load(cfg.dataset.name, cfg.data_dir, **_options(cfg.dataset))


def build_model(cfg: DictConfig, splits: data.Splits, seed: int | None = None):
    """The run's net at theta0; with `seed`, the same architecture and init scheme drawn from that seed."""
    return models.build(
        cfg.model.name,
        splits.input_shape,
        splits.num_classes,
        init=cfg.model.init,
        seed=cfg.seed if seed is None else seed,
        **_options(cfg.model, ("name", "init")),
    )


def build_strategy(cfg: DictConfig):
    return strategies.build(cfg.strategy.name, **{k: v for k, v in _options(cfg.strategy).items() if v is not None})


def build_imp(cfg: DictConfig, net, v: dict) -> IMP:
    """The method state of one run; a setting the method refuses (a constant of 0, say) is a ConfigError."""
    mag = cfg.reinit.magnitude
    imp_cfg = IMPConfig(
        phi=v["phi"],
        phi_scale=cfg.phi_scale,
        base=v["base"],
        output_base=v["output_base"],
        conv_base=v["conv_base"],
        scope=cfg.prune.scope,
        method=cfg.prune.get("method", "magnitude"),
        magnitude=mag if isinstance(mag, str) else float(mag),
        seed=v["seed"],
    )

    def fresh(name, like, g):
        return models.init_weight_(torch.empty(like.shape), cfg.model.init, g)

    try:
        return IMP(net, build_strategy(cfg), imp_cfg, fresh_init=fresh)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def deterministic(cfg) -> bool:
    """trainer.deterministic, or by default: on for CPU runs (bit-for-bit resume and pairing), off on GPU."""
    d = cfg.trainer.get("deterministic")
    if d is not None:
        return bool(d)
    return not (cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda") and torch.cuda.is_available())


def cheap_device_probe() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, a CUDA check through NVML that keeps a later
    fork free of a CUDA context. torch.optim asks that check inside every `step()`; with a CUDA build of torch on a
    machine without a GPU, NVML is absent, so each step loads the NVML library again, fails, and asks the CUDA
    runtime anyway (0.3-1 ms, a fifth of an fc_lot step here). With no GPU there is no context to keep out of a
    fork, so the runtime's own cached answer is used instead. Where a GPU is seen, nothing changes."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def make_trainer(cfg: DictConfig, callbacks, epochs: int, progress: bool = False) -> pl.Trainer:
    """One round's Trainer. Logging is the engine's own (engine.records), one event file per variant. With
    `progress`, the run's per-epoch progress (engine.progress): a live bar, or one log line per epoch."""
    from phicenter.engine import progress as shown

    cheap_device_probe()
    quiet_lightning()

    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    kw["deterministic"] = deterministic(cfg)
    setting = kw.pop("enable_progress_bar", None)
    kw["enable_progress_bar"] = bool(progress) and shown.wants_bar(setting)
    if progress:
        last = 0 if cfg.get("dry_run") else int(cfg.prune.iterations)
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

    spec = (cfg.get("fault") or {}).get("write")
    if spec is not None:
        io.inject(spec)


def fault_point(cfg, round_index: int) -> None:
    """For testing failure handling (`fault.fail_round=K`): raise at the start of round K."""
    fault = cfg.get("fault") or {}
    if fault.get("fail_round") is not None and int(fault["fail_round"]) == round_index:
        raise RuntimeError(f"injected fault at round {round_index} (fault.fail_round)")
