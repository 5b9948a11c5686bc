"""A round store that reuses only what it can trust (phicenter/engine/roundstore.py, storetrust.py) and the
command that lists, checks and trims it (phicenter/store.py). Every store and key file here lies under a
temporary folder."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.cli import ROOT, compose_config, env
from tests.test_round_store import comparable, rounds_reused

from phicenter import store as store_command
from phicenter.config import ConfigError, settings
from phicenter.engine import loop, storetrust
from phicenter.engine import rundir as results
from phicenter.engine.roundstore import ENTRY, FORMAT, STATE, Entry, RoundStore
from phicenter.io import sha256

FAST = ["epochs=1", "prune.iterations=2", "threads=1", "strategy=mask1", "phi=0.01"]


@pytest.fixture(autouse=True, scope="module")
def key_a(tmp_path_factory) -> Path:
    """Key A, the one every run here uses unless it names another (the default lies in the home folder)."""
    path = tmp_path_factory.mktemp("key_a") / "round_store.key"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(storetrust.KEY_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def published(tmp_path_factory, key_a):
    """A store that one run filled (its three rounds), and the same run with the store off."""
    out = tmp_path_factory.mktemp("published")
    loop.run(compose_config(*FAST, f"round_store.dir={out / 'store'}"), out / "first")
    loop.run(compose_config(*FAST, "round_store.enabled=false"), out / "off")
    keys = [r["round_key"] for r in results.read_json(out / "first" / results.RESULTS)["rounds"]]
    return out, keys


def fresh_copy(published, tmp_path: Path) -> Path:
    out, _ = published
    shutil.copytree(out / "store", tmp_path / "store")
    return tmp_path / "store"


def run_on(store: Path, folder: Path, *extra: str) -> dict:
    return loop.run(compose_config(*FAST, f"round_store.dir={store}", *extra), folder)


def same_as_off(published, run: Path) -> bool:
    out, _ = published
    return comparable(run / results.RESULTS) == comparable(out / "off" / results.RESULTS)


def rewrite(folder: Path, edit=None, payload: bytes | None = None, secret: bytes | None = None) -> None:
    """An entry's state.pt edited (or replaced by `payload`) and its sha256 recomputed, as whoever can write
    the store can; re-signed only with `secret` (what a key holder's bug would publish)."""
    meta = json.loads((folder / ENTRY).read_text())
    if payload is None:
        state = torch.load(folder / STATE, weights_only=True)
        edit(state)
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = buf.getvalue()
    (folder / STATE).write_bytes(payload)
    meta.update(sha256=sha256(payload), bytes=len(payload))
    if secret is not None:
        meta = storetrust.sign(secret, meta)
    (folder / ENTRY).write_text(json.dumps(meta))


def first_float(model: dict) -> str:
    return next(k for k, t in model.items() if t.is_floating_point() and t.dim() > 1)


def store_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "round store" in r.getMessage()]


# ---------------------------------------------------------------- what is not reused


def test_an_edited_entry_is_not_reused(published, tmp_path, caplog):
    """Weights negated and the test accuracy set to 0.999, the sha256 recomputed: its MAC fails, so the round
    is trained, to the numbers of the run with the store off; the entry is moved aside and published anew."""
    out, keys = published
    store = fresh_copy(published, tmp_path)
    folder = RoundStore(store).path(keys[1])

    def negate(state):
        for t in state["model"].values():
            if t.is_floating_point():
                t.neg_()
        state["test"] = (state["test"][0], 0.999)

    rewrite(folder, negate)
    with caplog.at_level(logging.WARNING, logger="phicenter"):
        res = run_on(store, tmp_path / "second")
    assert res["status"] == "complete"
    assert same_as_off(published, tmp_path / "second")
    first = str((out / "first").resolve())
    assert rounds_reused(tmp_path / "second" / results.RESULTS) == [first, None, first]
    assert res["round_store"]["rejected"] == 1 and res["round_store"]["read"] == 2
    assert res["round_store"]["published"] == 1
    assert any("fails its MAC" in w for w in store_warnings(caplog))
    assert RoundStore(store).get(keys[1]).first_run == str((tmp_path / "second").resolve())


@pytest.mark.parametrize("what", ["wrong shape", "not finite", "history"])
def test_a_signed_entry_that_is_not_this_networks_round_does_not_cost_the_run(published, tmp_path, key_a, what):
    """Signed with the run's key (what a bug would publish), but of another shape, with a NaN, or without its
    epochs: rejected, counted, the round trained; never a failed run."""
    _, keys = published
    store = fresh_copy(published, tmp_path)

    def spoil(state):
        name = first_float(state["model"])
        if what == "wrong shape":
            state["model"][name] = state["model"][name][:-1].clone()
        elif what == "not finite":
            state["model"][name].view(-1)[0] = float("nan")
        else:
            state["history"] = []

    rewrite(RoundStore(store).path(keys[1]), spoil, secret=storetrust.read_key(key_a))
    res = run_on(store, tmp_path / "second")
    assert res["status"] == "complete" and res["round_store"]["rejected"] == 1
    assert rounds_reused(tmp_path / "second" / results.RESULTS)[1] is None
    assert same_as_off(published, tmp_path / "second")


