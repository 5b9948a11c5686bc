"""The round store: each distinct trained round once, under its round key (engine.reuse).

`<dir>/<key[:2]>/<key>/` holds `state.pt` (the trained state, the round's epoch history and test metrics, and
for round 0 of a late-rewinding run its rewind point) and `entry.json` (the key, the round, the run folder
that trained it first, the sha256 of state.pt, and the key id and MAC that sign it: engine.storetrust). An
entry is written into a temporary folder beside it and published with one os.rename: a reader sees a whole
entry or none, and of two jobs that publish one key the first rename stands and the other drops its copy
(phicenter.io.publish_folder). Only the first process of a run writes.

An entry is reused only when it is signed with the run's key and holds what the run would have trained in
form (storetrust.check_state: the network's tensor names, shapes and dtypes, finite values, a well-formed
history). Any other is *rejected*: the round is trained, the run warned once and the count kept for its
results.json. What happens to a rejected entry depends on who can judge it. One this key signed (it claims
this key's id) that fails its MAC, its checksum, its load or its checks is of no use to anyone who holds the
key: it is moved aside and removed, so the round is published anew. One signed with another key, or not
signed (an older format, not an entry), is skipped and left where it is: it may be valid for whoever holds
its key, and a user must not delete another team's entries; `python -m phicenter.store gc` clears what
nobody uses.

Folders the store makes take the store folder's permissions (or `round_store.mode`): a store made group-
writable and setgid (chmod 2775) stays so below, every user of the group can publish into it. A store that
cannot be read (or whose key cannot be read or made) is skipped, and one that cannot be written is read-only
for the run, each with one warning: the store never costs a run, which then trains what it could not reuse.

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
from phicenter.engine import storetrust
from phicenter.engine.rundir import is_writer
from phicenter.engine.storetrust import Untrusted
from phicenter.io import json_bytes, make_folder, publish_folder, sha256, writable
from phicenter.spec import make

ENTRY = "entry.json"
STATE = "state.pt"
FORMAT = 2  # 2: signed (key_id, mac)
STORE_ENV = "PHICENTER_ROUND_STORE"
CORRUPT, REMOVED = ".corrupt", ".removed"  # the suffixes of entries moved aside before they are removed


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


def store_settings(cfg) -> schema.RoundStore | None:
    """The round_store settings of a config, or None when `round_store.enabled=false`. Only the round_store
    group is read, so a multirun's own config will do."""
    node = cfg.round_store
    node = node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True)
    rs = make(schema.RoundStore, node, "round_store.")
    return rs if rs.enabled else None


def default_dir() -> Path:
    """The store of a run at the default settings: $PHICENTER_ROUND_STORE, else round_store.dir's default
    (conf/config.yaml reads the variable the same way)."""
    return Path(os.environ.get(STORE_ENV) or schema.RoundStore.dir).expanduser().absolute()


def store_dir(cfg) -> Path | None:
    """The store of a config (`round_store.dir`, relative to the working directory), or None when off."""
    rs = store_settings(cfg)
    return Path(rs.dir).expanduser().resolve() if rs is not None else None


def open_store(cfg, log=print) -> RoundStore | None:
    """The RoundStore a run of `cfg` uses (its dir, key file and mode), or None when off."""
    rs = store_settings(cfg)
    if rs is None:
        return None
    return RoundStore(Path(rs.dir).expanduser().resolve(), log=log, key_file=rs.key_file, mode=rs.mode)


def check_entry(key: str, meta: bytes, data: bytes, secret: bytes, like: dict | None = None) -> Entry:
    """The entry of round key `key` from its files' bytes (entry.json's, state.pt's), checked: Untrusted when
    another key signed it or none did (an older format, not an entry); ValueError (or any error of its load)
    when this key's MAC, its checksum, its load or `check_state` (against `like`, the network's state_dict,
    when given) fails."""
    import torch

    try:
        meta = json.loads(meta)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise Untrusted(f"{ENTRY} is not an entry's")
    if meta.get("format") != FORMAT:
        raise Untrusted(f"written in format {meta.get('format')!r}; this phicenter reads {FORMAT}")
    storetrust.verify(secret, meta)
    if meta.get("key") != key:
        raise ValueError(f"{ENTRY} is not this key's")
    if sha256(data) != meta.get("sha256"):
        raise ValueError(f"{STATE} fails its checksum")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    storetrust.check_state(state, meta.get("round"), like)
    return Entry(
        key,
        int(meta["round"]),
        str(meta["first_run"]),
        state["model"],
        list(state["history"]),
        tuple(state["test"]),
        state.get("rewind"),
    )


