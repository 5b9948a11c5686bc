"""Each distinct round trained once (docs/method.md, "Each distinct round is trained once").

A round's training is fixed by its round key: the whole state at its start (every parameter, buffer, mask and
fill, after the round boundary), the settings that shape training, the data, the seed and the round index.
phi and the strategy act only through that state, so they stay out of the key. Before a round trains, the
loop computes each member's key; members whose key is in the round store take the trained state and metrics
from it, members of a cohort with equal keys train as one (the first of them, the representative) and the
others copy its result. Each round trained is then published under its key.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass

import torch

from phicenter.config import flatten, recorded_config, shapes_training
from phicenter.engine.roundstore import Entry, RoundStore, store_dir

KEY_VERSION = 1
# what acts on a round only through the state at its start (the round boundary made it)
OUT_OF_KEY = ("phi", "phi_scale", "strategy", "prune", "reinit")
SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std")

_fingerprints: dict[int, str] = {}


def training_settings(cfg) -> dict:
    """The settings of a config that shape a round's training, flat and sorted: the optimizer, schedule,
    epochs, batch size, precision, the model and the dataset with its split and augmentation, the seed,
    rewind.epoch (round 0 records theta_k); never an execution setting (phicenter.config.EXECUTION_KEYS)."""
    flat = flatten(recorded_config(cfg, 0.0))
    return {k: flat[k] for k in sorted(flat) if shapes_training(k) and k.split(".")[0] not in OUT_OF_KEY}


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)


def data_fingerprint(splits) -> str:
    """sha256 of every split's images and labels and of the normalisation statistics (once per Splits)."""
    fp = _fingerprints.get(id(splits))
    if fp is None:
        h = hashlib.sha256(f"classes={splits.num_classes}".encode())
        for name in SPLITS:
            _update(h, name, getattr(splits, name))
        fp = _fingerprints[id(splits)] = h.hexdigest()
        weakref.finalize(splits, _fingerprints.pop, id(splits), None)
    return fp


def state_digest(h, state: dict) -> None:
    for name in sorted(state):
        _update(h, name, state[name])


class RoundKeys:
    """The round keys of one cohort's members (they share every setting in the key)."""

    def __init__(self, cfg, splits, device_type: str):
        header = {"version": KEY_VERSION, "settings": training_settings(cfg), "data": data_fingerprint(splits),
                  "device": device_type, "torch": torch.__version__}
        self.header = json.dumps(header, sort_keys=True, separators=(",", ":"), default=str).encode()

    def __call__(self, net: torch.nn.Module, round_index: int) -> str:
        h = hashlib.sha256(self.header)
        h.update(f"|round={int(round_index)}|".encode())
        state_digest(h, net.state_dict())
        return h.hexdigest()


@dataclass
class Source:
    """Where a member's round comes from: trained here (`rep`: its index among the members trained), copied
    from a representative of the cohort, or taken from the store (`entry`)."""
    key: str
    rep: int | None = None
    entry: Entry | None = None
    reused_from: str | None = None     # null: this run trained it


@dataclass
class Outcome:
    """A member's trained round, wherever it came from."""
    key: str
    history: list
    test: tuple
    reused_from: str | None
    diverged: str | None = None


class Reuse:
    """Round keys, the store and who trains what, for one cohort. `round_store.enabled=false`: every member
    trains every round (keys are still recorded). `lookup=false` (a multi-process run, whose ranks must all
    decide alike) never reads the store, only publishes to it."""

    def __init__(self, cfg, splits, device_type: str, lookup: bool = True, log=print):
        self.keys = RoundKeys(cfg, splits, device_type)
        root = store_dir(cfg)
        self.store = RoundStore(root, log=log) if root is not None else None
        self.lookup, self.log = lookup and self.store is not None, log
        self.rewind_epoch = int((cfg.get("rewind") or {}).get("epoch") or 0)

    def plan(self, members: list, r: int) -> tuple[list, list[Source]]:
        """(the members to train, each member's Source): one representative per distinct key not in the
        store."""
        trained, sources, first = [], [], {}
        seen = self._seen()
        for m in members:
            key = self.keys(m.net, r)
            if self.store is None or key not in first:
                entry = self.store.get(key, self.log) if self.lookup else None
                if entry is not None:
                    src = Source(key, entry=entry, reused_from=entry.first_run)
                else:
                    src = Source(key, rep=len(trained))
                    trained.append(m)
                first[key] = src
            else:
                src = first[key]
                if src.entry is None:
                    src = Source(key, rep=src.rep, reused_from=str(trained[src.rep].folder.path.resolve()))
            sources.append(src)
        self._note_errors(members, seen)
        return trained, sources

    def take(self, members: list, sources: list[Source], trained: list, module, r: int, epochs: int) -> list:
        """Each member's Outcome; a member that did not train gets the trained state (and, in round 0 of a
        late-rewinding run, the rewind point) and replays the epoch rows to its TensorBoard events."""
        out = []
        for m, src in zip(members, sources):
            if src.entry is not None:
                e = src.entry
                res = Outcome(src.key, [dict(row) for row in e.history], tuple(e.test), src.reused_from)
                state, rewind = e.model, e.rewind
            else:
                rep = trained[src.rep]
                res = Outcome(src.key, [dict(row) for row in module.history[src.rep]],
                              tuple(module.last_test[src.rep]), src.reused_from, module.diverged.get(src.rep))
                state = rep.net.state_dict() if rep is not m else None
                rewind = rep.imp.rewind if r == 0 and self.rewind_epoch and rep is not m else None
            if src.entry is not None:
                self.usage(m)["read"] += 1
            if src.reused_from is not None and res.diverged is None:
                m.net.load_state_dict(state)
                if rewind is not None:
                    m.imp.set_rewind(rewind)
                    m.folder.save_rewind(m.imp.rewind)
                if m.recorder is not None:
                    for row in res.history:
                        m.recorder.epoch(row, step=r * epochs + row["epoch"])
            out.append(res)
        return out

    def publish(self, members: list, outcomes: list[Outcome], r: int) -> None:
        """Each round trained here (and not diverged), under its key, once."""
        if self.store is None:
            return
        seen = self._seen()
        for m, res in zip(members, outcomes):
            if res.reused_from is not None or res.diverged is not None:
                continue
            rewind = m.imp.rewind if r == 0 and self.rewind_epoch else None
            if self.store.put(Entry(res.key, r, str(m.folder.path.resolve()), _cpu(m.net.state_dict()),
                                    res.history, res.test, None if rewind is None else _cpu(rewind))):
                self.usage(m)["published"] += 1
        self._note_errors(members, seen)

    def usage(self, m) -> dict:
        """What the store did for member m, its results.json `round_store`: its dir (null when off), the
        rounds read from it and published to it, and the store's errors (a relaunch carries the counts on)."""
        rec = m.record.get("round_store")
        if rec is None:
            before = (m.folder.read() or {}).get("round_store") or {}
            rec = m.record["round_store"] = {
                "dir": None if self.store is None else str(self.store.root),
                "read": int(before.get("read", 0)), "published": int(before.get("published", 0)),
                "errors": list(before.get("errors") or [])}
        return rec

    def _seen(self) -> int:
        return len(self.store.errors) if self.store is not None else 0

    def _note_errors(self, members: list, seen: int) -> None:
        """Each member's record of the store gets the errors met since `seen` (the cohort shares the store)."""
        for m in members:
            self.usage(m)["errors"] += self.store.errors[seen:] if self.store is not None else []


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu") for k, v in state.items()}