class Payload:
    """Runs os.mkdir(marker) when unpickled by a loader that runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _planted(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": Payload(marker), "history": [], "test": (0.0, 1.0), "rewind": None}, buf)
    return buf.getvalue()


def test_a_pickle_planted_as_state_pt_never_runs(published, tmp_path, key_a):
    """A payload that creates a folder when unpickled, planted as state.pt and signed with the key (the worst
    case): the run and `verify` refuse it, and the folder is never made."""
    _, keys = published
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.is_dir()  # the payload is live: a plain unpickle runs it
    store, marker = fresh_copy(published, tmp_path), tmp_path / "marker"
    rewrite(RoundStore(store).path(keys[1]), payload=_planted(marker), secret=storetrust.read_key(key_a))
    res = run_on(store, tmp_path / "second")
    assert res["status"] == "complete" and res["round_store"]["rejected"] == 1
    assert same_as_off(published, tmp_path / "second")
    rewrite(RoundStore(store).path(keys[1]), payload=_planted(marker), secret=storetrust.read_key(key_a))
    assert store_command.main(["verify", "--dir", str(store)]) == 1
    assert not marker.exists()


# ---------------------------------------------------------------- the key


def test_the_key_file_is_made_0600_on_first_use(tmp_path):
    key_file = tmp_path / "home" / ".config" / "phicenter" / "round_store.key"
    entry = Entry("ab" + "0" * 62, 0, "run", {"w": torch.ones(3)}, [_row(0)], (0.5, 0.9))
    assert RoundStore(tmp_path / "store", key_file=str(key_file)).put(entry)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key_file.read_text().strip())) == storetrust.KEY_BYTES
    assert not list(key_file.parent.glob(".*"))  # no temporary left
    assert storetrust.load_key(key_file) == storetrust.read_key(key_file)  # made once, then read
    assert RoundStore(tmp_path / "store", key_file=str(key_file)).get(entry.key) is not None
    assert "key_id" in json.loads((RoundStore(tmp_path / "store").path(entry.key) / ENTRY).read_text())


def test_a_store_written_under_key_a_is_not_reused_under_key_b(published, tmp_path, caplog):
    """Key B's user trains every round (warned once, each rejection counted) and deletes nothing: the entries
    may be valid for key A's holders, whose next run reuses them all."""
    out, keys = published
    store = fresh_copy(published, tmp_path)
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="phicenter"):
        res = run_on(store, tmp_path / "b", f"round_store.key_file={tmp_path / 'key_b'}")
    assert res["status"] == "complete" and same_as_off(published, tmp_path / "b")
    assert rounds_reused(tmp_path / "b" / results.RESULTS) == [None, None, None]
    assert res["round_store"]["rejected"] == 3 and res["round_store"]["published"] == 0
    warned = store_warnings(caplog)
    assert len(warned) == 1 and "signed with another key" in warned[0], warned
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
    again = run_on(store, tmp_path / "a")
    assert again["round_store"]["read"] == 3 and again["round_store"]["rejected"] == 0


def test_an_entry_of_the_old_format_is_skipped_and_left(tmp_path):
    """Format 1 had no MAC: nobody can vouch for it, so it is not reused, and left for gc."""
    key_file, root = str(tmp_path / "k"), tmp_path / "store"
    entry = Entry("cd" + "0" * 62, 0, "run", {"w": torch.ones(3)}, [_row(0)], (0.5, 0.9))
    assert RoundStore(root, key_file=key_file).put(entry)
    folder = RoundStore(root).path(entry.key)
    meta = json.loads((folder / ENTRY).read_text())
    old = {k: v for k, v in meta.items() if k not in ("key_id", "mac")} | {"format": 1}
    (folder / ENTRY).write_text(json.dumps(old))
    rs = RoundStore(root, key_file=key_file)
    assert rs.get(entry.key) is None and rs.rejected == 1 and folder.is_dir()
    assert "format 1" in rs.errors[0] and FORMAT == 2


# ---------------------------------------------------------------- a store shared by a group


def _row(r: int) -> dict:
    return {"round": r, "epoch": 0, "train_loss": 1.0, "train_acc": 0.5}


def _modes(root: Path, key: str) -> tuple[int, int, int]:
    folder = RoundStore(root).path(key)
    return tuple(stat.S_IMODE(p.stat().st_mode) for p in (folder.parent, folder, folder / STATE))


