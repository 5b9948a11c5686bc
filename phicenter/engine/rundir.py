"""Run folders: results.json, theta0 and round checkpoints, always written atomically (phicenter.io)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from phicenter.io import newest_loadable, read_json, save_torch, write_json
from phicenter.loggers import IDS as LOGGER_IDS

RESULTS = "results.json"
THETA0 = "theta0.pt"
THETA_K = "theta_k.pt"  # the late-rewinding point (rewind.epoch=k > 0)
CKPT_DIR = "checkpoints"


def checkpoint_path(run_dir: Path, round_index: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"round_{round_index:03d}.pt"


def save_round(run_dir: Path, round_index: int, state: dict, keep_all: bool) -> None:
    """Save this round's checkpoint; keep it and the one before (the fallback), older ones only if keep_all."""
    save_torch(checkpoint_path(run_dir, round_index), state)
    if not keep_all:
        for old in sorted((Path(run_dir) / CKPT_DIR).glob("round_*.pt"))[:-2]:
            old.unlink(missing_ok=True)


def latest_round(run_dir: Path, log=print) -> dict | None:
    """The newest checkpoint that loads; a corrupt or truncated one is reported and skipped. Weights, masks
    and fills saved while masks were parametrizations read in today's names (pruning.upgrade_state)."""
    import torch

    from phicenter.method.pruning import upgrade_state

    def load(path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "round" not in state:
            raise ValueError("not a round checkpoint")
        return dict(state, model=upgrade_state(state["model"]))

    found = newest_loadable(sorted((Path(run_dir) / CKPT_DIR).glob("round_*.pt"), reverse=True), load, log)
    return found[1] if found else None


def is_writer() -> bool:
    """Only the first process of a data-parallel run writes run files; every rank trains."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class RunFolder:
    """The one place that writes a run's folder: results.json, theta0, round checkpoints, the resume point,
    the same-run check and status/failure records. Epoch checkpoints belong to the cohort (engine.loop)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def read(self) -> dict | None:
        return read_json(self.results)

    def write(self, record: dict) -> None:
        if is_writer():
            write_json(self.results, record)

    def check_same_run(self, resolved: dict) -> None:
        from phicenter.config import check_same_run

        check_same_run(self.read(), resolved, self.path)

    def save_theta0(self, state: dict) -> None:
        if is_writer():
            save_torch(self.path / THETA0, state)

    def load_theta0(self) -> dict:
        import torch

        from phicenter.method.pruning import upgrade_state

        return upgrade_state(torch.load(self.path / THETA0, map_location="cpu", weights_only=True))

    def save_rewind(self, state: dict) -> None:
        if is_writer():
            save_torch(self.path / THETA_K, state)

    def load_rewind(self) -> dict | None:
        """theta_k when this run has reached it, else None."""
        import torch

        from phicenter.method.pruning import upgrade_state

        path = self.path / THETA_K
        return upgrade_state(torch.load(path, map_location="cpu", weights_only=True)) if path.exists() else None

    def latest_round(self, log) -> dict | None:
        return latest_round(self.path, log=log)

    def save_round(self, round_index: int, state: dict, keep_all: bool) -> None:
        if is_writer():
            save_round(self.path, round_index, state, keep_all)

    def start_over(self) -> None:
        """resume=false: no checkpoint of the run before may be resumed later, nor its loggers' runs."""
        if is_writer():
            shutil.rmtree(self.path / CKPT_DIR, ignore_errors=True)
            (self.path / THETA_K).unlink(missing_ok=True)
            (self.path / LOGGER_IDS).unlink(missing_ok=True)  # the loggers start a new run too

    def drop_epochs_before(self, start: int) -> None:
        """Epoch checkpoints of rounds that have since completed."""
        for stale in sorted((self.path / CKPT_DIR).glob("round_*_epochs")):
            if int(stale.name.split("_")[1]) < start and is_writer():
                shutil.rmtree(stale, ignore_errors=True)

    def fail(self, record: dict, status: str, error: str, trace: str | None) -> tuple[dict, str]:
        """Record how the run ended, keeping the rounds it completed. Returns the record and, when results.json
        could not be written, what stands instead ("" when it was written)."""
        out = dict(record, status=status, error=error, traceback=trace)
        try:
            self.write(out)
        except OSError as e:
            return out, "; " + unrecorded(self.results, e)
        return out, ""


RESUME_HINT = "; once the folder can be written, the same command resumes the run"


def unrecorded(path: Path, e: OSError) -> str:
    """What stands when a run's end could not be recorded: its last good results.json (written atomically)."""
    prev = read_json(path)
    why = f"{Path(path).name} could not be written either ({e.strerror})"
    if not isinstance(prev, dict):
        return f"{why}: there is none yet"
    return f"{why}: the last good one stands (status {prev.get('status')}, {len(prev.get('rounds') or [])} rounds)"


def full_trace() -> bool:
    """Hydra's switch for full tracebacks; otherwise a failure is one line (and its trace in results.json)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
