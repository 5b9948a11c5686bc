"""Checks on user input that must fail in one clear line before any work starts."""
from __future__ import annotations

import math
from numbers import Real


class ConfigError(ValueError):
    pass


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        try:
            value = float(str(value))
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return value


def _int(value, key: str, low: int) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if int(value) < low:
        raise ConfigError(f"{key} must be >= {low}, got {value}")
    return int(value)


def _fraction(value, key: str, open_interval: bool) -> float:
    v = _number(value, key)
    ok = (0.0 < v < 1.0) if open_interval else (0.0 <= v <= 1.0)
    if not ok:
        raise ConfigError(f"{key} must be in {'(0, 1)' if open_interval else '[0, 1]'}, got {value}")
    return v


def validate(cfg) -> dict:
    """Normalised values of the keys users type; raises ConfigError with a one-line message."""
    if not isinstance(cfg.phi, (int, float, str)) and not cfg.get("pack"):
        raise ConfigError(f"phi={list(cfg.phi)} is a list: a list of phi values needs pack=true (or -m phi=a,b,c)")
    out = {
        "phi": _number(cfg.phi, "phi"),
        "seed": _int(cfg.seed, "seed", 0),
        "epochs": _int(cfg.epochs, "epochs", 1),
        "batch_size": _int(cfg.batch_size, "batch_size", 1),
        "iterations": _int(cfg.prune.iterations, "prune.iterations", 0),
        "base": _fraction(cfg.prune.base, "prune.base", True),
        "output_base": (None if cfg.prune.output_base is None
                        else _fraction(cfg.prune.output_base, "prune.output_base", True)),
    }
    if cfg.phi_scale not in ("absolute", "layer_std"):
        raise ConfigError(f"phi_scale must be absolute or layer_std, got {cfg.phi_scale!r}")
    if cfg.prune.scope not in ("layer", "global"):
        raise ConfigError(f"prune.scope must be layer or global, got {cfg.prune.scope!r}")
    mag = cfg.reinit.magnitude
    if mag not in ("init_std", "init_abs_mean"):
        if _number(mag, "reinit.magnitude") <= 0:
            raise ConfigError(f"reinit.magnitude must be init_std, init_abs_mean or a positive number, got {mag!r}")
    tf = cfg.strategy.get("trained_fraction")
    if tf is not None:
        _fraction(tf, "strategy.trained_fraction", False)
    if cfg.get("dry_run") not in (None, False, "phi"):
        raise ConfigError(f"dry_run must be phi (or null), got {cfg.dry_run!r}")
    fill = cfg.strategy.get("pruned_fill")
    if fill is not None and fill not in ("zero", "trained"):
        raise ConfigError(f"strategy.pruned_fill must be zero or trained, got {fill!r}")
    return out
