"""Run folders: results.json, theta0 and round checkpoints, always written atomically (phicenter.io), and the
lock that lets one process at a time work in a folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from phicenter.io import FILE_MODE, newest_loadable, read_json, save_torch, write_json
from phicenter.loggers import IDS as LOGGER_IDS
from phicenter.spec import ConfigError

RESULTS = "results.json"
THETA0 = "theta0.pt"
THETA_K = "theta_k.pt"  # the late-rewinding point (rewind.epoch=k > 0)
CKPT_DIR = "checkpoints"
LOCK = ".lock"
DIGEST = "config_digest"  # the key of a checkpoint's configuration digest (phicenter.config.config_digest)


class FolderBusy(ConfigError):
    """Another process works in the folder: this one touches nothing and stops (exit 2)."""


class Lock:
    """A folder's lock as this process holds it: its file descriptor, how deep it is held, and what the lock file
    was before this process wrote its name into it (so a refused launch can put it back: `undo`)."""

    def __init__(self, path: Path, fd: int, before: tuple[bytes, os.stat_result] | None):
        self.path, self.fd, self.before, self.depth = path, fd, before, 0

    def undo(self) -> None:
        """The lock file as it was before this process took it: removed if this process made it."""
        if self.before is None:
            self.path.unlink(missing_ok=True)
            return
        data, st = self.before
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))


_held: dict[str, Lock] = {}  # by resolved folder


@contextmanager
def locked(folder: str | Path) -> Iterator[Lock]:
    """Hold `folder`'s lock while the block runs, so that one process at a time works in a run folder. It is
    the kernel's lock on `<folder>/.lock` (flock), so it dies with its process: a killed or requeued run's
    folder is free again at once, for the relaunch that resumes it. Re-entrant in a process (a single run's
    job folder is its variant folder). FolderBusy, naming the holder, when another process holds it."""
    import fcntl

    key = str(Path(folder).resolve())
    if key not in _held:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / LOCK
        try:
            fd, mine = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE), True
        except PermissionError:  # another user's lock file: locking needs only a read descriptor
            fd, mine = os.open(path, os.O_RDONLY), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusy(
                f"{folder} is in use by another run ({holder}); wait for it to end, or give this one another folder"
            ) from None
        st = os.fstat(fd)
        lock = Lock(path, fd, (os.pread(fd, 4096, 0), st) if st.st_size else None)
        if mine:
            who = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(who).encode(), 0)
        _held[key] = lock
    lock = _held[key]
    lock.depth += 1
    try:
        yield lock
    finally:
        lock.depth -= 1
        if lock.depth == 0:
            os.close(_held.pop(key).fd)  # (the file stays: removing it would race with the next process)


def _holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"host {who['host']}, pid {who['pid']}, since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


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
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "round" not in state:
            raise ValueError("not a round checkpoint")
        return dict(state, model=upgrade_state(state["model"]))

    found = newest_loadable(sorted((Path(run_dir) / CKPT_DIR).glob("round_*.pt"), reverse=True), load, log)
    return found[1] if found else None


def is_writer() -> bool:
    """Only the first process of a data-parallel run writes run files; every rank trains."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def record_problem(record) -> str | None:
    """Why a results.json's content is not a run's record (None: it is one)."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not an object"
    for key, kind in (("config", dict), ("rounds", list), ("status", str)):
        if key in record and not isinstance(record[key], kind):
            return f'its "{key}" is a {type(record[key]).__name__}'
    return None


_UNREADABLE = object()


def checkpoint_digest(path: Path):
    """The configuration digest a checkpoint carries (a list of them for a cohort's epoch checkpoint), None
    when it has none (an older phicenter), _UNREADABLE when it does not load."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return _UNREADABLE
    return state.get(DIGEST) if isinstance(state, dict) else _UNREADABLE


class RunFolder:
    """The one place that writes a run's folder: results.json, theta0, round checkpoints, the resume point,
    the same-run check and status/failure records. Epoch checkpoints belong to the cohort (engine.loop)."""

    def __init__(self, path: Path, digest: str | None = None):
        self.path = Path(path)
        self.digest = digest  # the configuration digest its round checkpoints carry (config_digest)

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def read(self) -> dict | None:
        """results.json as a run's record; None when there is none or it is not one (see `read_checked`)."""
        record = read_json(self.results)
        return record if record_problem(record) is None else None

    def read_checked(self) -> dict | None:
        """results.json as a run's record, None when there is none yet; ConfigError, in one line, when it cannot
        be read or is not a run's record: the run in this folder cannot be checked against a relaunch."""
        if not self.results.exists():
            return None
        record = read_json(self.results)
        why = "it is not JSON, or cannot be read" if record is None else record_problem(record)
        if why:
            raise ConfigError(
                f"{self.results} is not a run's record ({why}); the run in {self.path} cannot be checked against "
                "this configuration: move the folder aside, or relaunch with resume=false to start over"
            )
        return record

    def check_resume(self, resolved: dict, digest: str) -> dict | None:
        """A relaunch continues only the run of its own configuration: results.json's config (config_changes)
        and the digest every round checkpoint carries. ConfigError, in one line, before anything is written,
        when they differ, or when results.json is unreadable or missing beside checkpoints without a digest.
        Returns results.json's record."""
        from phicenter.config import check_same_run

        record = self.read_checked()
        check_same_run(record, resolved, self.path)
        for path in sorted((self.path / CKPT_DIR).glob("round_*.pt")):
            found = checkpoint_digest(path)
            if found is _UNREADABLE or (found is None and record is not None):
                continue  # unreadable: the resume skips it; no digest (older phicenter): results.json vouches
            if found != digest:
                what = "carries no configuration digest" if found is None else f"was trained under {found}"
                raise ConfigError(
                    f"{path} {what}, and this configuration is {digest}; relaunch the run with its own "
                    "settings, use another folder, or resume=false to start over"
                )
        return record

    def write(self, record: dict) -> None:
        if is_writer():
            write_json(self.results, record)

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
            save_round(self.path, round_index, dict(state, **{DIGEST: self.digest}), keep_all)

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
    if record_problem(prev) is not None:
        return f"{why}: there is none yet" if prev is None else f"{why}, and the one there is not a run's record"
    return f"{why}: the last good one stands (status {prev.get('status')}, {len(prev.get('rounds') or [])} rounds)"


def full_trace() -> bool:
    """Hydra's switch for full tracebacks; otherwise a failure is one line (and its trace in results.json)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
