"""What the round store trusts (engine.roundstore): an entry signed with a key the store does not hold, and
checked against the network before it is reused.

The key is 32 random bytes, written in hex in a file outside the store: `round_store.key_file`, by default
(null) `$PHICENTER_ROUND_STORE_KEY`, else ~/.config/phicenter/round_store.key. The first run that finds none
makes it, mode 0600, atomically (of two runs that make it at once, one file stands and both use it). Users
who share a store share its key file (a copy each, or one file the group reads). An entry's entry.json holds
`key_id`, which key signed it (an HMAC of a fixed label, so it says nothing of the key), and `mac`, an
HMAC-SHA256 under the key of its other fields: the round key, the round, the first run, the format, and
state.pt's sha256 and size. The reader recomputes that sha256 from state.pt's bytes, so the MAC covers the
files and the key they are stored under.

Whoever can write the store but does not hold the key can delete an entry, or spoil one, so that its round
is trained again; they cannot make a run reuse anything the key's holders did not publish: an entry edited
(weights, metrics) or written under another key fails its MAC. What a MAC cannot catch, a bug or a tool that
published nonsense under the key, is checked before an entry is used (`check_state`): tensor names, shapes
and dtypes those of the network, every float finite, the epoch history and test metrics well formed. The
payload is read by torch.load(weights_only=True), which builds tensors and plain containers and runs no code.

Plain Python at import, like engine.roundstore (torch is imported where a state is checked).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
from numbers import Real
from pathlib import Path

from phicenter.io import write_file

KEY_ENV = "PHICENTER_ROUND_STORE_KEY"
DEFAULT_KEY_FILE = "~/.config/phicenter/round_store.key"
KEY_BYTES = 32
MIN_KEY_BYTES = 16  # a team's own key (openssl rand -hex 32) may be shorter, not below 128 bits
MAC_FIELD, ID_FIELD = "mac", "key_id"
_ID_LABEL = b"phicenter round store key id"


class Untrusted(ValueError):
    """An entry not signed by this key (another key, an older format, not an entry): not ours to judge, so it
    is skipped and left where it is; it may be valid for whoever holds its key."""


def key_file(setting: str | None = None) -> Path:
    """The key file `round_store.key_file` names; null: $PHICENTER_ROUND_STORE_KEY, else DEFAULT_KEY_FILE."""
    chosen = setting if setting is not None else os.environ.get(KEY_ENV) or DEFAULT_KEY_FILE
    return Path(chosen).expanduser().absolute()


def _parse(text: str, path: Path) -> bytes:
    hexed = text.strip()
    try:
        key = bytes.fromhex(hexed)
    except ValueError:
        key = b""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path} is not a round store key (at least {2 * MIN_KEY_BYTES} hex digits)")
    return key


def read_key(path: Path) -> bytes:
    """The key in `path`; FileNotFoundError when there is none, ValueError when the file holds no key."""
    return _parse(Path(path).read_text(), Path(path))


def load_key(path: Path) -> bytes:
    """The key in `path`, made there (0600) when there is none yet. OSError when it can be neither read nor
    made, ValueError when the file holds no key."""
    path = Path(path)
    try:
        return read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    write_file(tmp, secrets.token_bytes(KEY_BYTES).hex() + "\n", mode=0o600)
    try:
        os.link(tmp, path)  # never replaces: of two runs making it at once, one file stands and both read it
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return read_key(path)


def key_id(key: bytes) -> str:
    """Which key signed an entry, without revealing it."""
    return hmac.new(key, _ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _signed_bytes(meta: dict) -> bytes:
    fields = {k: v for k, v in meta.items() if k != MAC_FIELD}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, meta: dict) -> dict:
    """`meta` with its key id and MAC."""
    meta = {**meta, ID_FIELD: key_id(key)}
    return {**meta, MAC_FIELD: hmac.new(key, _signed_bytes(meta), hashlib.sha256).hexdigest()}


def verify(key: bytes, meta: dict) -> None:
    """Untrusted when another key signed `meta` (or none did); ValueError when this key's MAC fails (edited or
    damaged: nobody who holds this key can use it)."""
    if meta.get(ID_FIELD) != key_id(key):
        raise Untrusted(
            "signed with another key (a store's users share its key file, round_store.key_file)"
            if meta.get(ID_FIELD)
            else "not signed"
        )
    mac = meta.get(MAC_FIELD)
    good = hmac.new(key, _signed_bytes(meta), hashlib.sha256).hexdigest()
    if not isinstance(mac, str) or not hmac.compare_digest(mac, good):
        raise ValueError("entry.json fails its MAC: edited, or damaged")


# ---------------------------------------------------------------- the payload


def _number(v, what: str, finite: bool = True) -> None:
    if isinstance(v, bool) or not isinstance(v, Real) or (finite and not math.isfinite(v)):
        raise ValueError(f"{what} is {v!r}, not a finite number")


def _tensors(state, like: dict | None, what: str) -> None:
    """A dict of tensors, each float one finite; with `like` (the network's state_dict), the same names,
    shapes and dtypes."""
    import torch

    if not isinstance(state, dict) or not state or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ValueError(f"{what} is not a dict of tensors")
    if like is not None:
        missing, extra = sorted(set(like) - set(state)), sorted(set(state) - set(like))
        if missing or extra:
            raise ValueError(f"{what} is not this network's (missing {missing[:3]}, unexpected {extra[:3]})")
        for name, t in like.items():
            got = state[name]
            if tuple(got.shape) != tuple(t.shape) or got.dtype != t.dtype:
                raise ValueError(
                    f"{what} {name} is {got.dtype} {tuple(got.shape)}, the network's {t.dtype} {tuple(t.shape)}"
                )
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} {name} is not finite")


def check_state(state, round_index: int, like: dict | None = None) -> None:
    """ValueError, naming what is wrong, unless `state` (a state.pt's content) is a trained round that a run
    can take: `model` and `rewind` (null, or round 0's rewind point) as `_tensors` checks them, `history` a
    list of epoch rows of this round with finite training loss and accuracy, `test` a (loss, accuracy) with
    the accuracy in [0, 1]."""
    if not isinstance(state, dict) or not {"model", "history", "test"} <= set(state):
        raise ValueError("state.pt is not a trained round (model, history, test)")
    _tensors(state["model"], like, "model")
    if state.get("rewind") is not None:
        _tensors(state["rewind"], like, "rewind point")
    history = state["history"]
    if not isinstance(history, list) or not history:
        raise ValueError("the epoch history is empty or not a list")
    for row in history:
        if not isinstance(row, dict) or not all(isinstance(k, str) for k in row):
            raise ValueError("an epoch row is not a dict")
        if (
            row.get("round") != round_index
            or isinstance(row.get("epoch"), bool)
            or not isinstance(row.get("epoch"), int)
        ):
            raise ValueError(
                f"an epoch row is not one of round {round_index}'s ({row.get('round')!r}, {row.get('epoch')!r})"
            )
        for k in ("train_loss", "train_acc"):
            _number(row.get(k), f"epoch {row['epoch']}'s {k}")
        for k, v in row.items():
            if k not in ("round", "epoch"):
                _number(v, f"epoch {row['epoch']}'s {k}", finite=False)
    test = state["test"]
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise ValueError("the test metrics are not (loss, accuracy)")
    _number(test[0], "the test loss", finite=False)  # measured, even where it overflowed
    _number(test[1], "the test accuracy")
    if not 0.0 <= test[1] <= 1.0:
        raise ValueError(f"the test accuracy is {test[1]!r}, not in [0, 1]")
