"""The round loop: round 0 trains theta0 dense; rounds 1..N prune, re-sign, reinit and retrain.

Each round is one fresh Lightning fit (fresh optimizer and schedule); PruneReinit does the round boundary.
Every completed round is checkpointed, so a relaunch in the same folder resumes where it stopped.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from phicenter import data, models
from phicenter.engine import results
from phicenter.method import strategies
from phicenter.engine.callbacks import EpochCheckpoint, PruneReinit
from phicenter.config import ConfigError, check_same_run, flatten, recorded_config, validate
from phicenter.method.imp import IMP, IMPConfig
from phicenter.engine.module import PhiModule
from phicenter.method.pruning import sparsity

log = logging.getLogger("phicenter")

for _name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*(does not have many workers|log_every_n_steps|LeafSpec).*")
warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.`.*")


def load_data(cfg: DictConfig) -> data.Splits:
    opts = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items() if k != "name"}
    return data.load(cfg.dataset.name, cfg.data_dir, **opts)


def build_model(cfg: DictConfig, splits: data.Splits):
    opts = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in ("name", "init")}
    return models.build(cfg.model.name, splits.input_shape, splits.num_classes, init=cfg.model.init,
                        seed=cfg.seed, **opts)


def build_strategy(cfg: DictConfig):
    opts = {k: v for k, v in OmegaConf.to_container(cfg.strategy, resolve=True).items()
            if k != "name" and v is not None}
    return strategies.build(cfg.strategy.name, **opts)


def build_imp(cfg: DictConfig, net, v: dict) -> IMP:
    mag = cfg.reinit.magnitude
    imp_cfg = IMPConfig(phi=v["phi"], phi_scale=cfg.phi_scale, base=v["base"], output_base=v["output_base"],
                        scope=cfg.prune.scope, magnitude=mag if isinstance(mag, str) else float(mag), seed=v["seed"])

    def fresh(name, like, g):
        return models.init_weight_(torch.empty(like.shape), cfg.model.init, g)

    return IMP(net, build_strategy(cfg), imp_cfg, fresh_init=fresh)


def _deterministic(cfg) -> bool:
    d = cfg.trainer.get("deterministic")
    if d is not None:
        return bool(d)
    return not (cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda") and torch.cuda.is_available())


def make_trainer(cfg: DictConfig, logger, callbacks, epochs: int) -> pl.Trainer:
    kw = OmegaConf.to_container(cfg.trainer, resolve=True)
    kw["deterministic"] = _deterministic(cfg)
    kw.setdefault("enable_progress_bar", False)
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "plugins" not in kw:
        # submitit requeues preempted/timed-out jobs; Lightning must not requeue them a second time
        from pytorch_lightning.plugins.environments import SLURMEnvironment
        kw["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    return pl.Trainer(max_epochs=epochs, logger=logger, callbacks=callbacks, enable_checkpointing=True,
                      enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, **kw)


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train every round of one configuration into run_dir; returns the results dict (also results.json)."""
    v = validate(cfg)
    run_dir = Path(run_dir)
    resolved = recorded_config(cfg, v["phi"])
    res_path = run_dir / results.RESULTS
    previous = results.read_json(res_path)
    if cfg.get("resume", True):
        check_same_run(previous, resolved, run_dir)
    if previous and previous.get("status") == "complete" and cfg.get("resume", True):
        log.info("run in %s is already complete; nothing to do", run_dir)
        return previous
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))

    splits = load_data(cfg)
    net = build_model(cfg, splits)
    try:
        imp = build_imp(cfg, net, v)
    except ValueError as e:  # e.g. a constant that comes out as 0 for this init
        raise ConfigError(str(e)) from None
    theta0_file = run_dir / results.THETA0
    rounds: list[dict] = []
    start = 0
    ckpt = results.latest_round(run_dir, log=log.warning) if cfg.get("resume", True) else None
    if ckpt is not None:
        imp.theta0 = torch.load(theta0_file, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["model"])
        rounds, start = ckpt["rounds"], ckpt["round"] + 1
        log.info("resuming %s after round %d", run_dir, ckpt["round"])
    else:
        if not cfg.get("resume", True):   # starting over: no checkpoint of the run before may be resumed later
            shutil.rmtree(run_dir / results.CKPT_DIR, ignore_errors=True)
        results.save_torch(theta0_file, imp.theta0)
    for stale in sorted((run_dir / results.CKPT_DIR).glob("round_*_epochs")):
        if int(stale.name.split("_")[1]) < start:
            shutil.rmtree(stale, ignore_errors=True)

    epochs, n_rounds = v["epochs"], v["iterations"]
    dry = cfg.get("dry_run")
    if dry:
        n_rounds = 0
    module = PhiModule(net, OmegaConf.to_container(cfg.optim, resolve=True),
                       OmegaConf.to_container(cfg.schedule, resolve=True))
    seed = v["seed"]
    train_b, val_b, test_b = data.loaders(cfg, splits, v["batch_size"], seed, group=data.STEPS_PER_CALL)
    module.train_batches = train_b
    logger = TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False)
    out = {"config": resolved, "rounds": rounds, "final": rounds[-1] if rounds else None, "status": "running",
           "device": None, "precision": str(cfg.trainer.get("precision", "32-true")),
           "init": cfg.model.init, "data": {"train": len(splits.y_train), "val": len(splits.y_val),
                                             "test": len(splits.y_test), "input_shape": list(splits.input_shape),
                                             "num_classes": splits.num_classes}}
    if ckpt is None:   # the configuration on record from the start, so a relaunch mid-round 0 is checked too
        results.write_json(res_path, out)

    ckpt_root = run_dir / results.CKPT_DIR
    for r in range(start, n_rounds + 1):
        t0 = time.perf_counter()
        module.round, module.epoch_offset = r, r * epochs
        module.history = []
        cb = PruneReinit(imp, r)
        saver = EpochCheckpoint(ckpt_root / f"round_{r:03d}_epochs", cfg.checkpoint.get("every_n_epochs", 1))
        resume_from = saver.resumable(log.warning) if cfg.get("resume", True) else None
        if resume_from:
            log.info("resuming round %d from %s", r, resume_from)
        trainer = make_trainer(cfg, logger, [cb, saver], epochs)
        device = trainer.strategy.root_device
        for b in (train_b, val_b, test_b):
            b.to(device)
        module.prepare(device, compile=bool(cfg.get("compile", False)))
        _fault_point(cfg, r)
        trainer.fit(module, train_dataloaders=train_b, val_dataloaders=val_b, ckpt_path=resume_from)
        trainer.test(module, dataloaders=test_b, verbose=False)
        last = module.history[-1]
        total_sp, layer_sp = sparsity(imp.layers)
        diag = cb.diagnostics or {}
        entry = {
            "round": r, "sparsity": total_sp, "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "val_acc": last.get("val_acc", math.nan), "test_acc": module.last_test[1],
            "test_loss": module.last_test[0],
            "flipped_by_phi": diag.get("flipped_by_phi"), "flipped_vs_init": diag.get("flipped_vs_init"),
            "dead_zone": diag.get("dead_zone"), "dead_zone_count": diag.get("dead_zone_count"),
            "seconds": time.perf_counter() - t0,
            "layers": {n: {"sparsity": layer_sp[n], **diag.get("layers", {}).get(n, {})} for n in imp.layers},
            "epochs": module.history,
        }
        rounds.append(entry)
        step = (r + 1) * epochs - 1
        per_layer = {f"layer/{n}/{k}": v for n, d in entry["layers"].items()
                     for k, v in d.items() if k in ("sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")}
        logger.log_metrics({f"round/{k}": entry[k] for k in
                            ("val_acc", "test_acc", "sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
                            if entry[k] is not None} | per_layer, step=step)
        out.update(rounds=rounds, final=entry, device=str(device))
        results.save_round(run_dir, r, {"round": r, "model": net.state_dict(), "rounds": rounds},
                           keep_all=bool(cfg.checkpoint.keep_all))
        results.write_json(res_path, out)
        saver.clear()
        log.info("round %d/%d  sparsity %.3f  val %.4f  test %.4f  (%.1fs)", r, n_rounds, total_sp,
                 entry["val_acc"], entry["test_acc"], entry["seconds"])

    if dry:
        return _dry_run_phi(cfg, imp, out, run_dir)
    out["status"] = "complete"
    results.write_json(res_path, out)
    logger.log_hyperparams(_flat(resolved), metrics={"final/val_acc": out["final"]["val_acc"],
                                                     "final/test_acc": out["final"]["test_acc"]})
    logger.finalize("success")
    return out


def _dry_run_phi(cfg, imp: IMP, out: dict, run_dir: Path) -> dict:
    """Round 0 is trained; count, for each (strategy, phi), the survivors phi would re-sign at round 1."""
    from phicenter.analysis import dryrun

    d = cfg.get("dry_run_grid") or {}
    rows = dryrun.phi_table(imp, phis=d.get("phis") or dryrun.PAPER_PHIS,
                            strategy_names=d.get("strategies") or dryrun.PAPER_STRATEGIES)
    print(dryrun.format_table(rows), flush=True)
    out.update(status="dry_run", dry_run={"round": 1, "rows": rows})
    results.write_json(run_dir / "dry_run.json", out)
    results.write_json(run_dir / results.RESULTS, out)
    return out


def _fault_point(cfg, round_index: int) -> None:
    """Test-only fault injection (`fault.fail_round=K`): raise at the start of round K."""
    fault = cfg.get("fault") or {}
    if fault.get("fail_round") is not None and int(fault["fail_round"]) == round_index:
        raise RuntimeError(f"injected fault at round {round_index} (fault.fail_round)")


def _flat(d: dict) -> dict:
    """The config as TensorBoard hparams: dotted keys, plain values."""
    return {k: ("null" if v is None else v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in flatten(d).items()}
