"""The round store: each distinct trained round once, under its round key (engine.reuse).

`<dir>/<key[:2]>/<key>/` holds `state.pt` (the trained state, the round's epoch history and test metrics, and
for round 0 of a late-rewinding run its rewind point) and `entry.json` (the key, the round, the run folder
that trained it first, the sha256 of state.pt). An entry is written into a temporary folder beside it and
published with one os.rename: a reader sees a whole entry or none, and of two jobs that publish one key the
first rename stands and the other drops its copy. An entry that fails its checksum is reported, moved aside
and ignored, so the round is trained again and published anew. Only the first process of a run writes.

Plain Python at import (torch is imported where an entry is read or written), so the multirun summary can
measure the store cheaply.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from phicenter.engine.rundir import is_writer, read_json, write_bytes, write_json

ENTRY = "entry.json"
STATE = "state.pt"
FORMAT = 1


@dataclass
class Entry:
    """One published round: what a run that reaches its key takes instead of training."""
    key: str
    round: int
    first_run: str                 # the run folder that trained it first
    model: dict                    # the trained state_dict
    history: list                  # the round's per-epoch rows
    test: tuple                    # (test loss, test accuracy)
    rewind: dict | None = None     # round 0 with rewind.epoch=k: theta_k


def store_dir(cfg) -> Path | None:
    """The store of a config (`round_store.dir`, relative to the working directory), or None when
    `round_store.enabled=false`."""
    node = cfg.get("round_store") or {}
    if not node.get("enabled", True):
        return None
    return Path(str(node.get("dir") or "outputs/round_store")).expanduser().resolve()


class RoundStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str, log=print) -> Entry | None:
        """The entry published under `key`, or None (none yet, or one that failed its checksum: reported and
        moved aside)."""
        folder = self.path(key)
        if not folder.is_dir():
            return None
        import torch

        try:
            meta = read_json(folder / ENTRY)
            data = (folder / STATE).read_bytes()
            if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != FORMAT:
                raise ValueError(f"{ENTRY} is missing or not this key's")
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                raise ValueError(f"{STATE} fails its checksum")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return Entry(key, int(meta["round"]), str(meta["first_run"]), state["model"], list(state["history"]),
                         tuple(state["test"]), state.get("rewind"))
        except Exception as e:
            log(f"round store entry {folder} is unusable ({type(e).__name__}: {e}); ignored, the round is "
                "trained again")
            self._discard(folder)
            return None

    def put(self, entry: Entry) -> bool:
        """Publish an entry; False when one stands already (another job published the key first), or when
        this process is not the run's writer."""
        target = self.path(entry.key)
        if not is_writer() or target.is_dir():
            return False
        import torch

        buf = io.BytesIO()
        torch.save({"model": entry.model, "history": entry.history, "test": tuple(entry.test),
                    "rewind": entry.rewind}, buf)
        data = buf.getvalue()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{entry.key}.", suffix=".tmp"))
        try:
            write_bytes(tmp / STATE, data)
            write_json(tmp / ENTRY, {"format": FORMAT, "key": entry.key, "round": entry.round,
                                     "first_run": entry.first_run, "sha256": hashlib.sha256(data).hexdigest(),
                                     "bytes": len(data)})
            _readable(tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if target.is_dir():   # another job won the race: its entry stands
                    return False
                raise
            return True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _discard(self, folder: Path) -> None:
        aside = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.corrupt"
        try:
            os.rename(folder, aside)
        except OSError:
            return   # gone already: another reader moved it
        shutil.rmtree(aside, ignore_errors=True)

    def usage(self) -> dict:
        """{"entries", "bytes"} of the published entries (temporary folders of jobs still writing aside)."""
        entries = size = 0
        if self.root.is_dir():
            for shard in self.root.iterdir():
                if not shard.is_dir() or shard.name.startswith("."):
                    continue
                for entry in shard.iterdir():
                    if entry.is_dir() and not entry.name.startswith("."):
                        entries += 1
                        size += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        return {"dir": str(self.root), "entries": entries, "bytes": size}


def _readable(folder: Path) -> None:
    """mkdtemp and the atomic writes make owner-only modes; a shared store needs the usual ones."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def describe(usage: dict) -> str:
    return f"round store {usage['dir']}: {usage['entries']} rounds, {usage['bytes'] / 2 ** 20:.1f} MiB"
