"""Checks on user input that must fail in one clear line before any work starts, and what a relaunch compares.

The schema of every key is phicenter.config.schema (strategy options: phicenter.method.options); the one list
of execution settings, and what is derived from it, is phicenter.config.keys. Plain Python at import (no
torch, Hydra or OmegaConf): the command line runs these checks before it imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable

from phicenter.config import schema
from phicenter.config.keys import (
    EXECUTION_KEYS,
    IN_ROUND_KEY,
    PACK_KEYS,
    PHI_SEARCH_KEYS,
    flatten,
    folder_name_excluded,
    hparams,
    is_execution_key,
    shapes_training,
)
from phicenter.spec import ConfigError, typed

__all__ = [
    "ConfigError",
    "EXECUTION_KEYS",
    "IN_ROUND_KEY",
    "PACK_KEYS",
    "PHI_SEARCH_KEYS",
    "check",
    "check_launch",
    "check_same_run",
    "config_changes",
    "config_digest",
    "flatten",
    "folder_name_excluded",
    "hparams",
    "is_execution_key",
    "recorded_config",
    "resolved",
    "settings",
    "shapes_training",
]


def resolved(cfg) -> dict:
    """A config as plain dicts and lists, interpolations resolved (a dict is taken as it is)."""
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def check(cfg) -> dict:
    """Every key of a config against the schema: ConfigError with a one-line message for the first wrong one.
    With pack=true, phi may be a list and each variant's strategy is checked with the variant. Returns the
    config normalised."""
    out = schema.check_tree(resolved(cfg))
    _check_phi_search(out)
    return out


def _check_phi_search(tree: dict) -> None:
    """phi_sign and phi_abs are what hparams_search=phi_optuna draws phi from (phi interpolates them); set
    where phi does not come from them (`+phi_abs=1e-3` without the search, or phi given beside the search),
    nothing would read them: refused, rather than recorded as if they had acted."""
    given = {k: tree[k] for k in PHI_SEARCH_KEYS if tree.get(k) is not None}
    if not given:
        return
    phi = tree.get("phi")
    sign, size = tree.get("phi_sign"), tree.get("phi_abs")
    drawn = float(f"{sign}{size}") if sign is not None and size is not None else None
    if drawn is not None and isinstance(phi, (int, float)) and math.isclose(phi, drawn, rel_tol=1e-12):
        return
    settings_given = ", ".join(f"{k}={v}" for k, v in given.items())
    raise ConfigError(
        f"{settings_given} would be ignored: phi_sign and phi_abs are what hparams_search=phi_optuna draws phi "
        f"from, and phi={phi} does not come from them here; set phi itself (phi=-1e-3), or search with -m "
        "hparams_search=phi_optuna"
    )


def settings(cfg) -> schema.Config:
    """The whole config checked (`check`) and typed: one frozen schema.Config, every group a dataclass read as
    attributes (`s.prune.base`, `s.strategy.name`), every key not given at its declared default. The code below
    this check reads these values and holds no default or check of its own. A Config is returned as it is."""
    if isinstance(cfg, schema.Config):
        return cfg
    return typed(schema.Config, check(cfg))


def check_launch(cfg, previous: Callable[[], dict | None], run_dir) -> None:
    """What the command line checks before torch is imported: every setting, that a model=custom or
    dataset=custom target can be imported and called (importing the user's module, which may import torch),
    that every logger picked is installed and can keep records (a W&B login online, an MLflow server that
    answers), and that run_dir, whose results.json `previous()` reads, has no run of another configuration (a
    `pack=true` job's variant folders are checked as the job starts them)."""
    from phicenter import targets
    from phicenter.loggers import check_installed, selected
    from phicenter.loggers.reach import check_reachable

    if cfg.get("pack"):
        targets.check(check(cfg))
        check_installed(selected(cfg))
        check_reachable(selected(cfg))
        return
    s = settings(cfg)
    targets.check(resolved(cfg))
    check_installed(selected(cfg))
    check_reachable(selected(cfg))
    if s.resume:
        check_same_run(previous(), recorded_config(cfg, s.phi), run_dir)


_ABSENT = object()


def _comparable(v):
    return [_comparable(x) for x in v] if isinstance(v, (list, tuple)) else v


def config_changes(before: dict, now: dict) -> list[str]:
    """'key: old -> new' for each setting that differs, added (`+optim.momentum=0.9`) and dropped ones
    included; execution keys aside. A key on one side only, whose value on the other is its declared default,
    is no change (a setting added to the schema leaves the runs from before it resumable)."""
    a, b = flatten(before), flatten(now)

    def value(flat, tree, key):
        if key in flat:
            return _comparable(flat[key])
        d = schema.default_of(tree, key)
        return _ABSENT if d is dataclasses.MISSING else _comparable(d)

    def show(v):
        return "(absent)" if v is _ABSENT else repr(v)

    return [
        f"{k}: {show(a.get(k, _ABSENT))} -> {show(b.get(k, _ABSENT))}"
        for k in sorted(a.keys() | b.keys())
        if not is_execution_key(k) and value(a, before, k) != value(b, now, k)
    ]


def config_digest(resolved: dict) -> str:
    """A run configuration's fingerprint, carried by every checkpoint: what config_changes compares (execution
    keys aside, a key at its declared default as if absent), so two configurations a relaunch may resume across
    have one digest and any other change gives another."""

    def canonical(v):
        if isinstance(v, (list, tuple)):
            return [canonical(x) for x in v]
        return int(v) if isinstance(v, float) and v.is_integer() else v

    flat = flatten(resolved)
    kept = {}
    for k in sorted(flat):
        d = schema.default_of(resolved, k)
        if is_execution_key(k) or (d is not dataclasses.MISSING and _comparable(d) == _comparable(flat[k])):
            continue
        kept[k] = canonical(flat[k])
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def recorded_config(cfg, phi: float | None = None) -> dict:
    """The config as results.json records it and a relaunch compares it: resolved, phi as the number the
    method uses."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    out["phi"] = settings(cfg).phi if phi is None else phi
    return out


def check_same_run(previous: dict | None, resolved: dict, run_dir) -> None:
    """Resuming continues the run already in run_dir; refuse to continue it under another configuration."""
    if not previous or not isinstance(previous.get("config"), dict):
        return
    changes = config_changes(previous["config"], resolved)
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise ConfigError(
            f"{run_dir} holds a run of another configuration ({'; '.join(changes[:3])}{more}); "
            'relaunch it with its own settings (the "config" of its results.json), use another '
            "folder, or resume=false to start over"
        )
