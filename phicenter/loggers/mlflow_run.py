"""MLflow: one MLflow run per phicenter run, in the experiment `logger.mlflow.experiment` of the tracking store
`logger.mlflow.tracking_uri` (a folder, sqlite:///FILE, or a server's http://HOST:PORT). Its params are the
run's hparams, logged as it starts; its metrics the run's scalars, at their steps. The run's id is kept in
the run folder, so a resumed run appends to the same MLflow run."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from phicenter.loggers.base import Sink, python_command
from phicenter.loggers.options import MlflowOptions

STATUS = {"complete": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}  # else KILLED (stopped)
BATCH = {"metrics": 1000, "params": 100}  # MLflow's limits on one log_batch


def tracking_uri(uri: str | None) -> str | None:
    """The store as MLflow is given it: a relative folder or sqlite file made absolute (so a relaunch from
    elsewhere finds the same store); None: MLflow's own choice."""
    if not uri:
        return None
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).absolute()}"
    if "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).absolute())
    return uri


@contextmanager
def _one_at_a_time(uri: str | None):
    """A sqlite store opened by one process at a time (`<file>.lock`, its folder made): jobs that start together
    would otherwise each create its tables, and all but one fail. Other stores: no lock."""
    if not (uri and uri.startswith("sqlite:///")):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


class MLflow(Sink):
    key = "mlflow"
    Options = MlflowOptions

    def __init__(self, folder: Path, options: MlflowOptions, name: str, params: dict):
        super().__init__(folder, options, name, params)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(self.options.tracking_uri)
        with _one_at_a_time(uri):
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.options.experiment
            where = {"tracking_uri": self.client.tracking_uri, "experiment": experiment}
            run = self._stored_run(where)
            if run is None:
                run = self.client.create_run(
                    self._experiment_id(experiment),
                    run_name=self.options.run_name or name,
                    tags={"phicenter.run_dir": str(self.folder.absolute())},
                )
                self.store_id(run.info.run_id, where)
            else:
                self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        have = run.data.params  # a resumed run: its params stand (MLflow never changes a param)
        new = [Param(k, str(v)) for k, v in params.items() if k not in have]
        for part in _chunks(new, BATCH["params"]):
            self.client.log_batch(self.run_id, params=part)

    def _stored_run(self, where: dict):
        """The MLflow run of an earlier launch of this run, when it is still in the store."""
        from mlflow.exceptions import MlflowException

        run_id = self.stored_id(where)
        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another job created it meanwhile
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def scalars(self, values: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items() if v is not None]
        for part in _chunks(metrics, BATCH["metrics"]):
            self.client.log_batch(self.run_id, metrics=part)

    def hparams(self, params: dict, metrics: dict) -> None:
        """The params were logged as the run started; the final metrics are among its scalars."""

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, STATUS.get(status, "KILLED"))

    @classmethod
    def readers(cls, folder: Path, shown: str, options: MlflowOptions) -> list[str]:
        uri = options.tracking_uri
        if uri and uri.startswith(("http://", "https://")):
            return [f"open {uri} (MLflow experiment {options.experiment})"]
        return [python_command("mlflow", "ui", *(["--backend-store-uri", tracking_uri(uri)] if uri else []))]
