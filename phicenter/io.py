"""The one place phicenter writes files: atomic file writes (a temporary file in the same folder, fsync,
os.replace), atomic folder publishes (a temporary folder renamed into place), appended records, one
permission policy, the newest of several checkpoints that loads, and the write faults tests inject.

A write that fails raises WriteError, an OSError naming the file meant (never its temporary) and the cause;
the temporary is removed and the file it was to replace is left as it was. Plain Python: torch is imported
only where a tensor file is saved, and neither Lightning nor Hydra ever.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- permissions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
# Every file and folder written gets the usual modes (those of anything else the user creates): files shared
# with others (a round store, a data cache, a report) are as readable as the user's umask allows.
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def writable(folder: str | Path) -> bool:
    """Whether phicenter may write into `folder` (or, when it does not exist yet, into the nearest folder
    above it that does): write permission and a write bit in its mode. The mode bit matters for root, whom
    os.access always lets write: a folder made read-only (chmod a-w) stays untouched."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


# ---------------------------------------------------------------- errors and injected faults


class WriteError(OSError):
    """A file or folder could not be written: `path` is the one meant, the cause its errno and message."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        self.path = Path(path)

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0)
        return f"cannot write {self.path}: {self.strerror}{f' ({code})' if code else ''}"


FAULT_ERRNOS = {
    "ENOSPC": errno.ENOSPC,
    "EACCES": errno.EACCES,
    "EIO": errno.EIO,
    "EDQUOT": errno.EDQUOT,
    "EROFS": errno.EROFS,
}
_fault: dict | None = None  # the armed fault: {"n", "on", "errno", "match", "seen"}


def parse_fault(spec: str) -> tuple[int, bool, int, str]:
    """`N[+]:ERRNO[:MATCH]` -> (N, whether every write from the N-th on fails, errno, MATCH): the N-th write
    (counted from 1; with `+`, that one and every one after it, as on a disk that stays full) of a file whose
    path contains MATCH (of any file without it) fails with ERRNO. ValueError, in one line, for anything else."""
    parts = str(spec).split(":", 2)
    n = parts[0].strip().removesuffix("+")
    if not (len(parts) >= 2 and n.isdigit() and int(n) >= 1 and parts[1] in FAULT_ERRNOS):
        raise ValueError(
            f"must be N:ERRNO, N+:ERRNO or either with :MATCH (N >= 1, ERRNO one of "
            f"{', '.join(FAULT_ERRNOS)}, MATCH a part of the path), got {spec!r}"
        )
    return int(n), parts[0].strip().endswith("+"), FAULT_ERRNOS[parts[1]], parts[2] if len(parts) > 2 else ""


def inject(spec: str | None) -> None:
    """Arm a write fault (`parse_fault`) for this process, counting writes from now; None disarms."""
    global _fault
    if spec is None:
        _fault = None
        return
    n, on, code, match = parse_fault(spec)
    _fault = {"n": n, "on": on, "errno": code, "match": match, "seen": 0}


def _injected(path: Path) -> OSError | None:
    """The armed fault, if this write is one it hits (a fault that hits once is then disarmed)."""
    global _fault
    if _fault is None or _fault["match"] not in str(path):
        return None
    _fault["seen"] += 1
    if _fault["seen"] < _fault["n"]:
        return None
    code = _fault["errno"]
    if not _fault["on"]:
        _fault = None
    return OSError(code, f"{os.strerror(code)} (injected)")


# ---------------------------------------------------------------- atomic files


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every filesystem lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fill(f, data: bytes | Callable, path: Path) -> None:
    """Write `data` (bytes, or a function that writes into the open file) into f; an injected fault strikes
    half-way, as a disk that fills up would."""
    fault = _injected(path)
    if callable(data):
        data(f)
    elif fault is not None:
        f.write(data[: len(data) // 2])
    else:
        f.write(data)
    if fault is not None:
        f.flush()
        raise fault


@contextmanager
def _written(path: Path):
    """Any OSError of the block, not already a WriteError, as WriteError(path): the file meant, not a temp."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from e