def test_a_group_store_stays_group_writable_below(tmp_path):
    """A store folder made group-writable and setgid (chmod 2775): the shard and entry folders it makes are
    too, and the files readable by the group, so every user of the group can publish. round_store.mode sets
    them whatever the store folder's; a private store stays as the umask makes it."""
    key_file = str(tmp_path / "k")
    entry = Entry("ef" + "0" * 62, 0, "run", {"w": torch.ones(3)}, [_row(0)], (0.5, 0.9))
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o2775)
    assert RoundStore(group, key_file=key_file).put(entry)
    assert _modes(group, entry.key) == (0o2775, 0o2775, 0o664)
    assert RoundStore(tmp_path / "set", key_file=key_file, mode="2770").put(entry)
    assert _modes(tmp_path / "set", entry.key) == (0o2770, 0o2770, 0o660)
    plain = tmp_path / "plain"
    plain.mkdir()
    plain.chmod(0o755)
    assert RoundStore(plain, key_file=key_file).put(entry)
    assert _modes(plain, entry.key) == (0o755, 0o755, 0o644)


def test_round_store_mode_is_checked():
    assert settings(compose_config("round_store.mode=2775")).round_store.mode == 2775
    with pytest.raises(ConfigError, match="round_store.mode must be a folder mode in octal digits"):
        settings(compose_config("round_store.mode=2795"))


# ---------------------------------------------------------------- python -m phicenter.store


def _small_store(root: Path, key_file: str) -> list[Entry]:
    """Three entries, the first the largest, last used 3, 2 and 1 days ago."""
    es = [
        Entry(f"{i}a" + "0" * 62, 0, f"run{i}", {"w": torch.ones(4000 - 1000 * i)}, [_row(0)], (0.5, 0.9))
        for i in range(3)
    ]
    rs = RoundStore(root, key_file=key_file)
    for i, e in enumerate(es):
        assert rs.put(e)
        t = time.time() - (3 - i) * 86400
        os.utime(rs.path(e.key), (t, t))
    return es


def _size(root: Path, e: Entry) -> int:
    return sum(f.stat().st_size for f in RoundStore(root).path(e.key).iterdir())


def test_store_ls_and_verify(tmp_path, capsys):
    key_file, root = str(tmp_path / "k"), tmp_path / "store"
    es = _small_store(root, key_file)
    assert store_command.main(["ls", "--dir", str(root), "--key-file", key_file]) == 0
    out = capsys.readouterr().out
    assert all(e.key in out for e in es) and "3 entries" in out and "3d" in out and "run2" in out
    assert store_command.main(["verify", "--dir", str(root), "--key-file", key_file]) == 0
    assert "3 entries checked, 0 bad" in capsys.readouterr().out
    spoiled = RoundStore(root).path(es[1].key)
    meta = json.loads((spoiled / ENTRY).read_text())
    (spoiled / ENTRY).write_text(json.dumps(meta | {"round": 7}))
    assert store_command.main(["verify", "--dir", str(root), "--key-file", key_file]) == 1
    out = capsys.readouterr().out
    assert f"{spoiled}: ValueError: entry.json fails its MAC" in out and "1 bad" in out
    assert store_command.main(["verify", "--dir", str(root), "--key-file", str(tmp_path / "other")]) == 2
    assert "no key file" in capsys.readouterr().err


def test_store_gc_removes_the_least_recently_used_and_what_killed_publishers_left(tmp_path, capsys):
    key_file, root = str(tmp_path / "k"), tmp_path / "store"
    es = _small_store(root, key_file)
    assert RoundStore(root, key_file=key_file).get(es[0].key) is not None  # reused now: the most recent
    stale, fresh, aside = root / "0a" / ".x.tmp", root / "1a" / ".y.tmp", root / "2a" / ".z.corrupt"
    for p in (stale, fresh, aside):
        p.mkdir()
        (p / STATE).write_bytes(b"partial")
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    keep = _size(root, es[0]) + _size(root, es[2])
    assert store_command.main(["gc", "--dir", str(root), "--max-size", str(keep)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert [RoundStore(root).path(e.key).is_dir() for e in es] == [True, False, True]
    assert not stale.exists() and not aside.exists() and fresh.exists()
    assert store_command.main(["gc", "--dir", str(root), "--max-size", "0"]) == 0
    assert not [p for p in root.glob("*/*") if not p.name.startswith(".")]


def test_store_command_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "store").mkdir()
    for args, says in (
        (["gc", "--dir", str(tmp_path / "store"), "--max-size", "10X"], "--max-size: give a size such as 10G"),
        (["gc", "--dir", str(tmp_path / "store")], "required: --max-size"),
        (["ls", "--dir", str(tmp_path / "nowhere")], "no round store there"),
        (["prune"], "invalid choice"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "phicenter.store", *args], cwd=ROOT, env=env(), capture_output=True, text=True
        )
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("phicenter store: error:") and says in lines[0]
