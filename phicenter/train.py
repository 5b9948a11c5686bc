"""Entry point: `python -m phicenter.train [overrides]`, or `-m` for a multirun grid."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
import traceback
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from phicenter.analysis.precheck import check_argv, check_job
from phicenter.analysis.sweep import job_line, where_results
from phicenter.config import ConfigError, recorded_config
from phicenter.engine import rundir as results
from phicenter.io import WriteError, write_file
from phicenter.loggers import selected

log = logging.getLogger("phicenter")


def _launch_only(p: Path) -> bool:
    """What a launch writes before any work: Hydra's log file, .hydra/, the lock, and a `pack=true` job's
    variant folders holding their lock alone."""
    if p.name in (".hydra", "train.log", results.LOCK):
        return True
    return p.is_dir() and {q.name for q in p.iterdir()} <= {results.LOCK}


def _discard_if_new(run_dir: Path, lock: results.Lock | None) -> None:
    """Bad input leaves nothing behind: drop a folder that holds only what this launch wrote (Hydra's log file,
    the lock, empty variant folders), or else put back the lock file as it was."""
    if run_dir.is_dir() and all(_launch_only(p) for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
    elif lock is not None:
        lock.undo()


def _mark(run_dir: Path, cfg: DictConfig, status: str, error: str, trace: str | None = None) -> str:
    """Record how a run ended in its results.json, keeping the rounds it completed (the first process of a
    data-parallel run writes it). Returns, for the line that says so, where it is recorded or, when it could
    not be, what stands instead."""
    path = run_dir / results.RESULTS
    if not results.is_writer():
        return f" ({path})"
    prev = results.RunFolder(run_dir).read() or {"config": _recorded(cfg), "rounds": []}
    _, unrecorded = results.RunFolder(run_dir).fail(prev, status, error, trace)
    return unrecorded or f" ({path})"


def _refuse(e: Exception, run_dir: Path, lock: results.Lock | None = None):
    """One line and exit 2; nothing of this launch is left in the folder (a busy one is not touched at all)."""
    print(f"phicenter train: error: {e}", file=sys.stderr)
    logging.shutdown()
    if isinstance(e, results.FolderBusy):
        sys.exit(2)
    if lock is not None:
        _discard_if_new(run_dir, lock)
        sys.exit(2)
    try:  # refused before it locked the folder: discard only under the lock, never another run's new folder
        with results.locked(run_dir) as taken:
            _discard_if_new(run_dir, taken)
    except (results.FolderBusy, OSError):
        pass
    sys.exit(2)


def _recorded(cfg: DictConfig) -> dict:
    """The config as results.json records it (resolved, phi as a number), as far as it resolves."""
    try:
        return recorded_config(cfg)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False)


def _started(cfg: DictConfig, hc, multirun: bool) -> None:
    """Every check has passed: the job's line in its log, and what Hydra writes into a job's `.hydra/` (written
    here, as conf/config.yaml sets hydra.output_subdir to null, so that a refused launch leaves a folder's files
    as they were)."""
    if not results.is_writer():
        return
    if multirun:
        log.info("%s", job_line())
    folder = Path(hc.runtime.output_dir) / ".hydra"
    write_file(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_file(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": OmegaConf.to_container(hc)}))
    write_file(folder / "overrides.yaml", OmegaConf.to_yaml(list(hc.overrides.task)))


def _stop_on_sigterm(exc: type[BaseException]) -> None:
    """SIGTERM (scancel, a requeue, a time limit, a plain kill) stops the job at once, wherever it is: Lightning
    alone defers it to its next batch and forgets it outside a fit, and submitit ignores it. Every checkpoint
    is written atomically, so the last completed epoch is what the next launch resumes. Once submitit's own
    handler of SIGUSR2 (SLURM's warning before a time limit or a preemption) has begun to requeue the job, a
    SIGTERM that arrives with it (a job held past its limit gets both at once) is left to submitit, which exits
    itself once the job is requeued: raised there, it would cut the requeue short."""
    fired, requeueing = [], []

    def handler(signum, frame):
        if not fired and not requeueing:  # once: a second SIGTERM must not cut short the record of the first
            fired.append(signum)
            raise exc()

    def requeue(signum, frame):
        requeueing.append(signum)
        submitit_handler(signum, frame)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        if callable(submitit_handler):
            signal.signal(signal.SIGUSR2, requeue)


def _mark_interrupted(run_dir: Path, cfg: DictConfig, names: list[str], why: str) -> None:
    """Each run of this job that was still running when the job was stopped: `interrupted`, rounds kept."""
    if not results.is_writer():
        return
    for name in names:
        prev = results.RunFolder(run_dir / name).read()
        if (prev is None and name) or (prev is not None and prev.get("status") != "running"):
            continue  # a job's variant not begun, or a run that completed, failed or diverged
        _mark(run_dir / name, cfg, "interrupted", why)


def main() -> None:
    """The command (`python -m phicenter.train [overrides]`, and whatever calls this with its own sys.argv): its
    overrides checked first (phicenter.analysis.precheck.check_argv: a name the config does not have, or
    several values without -m, is one line and exit 2, before Hydra composes anything), then Hydra runs it."""
    try:
        check_argv(sys.argv[1:])
    except ConfigError as e:
        print(f"phicenter train: error: {e}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    """One job: its settings checked (check_job: before torch is imported, and every job of a multirun was
    checked before the first started, by the SweepSummary callback), then trained."""
    logging.raiseExceptions = False  # train.log on a full disk loses the line (the console has it), with no trace
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode.name == "MULTIRUN"
    try:  # the settings alone first: a refusal imports nothing heavy (is_writer below imports Lightning)
        check_job(cfg, None, multirun)
    except ConfigError as e:
        _refuse(e, run_dir)
    except Exception:  # met again below
        pass
    with ExitStack() as held:  # one process at a time in a run folder (engine.rundir.locked)
        lock = None
        try:
            if results.is_writer():
                lock = held.enter_context(results.locked(run_dir))
            check_job(cfg, run_dir, multirun)  # (a `pack=true` job's variant folders are checked as it starts them)
        except ConfigError as e:
            _refuse(e, run_dir, lock)
        except Exception:  # anything else (an interpolation, say) is met again below, and recorded there
            pass
        return _job(cfg, hc, run_dir, multirun, lock)


def _job(cfg: DictConfig, hc, run_dir: Path, multirun: bool, lock: results.Lock | None) -> float:
    """The job, in its locked folder, its settings checked: train it and record how it ended."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from phicenter.data import DataError
    from phicenter.engine.cohort import single, variants_from_hydra
    from phicenter.engine.loop import CohortFailed, train

    if not results.is_writer():  # a data-parallel worker: the first process reports for all of them
        logging.getLogger("phicenter").setLevel(logging.WARNING)
    _default_threads(cfg, hc)
    variants = None
    try:
        _stop_on_sigterm(SIGTERMException)
        # a cohort: this job's phi=[...] x strategy=[...] grid with pack=true, else the run alone
        variants = variants_from_hydra(cfg) if cfg.get("pack") else single(cfg)
        outs = train(
            variants,
            run_dir,
            chunk=cfg.get("pack_chunk"),
            on_start=lambda: _started(cfg, hc, multirun),
            halving=bool(cfg.get("pack_halving")),
        )
    except SystemExit as e:  # SIGTERM, or submitit's exit once it requeued a job near its time limit
        if threading.current_thread() is threading.main_thread():  # the SIGTERM that follows a requeue
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # must not cut this record short
        why = "SIGTERM" if isinstance(e, SIGTERMException) else f"exit {e.code}"
        _mark_interrupted(run_dir, cfg, [v.name for v in variants] if variants else [""], why)
        log.warning("run interrupted (%s); relaunch the same command to resume (%s)", why, run_dir)
        if isinstance(e, SIGTERMException):
            sys.exit(143)
        raise
    except KeyboardInterrupt:  # Ctrl-C outside a fit (inside one, Lightning turns it into an exit above)
        _mark_interrupted(run_dir, cfg, [v.name for v in variants] if variants else [""], "Ctrl-C")
        log.warning("run interrupted (Ctrl-C); relaunch the same command to resume (%s)", run_dir)
        sys.exit(130)
    except (ConfigError, DataError) as e:
        _refuse(e, run_dir, lock)
    except CohortFailed as e:  # each failed run said how, in its line and its results.json
        if len(e.statuses) > 1:  # a job of several variants: which of its runs did not complete
            log.error("%s", e)
        return _failed(multirun)
    except Exception as e:  # before any run folder could record it: record it in the job's own
        _record_job_failure(run_dir, cfg, e)
        return _failed(multirun)
    if not multirun and not cfg.get("dry_run") and results.is_writer():
        for line in where_results(run_dir, "results", selected(cfg)):
            log.info("%s", line)
    return _objective(outs)


def _default_threads(cfg, hc) -> None:
    """`threads` unset: jobs side by side share the cores their launcher gave them; otherwise one thread, as
    more make a small net slower (docs/benchmarks.md, "Masks and threads")."""
    if cfg.get("threads") is not None:
        return
    import torch

    cpus = hc.launcher.get("cpus_per_task") if "launcher" in hc else None
    torch.set_num_threads(int(cpus) if cpus else 1)


def _record_job_failure(run_dir: Path, cfg, e: Exception) -> None:
    trace, error = traceback.format_exc(), f"{type(e).__name__}: {e}"
    where = _mark(run_dir, cfg, "failed", error, trace)
    hint = results.RESUME_HINT if isinstance(e, WriteError) else ""
    log.error("run %s failed: %s%s%s", run_dir, error, where, hint)
    if results.full_trace():
        log.error("%s", trace)


def _failed(multirun: bool) -> float:
    """A single run that failed exits 1; a multirun job returns no objective and lets the others go on."""
    if not multirun:
        sys.exit(1)
    return float("nan")


def _objective(outs: dict) -> float:
    """The sweeper's objective: the best variant's final validation accuracy."""
    accs = [o["final"]["val_acc"] for o in outs.values() if o and (o.get("final") or {}).get("val_acc") is not None]
    return max(accs) if accs else float("nan")


if __name__ == "__main__":
    main()