def _commit(path: Path, write: Callable[[str], None], keep: Path | None, mode: int = FILE_MODE) -> None:
    """A temporary file beside `path`, filled by write(tmp), fsynced, given `mode` and renamed onto `path`
    (the file there first moved to `keep`, when given). WriteError(path) when any step fails."""
    tmp = None
    try:
        with _written(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            write(tmp)
            os.chmod(tmp, mode)
            if keep is not None and path.exists():
                os.replace(path, keep)
            os.replace(tmp, path)
            tmp = None
            _sync_folder(path.parent)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_file(path: str | Path, data: bytes | str | Callable, keep: str | Path | None = None, mode: int = FILE_MODE):
    """Write a whole file atomically: a reader sees the old file or the new one, never a part. `data`: bytes,
    text (UTF-8) or a function that writes into the open binary file. `keep`: move the file there first
    (the previous version, kept as a fallback). `mode`: the file's from its first byte on (a secret's 0o600)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            _fill(f, data, path)
            f.flush()
            os.fsync(f.fileno())

    _commit(path, write, Path(keep) if keep is not None else None, mode)


def write_with(path: str | Path, save: Callable[[str], None], keep: str | Path | None = None) -> None:
    """write_file for a writer that opens the file itself (Lightning's save_checkpoint): save(tmp) writes the
    temporary, which is then fsynced and renamed onto `path`."""
    path = Path(path)

    def write(tmp: str) -> None:
        save(tmp)
        fault = _injected(path)
        if fault is not None:
            raise fault
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    _commit(path, write, Path(keep) if keep is not None else None)


def _clean(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def json_bytes(data: Any) -> bytes:
    return json.dumps(_clean(data), indent=2, allow_nan=False).encode()


def write_json(path: str | Path, data: Any) -> None:
    write_file(path, json_bytes(data))


def read_json(path: str | Path) -> Any | None:
    """A JSON file's content; None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_torch(path: str | Path, obj, keep: str | Path | None = None) -> None:
    import torch  # here, so reading results (the command line's first checks, the report) needs no torch

    write_file(path, lambda f: torch.save(obj, f), keep)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- folders


def make_folder(folder: str | Path, mode: int) -> None:
    """Make `folder` with `mode` exactly (setgid included, the umask aside) unless it stands: a temporary folder
    given its mode, then renamed into place, so nobody sees it with other modes (the folders above: as any)."""
    folder = Path(folder)
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not folder.is_dir():  # else another process made it first: it stands
            raise


def publish_folder(target: str | Path, files: dict[str, bytes], mode: int = DIR_MODE) -> bool:
    """Publish a folder of files at once: they are written into a temporary folder beside `target`, which is
    then renamed to it, so a reader sees the whole folder or none. False when `target` stands already
    (another process published it first: its folder stays). WriteError when it cannot be written. `mode`: the
    folder's and its parent's when made here (make_folder: a group's store keeps 2775 below), less x the files'."""
    target = Path(target)
    if target.is_dir():
        return False
    tmp = None
    try:
        with _written(target):
            make_folder(target.parent, mode)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
            for name, data in files.items():
                with _written(target / name), open(tmp / name, "wb") as f:
                    _fill(f, data, target / name)
                    f.flush()
                    os.fsync(f.fileno())
                    os.chmod(tmp / name, mode & 0o666)
            os.chmod(tmp, mode)
            try:
                os.rename(tmp, target)
            except OSError:
                if target.is_dir():  # another process won the race: its folder stands
                    return False
                raise
            tmp = None
            _sync_folder(target.parent)
            return True
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- appended records


class AppendFile:
    """A file that grows by whole records (TensorBoard's events, CSV rows): each record is written at once, and
    one that fails is cut off again, so the file always ends on a whole record. `record_end`: the bytes every
    record ends with (b"\n" for lines): a part record a killed process left at the end is cut off on opening."""

    def __init__(self, path: str | Path, record_end: bytes | None = None):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            if record_end:
                self._cut_part_record(record_end)
        except OSError as e:
            raise WriteError(self.path, e) from e

    def _cut_part_record(self, end: bytes) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        if data and not data.endswith(end):
            os.ftruncate(self.fd, data.rfind(end) + len(end) if end in data else 0)

    def write(self, data: bytes) -> None:
        start = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            fault = _injected(self.path)
            view = memoryview(data)[: len(data) // 2] if fault is not None else memoryview(data)
            while len(view):
                view = view[os.write(self.fd, view) :]
            if fault is not None:
                raise fault
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)
            except OSError:
                pass
            raise WriteError(self.path, e) from e

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- reading back


def newest_loadable(paths: Iterable[str | Path], load: Callable[[Path], Any], log=print) -> tuple[Path, Any] | None:
    """(path, load(path)) of the first of `paths` (newest first) that exists and loads; a corrupt or truncated
    one is reported and the next one tried. None when none loads.

    `load` is a safe load (torch.load with weights_only=True: tensors and plain containers only), so a file
    that holds code or other objects (a planted pickle payload) is refused by it, never run; the log then says
    so and names the file, since that is not the damage a crash leaves. What the safe loader cannot even parse
    (an opcode it does not know: garbage, or a pickle of another kind) is reported as unreadable and not loaded.
    """
    import pickle  # for its exception class only: nothing is unpickled here
    import re

    for path in map(Path, paths):
        if not path.exists():
            continue
        try:
            return path, load(path)
        except pickle.UnpicklingError as e:
            text = str(e)
            refused = re.search(r"GLOBAL \S+|\S+ must be \S+ to load", text)
            if refused:
                what = f"unsupported {refused.group(0)}" if refused.group(0).startswith("GLOBAL") else refused.group(0)
                log(
                    f"checkpoint {path} holds code or objects a safe load refuses (UnpicklingError: {what}); "
                    "not loaded, falling back to the one before it"
                )
                continue
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
            log(
                f"checkpoint {path} is unreadable or holds what a safe load refuses (UnpicklingError: "
                f"{reason[:200]}); not loaded, falling back to the one before it"
            )
        except Exception as e:
            log(f"checkpoint {path} is unreadable ({type(e).__name__}); falling back to the one before it")
    return None
