"""phicenter's hydra/launcher=slurm (a Hydra plugin, so in the hydra_plugins namespace): hydra-submitit-launcher's
SLURM launcher, except that a job ending without a result (scancel, a time limit past max_num_timeout, a lost
node) does not end the multirun while the rest of the array still runs. Each such job is named in the log; its
own results.json (`interrupted`, `running`) and the sweep summary say where it stopped, and relaunching the
same command resumes it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins import phicenter_resolvers
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

log = logging.getLogger("phicenter")


class LocalLauncher(submitit_launcher.LocalLauncher):
    """The plugin's local launcher, with phicenter's resolvers registered where each job runs."""

    def __call__(self, *args, **kwargs):
        phicenter_resolvers.register()
        return super().__call__(*args, **kwargs)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def __call__(self, *args, **kwargs):
        """One job, on its node: phicenter's resolvers first (its folder names use them)."""
        phicenter_resolvers.register()
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The plugin's own launch (hydra-submitit-launcher 1.2), waiting for every job."""
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params["submitit_folder"],
            **{f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k == "max_num_timeout"},
        )
        base = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k not in init_keys}
        )
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        return [_result(job, list(overrides)) for job, overrides in zip(jobs, job_overrides)]


def _result(job, overrides: list[str]) -> JobReturn:
    """The job's own return; for one that ended without any, a NaN objective, so the sweep goes on."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    try:
        return job.results()[0]
    except FailedJobError:  # it raised outside the run (phicenter.train records the run's own errors)
        raise
    except UncompletedJobError:
        log.warning(
            "job %s (%s) ended without a result (SLURM state %s); relaunch the same command to resume it",
            job.job_id,
            " ".join(overrides),
            job.state,
        )
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=float("nan"))
