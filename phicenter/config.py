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


# Settings that change how a run executes, not what it trains: a relaunch may change them and still resume.
EXECUTION_KEYS = ("threads", "data_dir", "resume", "checkpoint", "compile", "pack", "pack_chunk", "fault",
                  "dry_run", "dry_run_grid", "trainer.enable_progress_bar", "trainer.accelerator",
                  "trainer.devices", "trainer.deterministic", "dataset.download", "dataset.num_workers",
                  "eval_batch_size", "optim.fused")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a.b": value} for every leaf of a nested dict."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_execution_key(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in EXECUTION_KEYS)


_ABSENT = object()


def config_changes(before: dict, now: dict) -> list[str]:
    """'key: old -> new' for each setting that differs, added (`+optim.momentum=0.9`) and dropped ones
    included; execution keys aside."""
    a, b = flatten(before), flatten(now)

    def show(v):
        return "(absent)" if v is _ABSENT else repr(v)

    return [f"{k}: {show(a.get(k, _ABSENT))} -> {show(b.get(k, _ABSENT))}" for k in sorted(a.keys() | b.keys())
            if a.get(k, _ABSENT) != b.get(k, _ABSENT) and not is_execution_key(k)]


def recorded_config(cfg, phi: float | None = None) -> dict:
    """The config as results.json records it and a relaunch compares it: resolved, phi as the number the
    method uses."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=True)
    out["phi"] = validate(cfg)["phi"] if phi is None else phi
    return out


def check_same_run(previous: dict | None, resolved: dict, run_dir) -> None:
    """Resuming continues the run already in run_dir; refuse to continue it under another configuration."""
    if not previous or not isinstance(previous.get("config"), dict):
        return
    changes = config_changes(previous["config"], resolved)
    if changes:
        more = f" (and {len(changes) - 3} more)" if len(changes) > 3 else ""
        raise ConfigError(f"{run_dir} holds a run of another configuration ({'; '.join(changes[:3])}{more}); "
                          "relaunch it with its own settings (the \"config\" of its results.json), use another "
                          "folder, or resume=false to start over")
