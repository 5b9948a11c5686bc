"""Declared settings: a dataclass per group of settings, each field's type, default, choices and range written
once; `check_group` holds a plain mapping of user values to it and says in one line what is wrong.

Types a field may have: bool, int, float, str, Literal[...] (the choices), None, unions of those (`int | None`,
`Literal["init_std"] | float`), list[T] and tuple[T, ...] or tuple[T, U], a nested declared dataclass (a group),
a group that may be null (`Group | None`), a list of groups (`list[Group]`: each item is checked as the group,
its keys named `key[i].x` in messages), and Any (anything). A number's range is declared with Annotated:
`Annotated[float, Range("(0, 1)")]`.
A dataclass with the class attribute `PASS_THROUGH = "field"` lets undeclared keys through unchecked; `typed`
gathers them into that field (a dict).
A ByName group's declarations are dataclasses with a `name: str` field (the name that picked them).

`check_group` says what is wrong; `typed` then turns the checked values into the frozen dataclass instances
that the code reads as attributes, every default filled in from the declaration.

Plain Python: no torch, Hydra or OmegaConf, so the method package and the command line's first checks use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Annotated, Any, Literal, Union

MISSING_VALUE = "???"  # OmegaConf's mark of a mandatory value nobody set


class ConfigError(ValueError):
    """A setting is wrong; the message is one line that names it."""


@dataclass(frozen=True)
class Range:
    """The allowed values of a number, written as in maths: "(0, 1)", "[0, 1)", ">= 1", "> 0", "<= 5"."""

    text: str

    def __post_init__(self):
        if not re.fullmatch(r"[\[(]\s*\S+\s*,\s*\S+\s*[\])]|(>=|>|<=|<)\s*\S+", self.text.strip()):
            raise ValueError(f"Range({self.text!r}): write it as '(0, 1)', '[0, 1]', '>= 1' or '> 0'")

    def holds(self, x: float) -> bool:
        t = self.text.strip()
        if t[0] in "[(":
            lo, hi = (float(s) for s in t[1:-1].split(","))
            return (lo <= x if t[0] == "[" else lo < x) and (x <= hi if t[-1] == "]" else x < hi)
        op, bound = re.fullmatch(r"(>=|>|<=|<)\s*(\S+)", t).groups()
        b = float(bound)
        return {">=": x >= b, ">": x > b, "<=": x <= b, "<": x < b}[op]

    def phrase(self) -> str:
        t = self.text.strip()
        return f"in {t}" if t[0] in "[(" else t


# Numbers users type most
PosInt = Annotated[int, Range(">= 1")]
NonNegInt = Annotated[int, Range(">= 0")]
Positive = Annotated[float, Range("> 0")]
NonNegative = Annotated[float, Range(">= 0")]
Unit = Annotated[float, Range("[0, 1]")]  # a probability or a fraction of the epochs
OpenUnit = Annotated[float, Range("(0, 1)")]  # a pruning base: keeps some, prunes some


@dataclass(frozen=True, eq=False)
class ByName:
    """Marks a group whose `name` picks the declaration of its other keys: `Annotated[dict, ByName(REGISTRY)]`
    with REGISTRY = {name: dataclass}."""

    registry: Mapping[str, type]


def _show(v) -> str:
    return {True: "true", False: "false", None: "null"}.get(v, str(v)) if isinstance(v, (bool, type(None))) else str(v)


def _either(words: list[str]) -> str:
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _members(tp) -> list:
    return list(typing.get_args(tp)) if typing.get_origin(tp) in (Union, types.UnionType) else [tp]


def _unwrap(tp):
    """(base type, Range or None) of a possibly Annotated type."""
    if typing.get_origin(tp) is Annotated:
        base, *extra = typing.get_args(tp)
        return base, next((e for e in extra if isinstance(e, Range)), None)
    return tp, None


def describe(tp) -> str:
    """What a value of type tp is, in words: "an integer >= 1", "absolute or layer_std", "a list of numbers"."""
    words = []
    for m in _members(tp):
        base, rng = _unwrap(m)
        if typing.get_origin(base) is Literal:
            words += [_show(c) for c in typing.get_args(base)]
        elif base is type(None):
            words.append("null")
        elif base is bool:
            words += ["true", "false"]
        elif typing.get_origin(base) in (list, tuple):
            args = [a for a in typing.get_args(base) if a is not Ellipsis]
            fixed = typing.get_origin(base) is tuple and Ellipsis not in typing.get_args(base)
            inner = _plural(describe(args[0])) if args else "values"
            words.append(f"a list of {len(args)} {inner}" if fixed and len(args) > 1 else f"a list of {inner}")
        else:
            noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, "a value")
            words.append(f"{noun} {rng.phrase()}" if rng else noun)
    return _either(words)


def _plural(phrase: str) -> str:
    for one, many in (
        ("an integer", "integers"),
        ("a number", "numbers"),
        ("a string", "strings"),
        ("true or false", "true or false"),
    ):
        if phrase.startswith(one):
            return many + phrase[len(one) :]
    return f"items each {phrase}"


def _fit_base(v, base, rng):
    """(ok, normalised value, whether v is of this kind at all, what it must be)."""
    if base is Any:
        return True, v, True, ""
    if is_group(base):  # checked key by key in _check_field; a plain value is never one
        return False, v, isinstance(v, Mapping), "a group of settings"
    if base is type(None):
        return v is None, v, v is None, "null"
    if typing.get_origin(base) is Literal:
        choices = typing.get_args(base)
        hit = any(type(v) is type(c) and v == c for c in choices)
        kind = any(type(v) is type(c) for c in choices)
        return hit, v, kind, describe(base)
    if typing.get_origin(base) in (list, tuple):
        return _fit_sequence(v, base)
    if base is bool:
        return isinstance(v, bool), v, isinstance(v, bool), "true or false"
    if base is str:
        return isinstance(v, str), v, isinstance(v, str), "a string"
    if base in (int, float):
        return _fit_number(v, base, rng)
    raise TypeError(f"spec: unsupported field type {base!r}")


def _fit_number(v, base, rng):
    if isinstance(v, bool) or not isinstance(v, Real):
        return False, v, False, "an integer" if base is int else "a number"
    if base is int:
        if not float(v).is_integer():
            return False, v, True, "an integer"
        v = int(v)
    else:
        v = float(v)
        if not math.isfinite(v):
            return False, v, True, "a finite number"
    if rng and not rng.holds(v):
        return False, v, True, rng.phrase()
    return True, v, True, ""


def _fit_sequence(v, base):
    what = describe(base)
    if not isinstance(v, (list, tuple)):
        return False, v, False, what
    args = typing.get_args(base)
    if typing.get_origin(base) is tuple and Ellipsis not in args:
        if len(v) != len(args):
            return False, v, True, what
        kinds = args
    else:
        kinds = [args[0] if args else Any] * len(v)
    out = []
    for x, k in zip(v, kinds):
        ok, x, _, _ = fit(x, k)
        if not ok:
            return False, v, True, what
        out.append(x)
    return True, tuple(out) if typing.get_origin(base) is tuple else out, True, ""


def fit(v, tp):
    """(ok, normalised value, whether v is of a kind tp allows, what it must be) for one value."""
    members = [_unwrap(m) for m in _members(tp)]
    claimed = None
    for base, rng in members:
        ok, value, kind, why = _fit_base(v, base, rng)
        if ok:
            return True, value, True, ""
        if kind and claimed is None:
            claimed = why
    others = [b for b, _ in members if b is not type(None)]
    if claimed is not None and len(others) == 1:  # right kind, wrong value: say what is wrong with it
        nullable = len(members) > len(others)
        return False, v, True, claimed + (" (or null)" if nullable else "")
    return False, v, claimed is not None, describe(tp)


def check_value(key: str, v, tp):
    """v normalised (2.0 -> 2 for an int, a list for a tuple[...] typed from YAML), or ConfigError."""
    if v == MISSING_VALUE and isinstance(v, str):
        raise ConfigError(f"{key} has no value; set {key}=...")
    ok, value, _, why = fit(v, tp)
    if not ok:
        raise ConfigError(f"{key} must be {why}, got {v!r}")
    return value


def declared(cls) -> dict[str, tuple[Any, dataclasses.Field]]:
    """{field name: (type, field)} of a declared dataclass, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def is_group(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def group_in(tp):
    """The declared group a field holds, alone or in `Group | None`; None for any other type."""
    groups = [m for m in _members(tp) if is_group(m)]
    return groups[0] if len(groups) == 1 else None


def _group_items(tp):
    """G for a field typed list[G] (or list[G] | None) with G a declared group, else None."""
    for m in _members(tp):
        args = typing.get_args(m)
        if typing.get_origin(m) is list and len(args) == 1 and is_group(args[0]):
            return args[0]
    return None


def by_name(tp) -> ByName | None:
    if typing.get_origin(tp) is Annotated:
        return next((m for m in typing.get_args(tp)[1:] if isinstance(m, ByName)), None)
    return None


def check_group(cls, values: Mapping, prefix: str = "", where: str | None = None, skip=()) -> dict:
    """values checked against cls: every key declared (unless cls.PASS_THROUGH), every value of its declared
    type and range, every field without a default given. Returns the values normalised; groups are checked
    through. `where` names cls in messages; keys in `skip` are left to the caller."""
    fields = declared(cls)
    where = where or (prefix.rstrip(".") or "the config")
    out = {}
    rest = getattr(cls, "PASS_THROUGH", None)
    for key, value in values.items():
        if key in skip:
            out[key] = value
        elif key in fields and key != rest:
            out[key] = _check_field(prefix + key, value, fields[key][0])
        elif rest and key not in fields:
            out[key] = value
        else:
            raise ConfigError(
                f"unknown key {prefix}{key}: {where} has no option {key} (its options: {_listed(fields)})"
            )
    for name, (_, f) in fields.items():
        if name not in values and name not in skip and default(f) is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name} has no value; set {prefix}{name}=...")
    return out


