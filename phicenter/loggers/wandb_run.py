"""Weights & Biases: one W&B run per phicenter run, its files in `<run>/wandb/`. Its config is the run's
hparams, given as it starts; its history the run's scalars, each row with its `step` (the global epoch
index, the x-axis of every scalar: a resumed run's rows may repeat a step W&B has, which its own step counter
would refuse); its summary the final metrics. The run's id is made here and kept in the run folder, so a
resumed run appends to the same W&B run (offline: each launch writes its own offline-run folder under that
id, and `wandb sync <run>/wandb/offline-run-*` uploads them, in order, as that one run)."""

from __future__ import annotations

import logging
from pathlib import Path

from phicenter.loggers.base import Sink, env_or, python_command
from phicenter.loggers.options import WandbOptions

STEP = "step"


def new_id() -> str:
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandB(Sink):
    key = "wandb"
    Options = WandbOptions

    def __init__(self, folder: Path, options: WandbOptions, name: str, params: dict):
        super().__init__(folder, options, name, params)
        import wandb

        project = self.options.project
        entity = env_or(self.options.entity, "WANDB_ENTITY")
        where = {"project": project, "entity": entity}
        run_id = self.stored_id(where) or new_id()
        self.store_id(run_id, where)  # before W&B starts it: a launch killed meanwhile resumes it too
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=self.options.group,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(self.folder),
            config=params,
            mode=env_or(self.options.mode, "WANDB_MODE"),
            reinit="create_new",
            settings=wandb.Settings(
                console="off", silent=True, disable_git=True, save_code=False, x_disable_stats=True, x_disable_meta=True
            ),
        )
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)
        if not self.run.offline and not self.run.disabled and self.run.url:  # (W&B itself is kept silent)
            logging.getLogger("phicenter").info("W&B run %s: %s", name, self.run.url)

    def scalars(self, values: dict, step: int) -> None:
        row = {k: float(v) for k, v in values.items() if v is not None}
        self.run.log(dict(row, **{STEP: int(step)}))

    def hparams(self, params: dict, metrics: dict) -> None:
        self.run.config.update(params, allow_val_change=True)
        self.run.summary.update({k: v for k, v in metrics.items() if v is not None})

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "complete" else 1)

    @classmethod
    def readers(cls, folder: Path, shown: str, options: WandbOptions) -> list[str]:
        """Offline runs: the one command that uploads them (each run's launches in order, as one run)."""
        depths = sorted({len(p.relative_to(folder).parts) - 2 for p in Path(folder).rglob("wandb/offline-run-*")})
        return [f"{python_command('wandb', 'sync', shown)}/{'*/' * d}wandb/offline-run-*" for d in depths]
