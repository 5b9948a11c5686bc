"""Hydra callback: at the end of a multirun, name the jobs that failed or diverged (and write it down)."""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from phicenter.engine import rundir as results
from phicenter.engine.roundstore import RoundStore, describe, store_dir
from phicenter.io import read_json, write_json
from phicenter.loggers import selected

log = logging.getLogger("phicenter")


def summarize(sweep_dir: str | Path) -> dict:
    """Status of every job folder under sweep_dir: {"complete": [...], "failed": [...], ...}, each job with
    the rounds it trained and those it reused (`reused_from`, engine.reuse)."""
    out: dict[str, list] = {}
    jobs = [p.parent for p in Path(sweep_dir).glob("**/.hydra")]
    jobs += [p.parent for j in list(jobs) if (j / "pack.json").exists() for p in j.glob("*/results.json")]
    for job in sorted(j for j in jobs if not (j / "pack.json").exists()):  # several variants: one entry each
        res = read_json(job / results.RESULTS)
        status = (res or {}).get("status", "missing" if res is None else "unknown")
        rounds = (res or {}).get("rounds") or []
        reused = sum(isinstance(r, dict) and r.get("reused_from") is not None for r in rounds)
        out.setdefault(status, []).append(
            {
                "job": str(job.relative_to(sweep_dir)),
                "error": (res or {}).get("error"),
                "rounds_trained": len(rounds) - reused,
                "rounds_reused": reused,
            }
        )
    return out


JOBS_ENV = "PHICENTER_MULTIRUN_JOBS"  # set at the start of a multirun for its jobs: how many there are


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs a multirun launches: the sweeper's n_trials (Optuna), else the product of the swept
    values of the basic sweeper, hydra.sweeper.params overridden key by key by the command line's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if sweeper.get("n_trials") is not None:
        return int(sweeper.n_trials)
    lines = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
        sizes = {
            o.get_key_element(): len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in overrides
        }
    except Exception:  # a sweep this count does not know (say, an interval)
        return None
    return math.prod(sizes.values())


def job_line() -> str:
    """'job 3 of 88: phi=0.0005,strategy=mask1', in a multirun job."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    total = os.environ.get(JOBS_ENV)
    return f"job {hc.job.num + 1}{f' of {total}' if total else ''}: {hc.job.override_dirname or '(no overrides)'}"


def where_results(folder: str | Path, what: str, loggers: dict | None = None) -> list[str]:
    """Where a run's or a multirun's results are, and the commands that read them: each logger's
    (phicenter.loggers.selected; None: TensorBoard's), then the report. The commands work pasted into a new
    shell: this interpreter's path, the folder's absolute path."""
    from phicenter.loggers import readers
    from phicenter.loggers.base import python_command

    shown = os.path.relpath(folder) if Path(folder).resolve().is_relative_to(Path.cwd()) else str(folder)
    absolute = str(Path(folder).absolute())
    loggers = {"tensorboard": {}} if loggers is None else loggers
    return [
        f"{what} in {shown}; to read them:",
        *(f"  {line}" for line in readers(folder, absolute, loggers)),
        f"  {python_command('phicenter.report', absolute)}",
    ]


def swept_unnamed_keys(config: DictConfig) -> list[str]:
    """Keys the multirun sweeps over (`compile=true,false`) that job folder names leave out
    (hydra.job.config.override_dirname.exclude_keys): its jobs would share one folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    excluded = set(config.hydra.job.config.override_dirname.exclude_keys or ())
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [o.key_or_group for o in overrides if o.is_sweep_override() and o.key_or_group in excluded]


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        clash = swept_unnamed_keys(config)
        if clash:
            print(
                f"phicenter train: error: this multirun sweeps {', '.join(clash)}, which job folder names leave out "
                "(how a job runs, not what it trains), so its jobs would share one folder; run one multirun "
                "per value, each with its own hydra.sweep.dir",
                file=sys.stderr,
            )
            sys.exit(2)
        self._check_jobs(config)
        total = count_jobs(config)
        if total:
            os.environ[JOBS_ENV] = str(total)  # for the jobs, here or in the processes a launcher starts

    @staticmethod
    def _check_jobs(config: DictConfig) -> None:
        """Every job checked before the first starts (phicenter.analysis.precheck); the first that would be
        refused: one line, a sweep_summary.json that says so, exit 2, nothing trained."""
        from phicenter.analysis.precheck import JobRefused, check_sweep

        try:
            check_sweep(config)
        except JobRefused as e:
            print(f"phicenter train: error: {e}", file=sys.stderr)
            entry = {"job": e.job, "error": e.why, "rounds_trained": 0, "rounds_reused": 0}
            try:
                write_json(Path(config.hydra.sweep.dir) / "sweep_summary.json", {"refused": [entry]})
            except OSError:
                pass
            logging.shutdown()
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        summary = summarize(sweep_dir)
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(summary.items()))
        jobs = [j for v in summary.values() for j in v]
        rounds = {k: sum(j[f"rounds_{k}"] for j in jobs) for k in ("trained", "reused")}
        root = store_dir(config)
        usage = RoundStore(root).usage() if root is not None else None
        try:
            write_json(sweep_dir / "sweep_summary.json", summary)
            written = f"({sweep_dir / 'sweep_summary.json'})"
        except OSError as e:
            written = f"(sweep_summary.json not written: {e})"
        log.info("multirun finished: %s %s", counts, written)
        log.info(
            "rounds: %d trained, %d reused; %s",
            rounds["trained"],
            rounds["reused"],
            describe(usage) if usage else "round store off",
        )
        for status in ("failed", "diverged", "running", "interrupted", "missing", "unknown"):
            for job in summary.get(status, []):
                log.warning("%s: %s%s", status, job["job"], f" -- {job['error']}" if job["error"] else "")
        for line in where_results(sweep_dir, "results of the multirun", selected(config)):
            log.info("%s", line)