class RoundStore:
    """One store, as one run uses it. It never costs the run: a store that cannot be read is skipped, one that
    cannot be written (full, read-only, over quota) becomes read-only, each said once in a warning and kept in
    `errors` for the run's results.json; the entries it rejects are counted in `rejected`, the first said in a
    warning (engine.reuse counts what each run read, published and rejected). `key_file`: the setting
    (null: storetrust.key_file's default); `mode`: the folders' (null: the store folder's)."""

    def __init__(self, root: str | Path, log=print, key_file: str | None = None, mode: int | str | None = None):
        self.root, self.log = Path(root), log
        self.key_file = storetrust.key_file(key_file)
        self.mode = None if mode is None else schema.parse_mode(mode)
        self.secret: bytes | None = None
        self.readable = self.writable = True
        self.checked = False
        self.errors: list[str] = []
        self.rejected = 0

    def _error(self, message: str, log=None) -> None:
        self.errors.append(message)
        (log or self.log)(message)

    def _check(self) -> None:
        """Once, before the first entry is read or published: can the store be read, and written? And its key?"""
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
        try:
            self.secret = storetrust.load_key(self.key_file)
        except (OSError, ValueError) as e:
            self.readable = self.writable = False
            self._error(
                f"round store {self.root} is skipped for this run: its key file {self.key_file} cannot be used "
                f"({e}); every round is trained, none is published"
            )
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

    def get(self, key: str, log=None, like: dict | None = None) -> Entry | None:
        """The entry published under `key`, checked against `like` (the network's state_dict) when given, or
        None: none yet, a rejected one (see the module), or a store that cannot be read. A reused entry's
        folder is touched (its mtime: last use, which `phicenter.store gc` removes the oldest by)."""
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
        try:
            entry = check_entry(key, meta, data, self.secret, like)
        except Untrusted as e:
            self._reject(f"round store entry {folder} is not trusted ({e}); skipped, left in place", log)
            return None
        except Exception as e:
            self._reject(f"round store entry {folder} is unusable ({type(e).__name__}: {e}); ignored", log)
            self._discard(folder)
            return None
        self._touch(folder)
        return entry

    def _reject(self, message: str, log=None) -> None:
        """Counted; the first of a run is said (and kept in `errors`), the others only counted."""
        self.rejected += 1
        if self.rejected == 1:
            self._error(
                f"{message}: the round is trained again (further rejected entries are only counted, in "
                "results.json's round_store.rejected)",
                log,
            )

    def _touch(self, folder: Path) -> None:
        """Mark an entry used now (best effort: a read-only store keeps its times)."""
        if self.writable:
            try:
                os.utime(folder)
            except OSError:
                pass

    def _modes(self) -> int:
        """The mode of the folders this store makes: `round_store.mode`, else the store folder's own
        (setgid kept, sticky and setuid not)."""
        if self.mode is not None:
            return self.mode
        return stat.S_IMODE(os.stat(self.root).st_mode) & ~(stat.S_ISVTX | stat.S_ISUID)

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
        meta = storetrust.sign(self.secret, meta)
        try:
            if self.mode is not None:
                make_folder(self.root, self.mode)
            else:
                self.root.mkdir(parents=True, exist_ok=True)
            done = publish_folder(target, {STATE: data, ENTRY: json_bytes(meta)}, mode=self._modes())
        except OSError as e:
            self._read_only(f"round store {self.root} becomes read-only ({e})")
            return False
        return done

    def _discard(self, folder: Path) -> None:
        if not self.writable:
            return
        remove(folder, CORRUPT)

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


def remove(folder: Path, suffix: str = REMOVED) -> bool:
    """Remove an entry at once for its readers: renamed aside (`.<key>.<random><suffix>`), then deleted (what
    cannot be deleted stays aside, for `phicenter.store gc`). False when it was gone already or cannot be
    moved."""
    aside = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}{suffix}"
    try:
        os.rename(folder, aside)
    except OSError:
        return False  # gone already (another reader moved it), or a store this run cannot write
    shutil.rmtree(aside, ignore_errors=True)
    return True


def describe(usage: dict) -> str:
    return f"round store {usage['dir']}: {usage['entries']} rounds, {usage['bytes'] / 2**20:.1f} MiB"
