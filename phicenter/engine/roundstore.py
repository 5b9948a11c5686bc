"""The round store: each distinct trained round once, under its round key (engine.reuse).

`<dir>/<key[:2]>/<key>/` holds `state.pt` (the trained state, the round's epoch history and test metrics, and
for round 0 of a late-rewinding run its rewind point) and `entry.json` (the key, the round, the run folder
that trained it first, the sha256 of state.pt). An entry is written into a temporary folder beside it and
published with one os.rename: a reader sees a whole entry or none, and of two jobs that publish one key the
first rename stands and the other drops its copy (phicenter.io.publish_folder). An entry that fails its
checksum is reported, moved aside and ignored, so the round is trained again and published anew. Only the first
process of a run writes. A store that cannot be read is skipped, and one that cannot be written is read-only for
the run, each with one warning: the store never costs a run, which then trains what it could not reuse.

Plain Python at import (torch is imported where an entry is read or written), so the multirun summary can
measure the store cheaply.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from phicenter.config import schema
from phicenter.engine.rundir import is_writer
from phicenter.io import json_bytes, publish_folder, sha256, writable
from phicenter.spec import make

ENTRY = "entry.json"
STATE = "state.pt"
FORMAT = 1


@dataclass
class Entry:
    """One published round: what a run that reaches its key takes instead of training."""

    key: str
    round: int
    first_run: str  # the run folder that trained it first
    model: dict  # the trained state_dict
    history: list  # the round's per-epoch rows
    test: tuple  # (test loss, test accuracy)
    rewind: dict | None = None  # round 0 with rewind.epoch=k: theta_k


def store_dir(cfg) -> Path | None:
    """The store of a config (`round_store.dir`, relative to the working directory), or None when
    `round_store.enabled=false`. Only the round_store group is read, so a multirun's own config will do."""
    node = cfg.round_store
    node = node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True)
    rs = make(schema.RoundStore, node, "round_store.")
    return Path(rs.dir).expanduser().resolve() if rs.enabled else None


class RoundStore:
    """One store, as one run uses it. It never costs the run: a store that cannot be read is skipped, one that
    cannot be written (full, read-only, over quota) becomes read-only, each said once in a warning and kept in
    `errors` for the run's results.json (engine.reuse counts what each run read and published)."""

    def __init__(self, root: str | Path, log=print):
        self.root, self.log = Path(root), log
        self.readable = self.writable = True
        self.checked = False
        self.errors: list[str] = []

    def _error(self, message: str, log=None) -> None:
        self.errors.append(message)
        (log or self.log)(message)

    def _check(self) -> None:
        """Once, before the first entry is read or published: can the store be read, and written?"""
        if self.checked:
            return
        self.checked = True
        try:
            os.listdir(self.root)
        except FileNotFoundError:
            pass  # made by the first entry published
        except OSError as e:
            self._unreadable(e)
            return
        if not writable(self.root):
            self._read_only(f"round store {self.root} is read-only")

    def _unreadable(self, e: OSError) -> None:
        """Skipped: neither read nor written any more (what it holds cannot be checked)."""
        self.readable = self.writable = False
        self._error(
            f"round store {self.root} cannot be read ({e.strerror or e}); it is skipped for this run: "
            "every round is trained, none is published"
        )

    def _read_only(self, why: str) -> None:
        self.writable = False
        self._error(f"{why}: its rounds are reused, none is published by this run")

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str, log=None) -> Entry | None:
        """The entry published under `key`, or None: none yet, one that failed its checksum (reported and
        moved aside), or a store that cannot be read."""
        self._check()
        if not self.readable:
            return None
        folder = self.path(key)
        try:
            if not stat.S_ISDIR(os.stat(folder).st_mode):
                return None
            meta, data = (folder / ENTRY).read_bytes(), (folder / STATE).read_bytes()
        except FileNotFoundError:
            return None  # none yet (or moved aside by another reader just now)
        except OSError as e:
            self._unreadable(e)
            return None
        import torch

        try:
            meta = json.loads(meta)
            if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != FORMAT:
                raise ValueError(f"{ENTRY} is not this key's")
            if sha256(data) != meta.get("sha256"):
                raise ValueError(f"{STATE} fails its checksum")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            entry = Entry(
                key,
                int(meta["round"]),
                str(meta["first_run"]),
                state["model"],
                list(state["history"]),
                tuple(state["test"]),
                state.get("rewind"),
            )
        except Exception as e:
            self._error(
                f"round store entry {folder} is unusable ({type(e).__name__}: {e}); ignored, the round is "
                "trained again",
                log,
            )
            self._discard(folder)
            return None
        return entry

    def put(self, entry: Entry) -> bool:
        """Publish an entry; False when one stands already (another job published the key first), when this
        process is not the run's writer, or when the store cannot be written (read-only from then on)."""
        if not is_writer():
            return False
        self._check()
        target = self.path(entry.key)
        if not self.writable or target.is_dir():
            return False
        import torch

        buf = io.BytesIO()
        torch.save(
            {"model": entry.model, "history": entry.history, "test": tuple(entry.test), "rewind": entry.rewind}, buf
        )
        data = buf.getvalue()
        meta = {
            "format": FORMAT,
            "key": entry.key,
            "round": entry.round,
            "first_run": entry.first_run,
            "sha256": sha256(data),
            "bytes": len(data),
        }
        try:
            done = publish_folder(target, {STATE: data, ENTRY: json_bytes(meta)})
        except OSError as e:
            self._read_only(f"round store {self.root} becomes read-only ({e})")
            return False
        return done

    def _discard(self, folder: Path) -> None:
        if not self.writable:
            return
        aside = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.corrupt"
        try:
            os.rename(folder, aside)
        except OSError:
            return  # gone already (another reader moved it), or a store this run cannot write
        shutil.rmtree(aside, ignore_errors=True)

    def usage(self) -> dict:
        """{"entries", "bytes"} of the published entries (temporary folders of jobs still writing aside); a
        store that cannot be read counts what it can."""
        entries = size = 0
        try:
            shards = [s for s in self.root.iterdir() if s.is_dir() and not s.name.startswith(".")]
        except OSError:
            shards = []
        for shard in shards:
            try:
                for entry in shard.iterdir():
                    if entry.is_dir() and not entry.name.startswith("."):
                        entries += 1
                        size += sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            except OSError:
                continue
        return {"dir": str(self.root), "entries": entries, "bytes": size}


def describe(usage: dict) -> str:
    return f"round store {usage['dir']}: {usage['entries']} rounds, {usage['bytes'] / 2**20:.1f} MiB"
