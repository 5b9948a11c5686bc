"""Decode cache: decoded uint8 tensors of a dataset, kept in `<data_dir>/phicenter-cache/` beside its files."""
from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger("phicenter")

# Decode cache: <data_dir>/phicenter-cache/<name>.pt holds the decoded uint8 tensors, the fingerprint of the
# source files it was built from (path, size, mtime) and a CRC of the tensors. A stale fingerprint, a wrong
# version or a bad CRC (truncated or corrupt file) means: decode again and replace it. Written to a temporary
# file and renamed, so a reader never sees half a file; a read-only data_dir just goes without a cache.

CACHE_DIR = "phicenter-cache"
CACHE_VERSION = 1


def cache_path(root: Path, name: str) -> Path:
    return Path(root) / CACHE_DIR / f"{name}.pt"


def _source_files(root: Path, patterns: tuple[str, ...]) -> list[Path]:
    return sorted({p for pat in patterns for p in Path(root).glob(pat) if p.is_file()})


def _fingerprint(root: Path, name: str, patterns: tuple[str, ...]) -> str | None:
    """What the cache was built from; None when the source files are not all there."""
    files = _source_files(root, patterns)
    if len(files) < len(patterns):
        return None
    stats = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return json.dumps({"version": CACHE_VERSION, "name": name, "files": stats}, sort_keys=True)


def _checksum(tensors: dict[str, torch.Tensor]) -> int:
    crc = 0
    for k in sorted(tensors):
        t = tensors[k].contiguous()
        crc = zlib.crc32(f"{k}:{t.dtype}:{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.numpy().reshape(-1).view(np.uint8).data, crc)
    return crc


def _read_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("version") != CACHE_VERSION or blob.get("key") != key:
            log.info("data cache %s is stale; decoding again", path)
            return None
        tensors = blob["tensors"]
        if _checksum(tensors) != blob["checksum"]:
            raise ValueError("checksum mismatch")
        return tensors
    except Exception as e:  # truncated, corrupt or foreign file: rebuild it
        log.warning("data cache %s is unreadable (%s: %s); decoding again", path, type(e).__name__, e)
        return None


def _writable(folder: Path) -> bool:
    """A folder we may write into: write permission and a write bit in its mode. The mode check matters
    for root, which os.access always lets write: a folder made read-only (chmod a-w) stays untouched."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def _write_cache(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> bool:
    """Atomically (temp file + rename); False, silently, where data_dir is not writable."""
    tmp = None
    root = path.parent.parent
    if not _writable(root) or (path.parent.exists() and not _writable(path.parent)):
        log.debug("data_dir %s is read-only: no data cache", root)
        return False
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CACHE_VERSION, "key": key, "checksum": _checksum(tensors),
                        "tensors": tensors}, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; others sharing data_dir may read it
        os.replace(tmp, path)
        return True
    except OSError as e:  # read-only or full: the cache is an optimisation, never an error
        log.debug("not writing data cache %s (%s)", path, e)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def cached(root: Path, name: str, patterns: tuple[str, ...], decode: Callable[[], dict]) -> dict:
    """The decoded tensors from the cache when it matches the source files, else decode() (and cache it)."""
    key = _fingerprint(root, name, patterns)
    path = cache_path(root, name)
    if key is not None:
        hit = _read_cache(path, key)
        if hit is not None:
            return hit
    raw = {k: v.contiguous() for k, v in decode().items()}
    key = _fingerprint(root, name, patterns)  # the files may have just been downloaded
    if key is not None:
        _write_cache(path, key, raw)
    return raw