def _listed(fields) -> str:
    """A group's options for a message: a ByName group's `name` (which picked it) is not one of them."""
    return ", ".join(f for f in fields if f != "name") or "none"


def _check_field(key: str, value, tp):
    named = by_name(tp)
    group, items = (None, None) if named else (group_in(tp), _group_items(tp))
    if named is None and group is None and items is None:
        return check_value(key, value, tp)
    if value is None and type(None) in _members(tp):
        return None
    if items is not None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of groups of settings, got {value!r}")
        return [_check_group(f"{key}[{i}]", v, items) for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} is a group of settings ({key}.KEY=...), got {value!r}")
    if named is None:
        return check_group(group, value, key + ".")
    name = value.get("name")
    if not isinstance(name, str) or name not in named.registry:
        raise ConfigError(f"{key}.name must be {_either(list(named.registry))}, got {name!r}")
    return check_group(named.registry[name], value, key + ".", f"{key} {name}")


def _check_group(key: str, value, cls) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} is a group of settings ({key}.KEY=...), got {value!r}")
    return check_group(cls, value, key + ".")


def default_at(cls, values: Mapping, key: str):
    """The declared default of a dotted key in a config like `values` (whose names pick the declarations of
    ByName groups); dataclasses.MISSING where the key is not declared or has no default."""
    head, _, rest = key.partition(".")
    fields = declared(cls)
    if head not in fields:
        return dataclasses.MISSING
    tp, f = fields[head]
    if not rest:
        return default(f)
    sub = values.get(head) if isinstance(values.get(head), Mapping) else {}
    named = by_name(tp)
    if named is not None:
        cls = named.registry.get(sub.get("name"))
        return dataclasses.MISSING if cls is None or rest == "name" else default_at(cls, sub, rest)
    group = group_in(tp)
    return default_at(group, sub, rest) if group is not None else dataclasses.MISSING


