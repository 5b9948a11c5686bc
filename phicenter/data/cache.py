"""Decode cache: decoded uint8 tensors of a dataset, kept in `<data_dir>/phicenter-cache/` beside its files."""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from phicenter.io import save_torch, writable

log = logging.getLogger("phicenter")

# Decode cache: <data_dir>/phicenter-cache/<name>.pt holds the decoded uint8 tensors, the fingerprint of the
# source files it was built from (path, size, mtime) and a CRC of the tensors. A stale fingerprint, a wrong
# version or a bad CRC (truncated or corrupt file) means: decode again and replace it. Written atomically
# (phicenter.io), so a reader never sees half a file; a read-only data_dir just goes without a cache, and a
# write that fails (a full disk) costs one warning.

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


def _write_cache(path: Path, key: str, tensors: dict[str, torch.Tensor]) -> bool:
    """Atomically (phicenter.io); False where data_dir is read-only (silently: a shared data folder often is)
    or the write fails (one warning: the cache is an optimisation, never an error)."""
    if not writable(path.parent):
        log.debug("data_dir %s is read-only: no data cache", path.parent.parent)
        return False
    blob = {"version": CACHE_VERSION, "key": key, "checksum": _checksum(tensors), "tensors": tensors}
    try:
        save_torch(path, blob)
        return True
    except OSError as e:
        log.warning("data cache not written (%s); the data is decoded again next time", e)
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


def cached_generated(root: Path, name: str, recipe: dict, make: Callable[[], dict]) -> dict:
    """Generated data (no source files): the tensors cached under `<name>-<digest of recipe>.pt`, keyed by the
    recipe (every setting of the generator and its version), else make() (and cache it)."""
    key = json.dumps({"version": CACHE_VERSION, "name": name, "recipe": recipe}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_path(root, f"{name}-{digest}")
    hit = _read_cache(path, key)
    if hit is not None:
        return hit
    raw = {k: v.contiguous() for k, v in make().items()}
    if Path(root).is_dir():
        _write_cache(path, key, raw)
    return raw
