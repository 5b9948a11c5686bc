"""Your own code by dotted path (`model=custom model._target_=mypkg.nets.make_net`, `dataset=custom
dataset._target_=mypkg.data.load`), as Hydra's `_target_` names it: found, checked to be callable, and its
source file hashed for the round key. A target that cannot be used is a ConfigError in one line.

Plain Python: importing this module imports nothing of the user's; `resolve` does, when asked."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from phicenter.spec import ConfigError

GROUPS = ("model", "dataset")  # the groups whose `custom` option takes a _target_
KEY = "_target_"


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and its message with the line breaks taken out."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _import(path: str, where: str):
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name != e.name and not name.startswith(e.name + "."):
                raise ConfigError(f"{where}: importing {name} failed ({one_line(e)})") from None
            continue
        except Exception as e:  # the user's module raised as it was imported
            raise ConfigError(f"{where}: importing {name} failed ({one_line(e)})") from None
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ConfigError(f"{where}: {name} has no {'.'.join(parts[i:])}")
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(
        f"{where}: no module {parts[0]!r} can be imported (put its package on PYTHONPATH or install it in "
        "the environment that runs phicenter)"
    )


def resolve(path, group: str) -> Callable:
    """The callable `group._target_` names; ConfigError, in one line, when it cannot be imported or called."""
    where = f"{group}.{KEY}={path}"
    if not isinstance(path, str) or "." not in path.strip(". ") or any(not p.isidentifier() for p in path.split(".")):
        raise ConfigError(f"{where}: must be a dotted path to a callable (mypkg.module.function)")
    obj = _import(path, where)
    if not callable(obj):
        raise ConfigError(f"{where}: is a {type(obj).__name__}, not a callable")
    return obj


def check(tree: Mapping) -> None:
    """Each custom group of a config (model=custom, dataset=custom): its target importable and callable."""
    for group in GROUPS:
        node = tree.get(group) or {}
        if isinstance(node, Mapping) and node.get("name") == "custom":
            resolve(node.get(KEY), group)


def source_file(fn: Callable) -> str | None:
    """The source file of the module that defines fn (None: it has none, a builtin say)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    try:
        return inspect.getsourcefile(module) if module is not None else None
    except TypeError:
        return None


def in_round_key(flat: Mapping) -> dict:
    """What a round key holds of a config's targets (flat settings, "model._target_": path): each target's path
    and the sha256 of its module's source file, so an edit of the user's code makes new keys. {} without one."""
    out = {}
    for group in GROUPS:
        path = flat.get(f"{group}.{KEY}")
        if path is None or flat.get(f"{group}.name") != "custom":
            continue
        file = source_file(resolve(path, group))
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else None
        out[group] = {"path": path, "source": digest}
    return {"targets": out} if out else {}
