"""`python -m phicenter.store {ls,verify,gc} [--dir DIR]`: the round store (engine.roundstore) listed, checked
and trimmed.

- `ls`: every entry, most recently used first: its age (since a run last reused it, else since it was
  published), size, round, whether this key signed it, its round key and the run that trained it first.
- `verify`: every entry checked as a run checks it before reuse (engine.storetrust: its MAC under
  --key-file, its checksum, its load, its form); prints the bad ones, exit code 1 when there are any.
- `gc --max-size SIZE`: removes the least recently used entries until the store holds at most SIZE (10G,
  500M; K, M, G and T are powers of 1024), and what is left of publishers that were killed (temporary
  folders older than a day) and of entries a run moved aside.

--dir: default $PHICENTER_ROUND_STORE, else outputs/round_store (round_store.dir's default). --key-file:
default $PHICENTER_ROUND_STORE_KEY, else ~/.config/phicenter/round_store.key (round_store.key_file's); never
made here. Bad input is one line and exit code 2. gc may run beside jobs that use the store: an entry is
renamed aside before it is deleted, so a run reads it whole or not at all (and then trains its round).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from phicenter.engine import roundstore, storetrust
from phicenter.engine.roundstore import CORRUPT, ENTRY, REMOVED, STATE
from phicenter.engine.storetrust import Untrusted

PROG = "phicenter store"  # as argparse and every error line name it (`python -m phicenter.store` too)
STALE_SECONDS = 24 * 3600  # a publisher writes its temporary folder in seconds; one a day old was killed
UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class BadInput(ValueError):
    """One line that says what is wrong with the arguments."""


@dataclass
class Found:
    """One published entry: its folder, size in bytes, last use (its folder's mtime) and entry.json."""

    folder: Path
    bytes: int
    used: float
    meta: dict | None


def _dot_named(root: Path) -> tuple[list[Path], list[Path]]:
    """(the shard folders, the dot-named things in the store folder and its shards)."""
    shards, dotted = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            dotted.append(p)
        elif p.is_dir():
            shards.append(p)
    for shard in shards:
        dotted += [p for p in sorted(shard.iterdir()) if p.name.startswith(".")]
    return shards, dotted


def entries(root: Path) -> list[Found]:
    """The published entries of a store, least recently used first."""
    out = []
    for shard in _dot_named(root)[0]:
        for folder in sorted(shard.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                st = folder.stat()
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            except OSError:
                continue  # removed while we looked
            try:
                meta = json.loads((folder / ENTRY).read_bytes())
            except (OSError, ValueError):
                meta = None
            out.append(Found(folder, size, st.st_mtime, meta if isinstance(meta, dict) else None))
    return sorted(out, key=lambda e: (e.used, e.folder.name))


def leftovers(root: Path, now: float, stale: float = STALE_SECONDS) -> list[Path]:
    """What gc clears besides entries: temporary folders (`.*.tmp`) of publishers killed more than `stale`
    seconds ago, and entries moved aside (`.*.corrupt`, `.*.removed`) that could not be deleted then."""
    out = []
    for p in _dot_named(root)[1]:
        try:
            old = now - p.lstat().st_mtime > stale
        except OSError:
            continue
        if p.name.endswith((CORRUPT, REMOVED)) or (p.name.endswith(".tmp") and old):
            out.append(p)
    return out


def parse_size(text: str) -> int:
    """'10G' -> 10 * 2**30; K, M, G, T are powers of 1024 (a trailing B or iB is allowed); a bare number is bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?", str(text).strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"give a size such as 10G or 500M (K, M, G, T: powers of 1024), got {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2)])


def size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds // n:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _store(arg: str | None) -> Path:
    root = Path(arg).expanduser() if arg else roundstore.default_dir()
    if not root.is_dir():
        raise BadInput(f"{root}: no round store there (give --dir, or set $PHICENTER_ROUND_STORE)")
    return root


def _key(arg: str | None, needed: bool) -> bytes | None:
    path = storetrust.key_file(arg)
    try:
        return storetrust.read_key(path)
    except FileNotFoundError:
        if not needed:
            return None
        raise BadInput(
            f"{path}: no key file (a run makes one on first use; a shared store's users share theirs: give "
            "--key-file, or set $PHICENTER_ROUND_STORE_KEY)"
        ) from None
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: {getattr(e, 'strerror', None) or e}") from None


def signed(meta: dict | None, secret: bytes | None) -> str:
    """Whether this key signed an entry (its entry.json alone; `verify` reads state.pt too)."""
    if secret is None:
        return "?"
    if meta is None or meta.get("format") != roundstore.FORMAT:
        return "no" if meta is None else f"format {meta.get('format')}"
    try:
        storetrust.verify(secret, meta)
    except Untrusted:
        return "other key" if meta.get(storetrust.ID_FIELD) else "no"
    except ValueError:
        return "bad MAC"
    return "yes"


# ---------------------------------------------------------------- the commands


def ls(root: Path, secret: bytes | None) -> int:
    now, found = time.time(), entries(root)
    print(f"{'AGE':>5}  {'SIZE':>7}  {'ROUND':>5}  {'SIGNED':<9}  {'KEY':<64}  FIRST RUN")
    for e in reversed(found):
        meta = e.meta or {}
        rnd = meta.get("round", "?")
        print(
            f"{age(now - e.used):>5}  {size(e.bytes):>7}  {rnd!s:>5}  {signed(e.meta, secret):<9}  "
            f"{e.folder.name:<64}  {meta.get('first_run', '?')}"
        )
    rest = leftovers(root, now, stale=0)
    print(
        f"{len(found)} entries, {size(sum(e.bytes for e in found))} in {root}"
        + (f"; {len(rest)} temporary or moved-aside folders" if rest else "")
        + ("" if secret is not None else "; no key file: SIGNED unknown")
    )
    return 0


def verify(root: Path, secret: bytes) -> int:
    found, bad = entries(root), 0
    for e in found:
        try:
            roundstore.check_entry(
                e.folder.name, (e.folder / ENTRY).read_bytes(), (e.folder / STATE).read_bytes(), secret
            )
        except Untrusted as err:
            bad += 1
            print(f"{e.folder}: not trusted: {err}")
        except Exception as err:
            bad += 1
            print(f"{e.folder}: {type(err).__name__}: {err}")
    print(f"{len(found)} entries checked, {bad} bad")
    return 1 if bad else 0


def gc(root: Path, max_size: int) -> int:
    now, failed, cleared = time.time(), [], 0
    for p in leftovers(root, now):
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            cleared += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            failed.append(f"cannot remove {p}: {e.strerror or e}")
    found = entries(root)
    total, removed, freed = sum(e.bytes for e in found), 0, 0
    for e in found:  # least recently used first
        if total <= max_size:
            break
        if roundstore.remove(e.folder):
            removed, freed = removed + 1, freed + e.bytes
            total -= e.bytes
        elif e.folder.exists():
            failed.append(f"cannot remove {e.folder}: permission denied, or a read-only store")
    print(
        f"removed {removed} entries ({size(freed)}, least recently used first) and {cleared} "
        f"temporary or moved-aside folders; {root} holds {len(found) - removed} entries, {size(total)}"
    )
    for line in failed:
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1 if failed else 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default adds the usage)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help="the store (default: $PHICENTER_ROUND_STORE, else outputs/round_store)")
    keyed = argparse.ArgumentParser(add_help=False)
    keyed.add_argument(
        "--key-file", help="the key (default: $PHICENTER_ROUND_STORE_KEY, else ~/.config/phicenter/round_store.key)"
    )
    sub = p.add_subparsers(dest="command", metavar="{ls,verify,gc}", parser_class=_Parser)
    sub.required = True
    sub.add_parser("ls", parents=[common, keyed], help="list the entries, most recently used first")
    sub.add_parser("verify", parents=[common, keyed], help="check every entry; exit 1 when one is bad")
    g = sub.add_parser("gc", parents=[common], help="remove the least recently used entries down to a size")
    g.add_argument("--max-size", type=parse_size, required=True, metavar="SIZE", help="e.g. 10G, 500M")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        root = _store(args.dir)
        if args.command == "gc":
            return gc(root, args.max_size)
        secret = _key(args.key_file, needed=args.command == "verify")
    except BadInput as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    return ls(root, secret) if args.command == "ls" else verify(root, secret)


if __name__ == "__main__":
    sys.exit(main())
