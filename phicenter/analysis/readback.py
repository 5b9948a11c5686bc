"""A completed round of a run read back from its folder by a command (the export): results.json, checked to
hold what the command reads of it, the round's entry, and its round checkpoint, checked against each other.

Whatever is wrong (a hand-edited, truncated or foreign results.json, a checkpoint of another run) is one line
naming the file and what is wrong, raised as BadRecord before any work, never a KeyError met half-way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from phicenter.engine.cohort import PACK_SUMMARY
from phicenter.engine.rundir import CKPT_DIR, RESULTS, checkpoint_path

KINDS = {  # a JSON value's type, or a shape's wanted type(s), in words
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    type(None): "null",
    int: "a whole number",
    (int, float): "a number",
    (str, int, float): "a name or a number",
}


class BadRecord(ValueError):
    """One line: the file, and what is wrong with it."""


@dataclass
class Round:
    """One completed round of a run: its folder, record, round entry and checkpoint."""

    run: Path
    round: int
    record: dict
    entry: dict
    checkpoint: Path
    state: dict
    checkpoint_bytes: bytes


def kind(value) -> str:
    """What a JSON value is, in words ("a list", "null")."""
    return KINDS.get(type(value), "a number")


def whole(value) -> bool:
    """A round number: an int, not a boolean, not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def problem(record, shape: dict) -> str | None:
    """What makes a parsed results.json one its reader cannot read, in words; None when nothing does.
    `shape`: {"config.model.name": str, ...}, dotted keys (a key's parents before it) and the type(s) each value
    must have (a boolean is never a number). Each round entry must be an object with its round number, and its
    `layers`, when given, an object of objects, as the engine writes them."""
    if not isinstance(record, dict):
        return f"it holds {kind(record)}, not an object"
    for key, want in shape.items():
        *parents, name = key.split(".")
        node = record
        for part in parents:
            node = node[part]
        if name not in node:
            return f"no {key}"
        if not isinstance(node[name], want) or isinstance(node[name], bool):
            return f"{key} is {kind(node[name])}, not {KINDS.get(want, 'what it should be')}"
    for i, entry in enumerate(record.get("rounds") if isinstance(record.get("rounds"), list) else ()):
        if not isinstance(entry, dict):
            return f"rounds[{i}] is {kind(entry)}, not a round's entry (an object)"
        if not whole(entry.get("round")):
            return f"rounds[{i}] has no round number (round: {entry.get('round')!r})"
        layers = entry.get("layers") or {}
        if not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
            return f"rounds[{i}].layers is not an object of layers"
    return None


def read(path: Path, shape: dict) -> dict:
    """The run record at `path`, checked against `shape` (`problem`)."""
    try:
        record = json.loads(path.read_bytes())
    except OSError as e:
        raise BadRecord(f"{path}: cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # a UnicodeDecodeError too
        raise BadRecord(f"{path}: not valid JSON, truncated or damaged ({e})") from None
    why = problem(record, shape)
    if why is not None:
        raise BadRecord(f"{path}: not a phicenter run's results ({why})")
    return record


def rounds(record: dict) -> dict[int, dict]:
    """The round entries of a record (or of a checkpoint's own list) by round number."""
    return {r["round"]: r for r in record.get("rounds") or [] if isinstance(r, dict) and whole(r.get("round"))}


def _runs_below(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and (p / RESULTS).is_file())


def locate(arg: str, round_index: int | None, shape: dict) -> Round:
    """The completed round `round_index` (None: the last one) of run folder `arg`, its results.json checked
    against `shape` and its checkpoint read and checked against results.json. BadRecord for anything else."""
    path = Path(arg)
    if not path.exists():
        raise BadRecord(f"{path}: no such folder")
    if not path.is_dir():
        raise BadRecord(f"{path}: give a run folder (the one holding {RESULTS}), not a file")
    if not (path / RESULTS).is_file():
        runs = _runs_below(path)
        if runs:
            what = "a job of several variants (pack=true)" if (path / PACK_SUMMARY).is_file() else "a folder of runs"
            more = f" and {len(runs) - 3} more" if len(runs) > 3 else ""
            raise BadRecord(
                f"{path}: {what}, not one run; export one of its runs: "
                f"{', '.join(str(path / r) for r in runs[:3])}{more}"
            )
        raise BadRecord(f"{path}: not a phicenter run folder (no {RESULTS})")
    record = read(path / RESULTS, shape)
    done = rounds(record)
    if round_index is None:
        if not done:
            raise BadRecord(f"{path}: no round is complete yet (status {record.get('status')})")
        round_index = max(done)
    if round_index not in done:
        span = f"0..{max(done)}" if len(done) > 1 else str(max(done, default=0))
        which = f"completed: {span}" if done else "no round is complete yet"
        raise BadRecord(f"{path}: round {round_index} is not complete ({which}; status {record.get('status')})")
    ckpt = checkpoint_path(path, round_index)
    if not ckpt.is_file():
        kept = sorted(p.stem.split("_")[1] for p in (path / CKPT_DIR).glob("round_[0-9][0-9][0-9].pt"))
        raise BadRecord(
            f"{path}: the checkpoint of round {round_index} was not kept (kept: "
            f"{', '.join(str(int(k)) for k in kept) or 'none'}; checkpoint.keep_all=true keeps every round)"
        )
    raw = ckpt.read_bytes()
    state = _checked_state(load_torch(raw, ckpt), ckpt, round_index, done[round_index])
    return Round(path, round_index, record, done[round_index], ckpt, state, raw)


def _checked_state(state, ckpt: Path, round_index: int, entry: dict) -> dict:
    """A round checkpoint's contents, refused unless it is the round results.json records."""
    if (
        not isinstance(state, dict)
        or state.get("round") != round_index
        or not isinstance(state.get("model"), dict)
        or not isinstance(state.get("rounds"), list)
    ):
        raise BadRecord(f"{ckpt}: corrupt, or not a round checkpoint of round {round_index}")
    own = rounds({"rounds": state["rounds"]}).get(round_index) or {}
    if own.get("round_key") != entry.get("round_key") or own.get("test_acc") != entry.get("test_acc"):
        raise BadRecord(
            f"{ckpt}: its round {round_index} is not the round {RESULTS} records (the folder's run was started over?)"
        )
    return state


def load_torch(data: bytes, path: Path):
    """A checkpoint's contents (tensors and plain values only); BadRecord when they cannot be read."""
    import io

    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise BadRecord(f"{path}: corrupt, or not a phicenter checkpoint ({type(e).__name__})") from None
