"""The names a command line may use, and the one-line messages for a wrong one with the nearest valid names
(difflib): the keys the schema declares (phicenter.config.schema) and the options of each conf/ group.

Plain Python (no Hydra or OmegaConf): the command line words its refusals of Hydra's overrides with these.
"""

from __future__ import annotations

from difflib import get_close_matches

from phicenter import CONF_DIR
from phicenter.config.keys import PHI_SEARCH_KEYS
from phicenter.config.schema import Config
from phicenter.spec import by_name, declared, group_in

SETTINGS_HINT = "--cfg job prints every setting"


def declared_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key the schema declares, groups and their keys both; a group declared per name (strategy,
    model, ...) through every name's declaration (`strategy.trained_fraction`)."""
    out = []
    for name, (tp, _) in declared(cls).items():
        if name == getattr(cls, "PASS_THROUGH", None):
            continue
        key = prefix + name
        out.append(key)
        named = by_name(tp)
        for sub in list(named.registry.values()) if named else [g for g in [group_in(tp)] if g is not None]:
            out += declared_keys(sub, key + ".")
    return list(dict.fromkeys(out))


def group_options(group: str) -> list[str] | None:
    """The options of a conf/ group (its files' names), None for a name that is no group."""
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else None


def _maybe(word: str, names: list[str]) -> str:
    near = get_close_matches(word, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def unknown_option(group: str, value) -> str:
    """`strategy=mask2`: the group's nearest options, then all of them."""
    options = group_options(group) or []
    return f"{group} has no option {value}{_maybe(str(value), options)}; options: {', '.join(options)}"


def search_key(key: str) -> str:
    """phi_sign or phi_abs set outside the phi search, where nothing reads it."""
    return (
        f"{key} is what hparams_search=phi_optuna draws phi from, and nothing reads it outside that search; "
        "set phi itself (phi=-1e-3), or search with -m hparams_search=phi_optuna"
    )


def unknown_key(key: str, value: str) -> str:
    """`epoch=3`, a key the composed config does not hold: a search key, a declared key the conf/ files leave
    out (added with +), a Trainer keyword (added with +), or no setting at all (the nearest declared keys)."""
    if key in PHI_SEARCH_KEYS:
        return search_key(key)
    keys = declared_keys()
    if key in keys:
        return f"{key} is not in this config (declared, but no conf/ file sets it): add it with +{key}={value}"
    if key.startswith("trainer."):
        return f"no setting {key}; +{key}={value} passes it to Lightning's Trainer as it is"
    return f"no setting {key}{_maybe(key, keys)}; {SETTINGS_HINT}"


def several_values(line: str) -> str:
    """`phi=0,1e-3` without -m."""
    return f"{line} lists several values: add -m to sweep them"