def make(cls, values: Mapping, prefix: str = "", where: str | None = None):
    """The typed instance of cls for values (defaults for the rest); ConfigError for a wrong one."""
    return typed(cls, check_group(cls, values, prefix, where))


def typed(cls, checked: Mapping):
    """The frozen instance of cls that checked values (check_group's output) stand for: groups as their
    dataclasses (a ByName group as the one its name picks), lists of groups as lists of them, every key not
    given at its declared default, and a PASS_THROUGH class's undeclared keys in its pass-through field."""
    fields = declared(cls)
    rest = getattr(cls, "PASS_THROUGH", None)
    kw = {rest: {k: v for k, v in checked.items() if k not in fields}} if rest else {}
    for name, (tp, _) in fields.items():
        if name == rest or name not in checked:
            continue
        kw[name] = _typed_value(checked[name], tp)
    return cls(**kw)


def _typed_value(value, tp):
    named, items = by_name(tp), _group_items(tp)
    group = None if named else group_in(tp)
    if value is None or (named is None and group is None and items is None):
        return value
    if items is not None:
        return [typed(items, v) for v in value]
    return typed(named.registry[value["name"]] if named else group, value)


def named(registry: Mapping[str, type], group, key: str):
    """A ByName group as its typed options: an instance is returned as it is, a mapping ({"name": ..., KEY:
    ...}) is checked against the declaration its name picks; ConfigError names `key` for a wrong one."""
    if dataclasses.is_dataclass(group) and not isinstance(group, type):
        return group
    tp = Annotated[dict, ByName(registry)]
    return _typed_value(_check_field(key, dict(group), tp), tp)
