"""Run folders: results.json, theta0 and round checkpoints, always written atomically (temp file + rename)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

RESULTS = "results.json"
THETA0 = "theta0.pt"
THETA_K = "theta_k.pt"   # the late-rewinding point (rewind.epoch=k > 0)
CKPT_DIR = "checkpoints"


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def write_json(path: Path, data: dict) -> None:
    write_bytes(path, json.dumps(_clean(data), indent=2, allow_nan=False).encode())


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_torch(path: Path, obj) -> None:
    import torch   # here, so reading results (the CLI's first checks, the report) needs no torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


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

    for path in sorted((Path(run_dir) / CKPT_DIR).glob("round_*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "round" not in state:
                raise ValueError("not a round checkpoint")
            return dict(state, model=upgrade_state(state["model"]))
        except Exception as e:
            log(f"checkpoint {path} is unreadable ({type(e).__name__}); falling back to the one before it")
    return None


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
        """resume=false: no checkpoint of the run before may be resumed later."""
        if is_writer():
            shutil.rmtree(self.path / CKPT_DIR, ignore_errors=True)
            (self.path / THETA_K).unlink(missing_ok=True)

    def drop_epochs_before(self, start: int) -> None:
        """Epoch checkpoints of rounds that have since completed."""
        for stale in sorted((self.path / CKPT_DIR).glob("round_*_epochs")):
            if int(stale.name.split("_")[1]) < start and is_writer():
                shutil.rmtree(stale, ignore_errors=True)

    def fail(self, record: dict, status: str, error: str, trace: str | None) -> dict:
        """Record how the run ended, keeping the rounds it completed."""
        out = dict(record, status=status, error=error, traceback=trace)
        self.write(out)
        return out
