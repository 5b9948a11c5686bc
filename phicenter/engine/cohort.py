"""Cohorts: the K variants of one (dataset, architecture, seed) that share theta0 and the data order and differ
only in phi and the strategy. A single run is a cohort of one; `pack=true 'phi=[...]' 'strategy=[...]'` makes
one of K > 1, each variant in its own folder named like a multirun job (`phi=0.0,strategy=mask0/`)."""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict

from phicenter.config import PACK_KEYS, ConfigError, schema, settings

log = logging.getLogger("phicenter")

PACK_SUMMARY = "pack.json"  # in the job folder: {"variants": {name: status}, ...}
VARIED = ("phi", "strategy")  # what may differ between the variants of one job


@dataclass
class Variant:
    """One run of a cohort: its folder under the job folder ("" for a single run: the job folder itself)
    and the config of the same run trained alone."""

    name: str
    cfg: DictConfig

    @functools.cached_property
    def settings(self) -> schema.Config:
        """Its config checked and typed (phicenter.config.settings)."""
        return settings(self.cfg)


def variant_name(phi, strategy: str) -> str:
    """The folder a multirun job over phi and strategy would get (keys sorted, as Hydra's override_dirname)."""
    return f"phi={float(phi)!r},strategy={strategy}"


def make_variants(cfg: DictConfig, phis=None, strategies=None) -> list[Variant]:
    """Variants from one base config without Hydra: phi from `phis`, strategy nodes from `strategies`
    (each a strategy config node, e.g. {'name': 'mask1', 'rewind_other': True}, or None to keep cfg's)."""
    phis = list(phis) if phis is not None else [cfg.phi]
    strategies = list(strategies) if strategies is not None else [None]
    out = []
    for s in strategies:
        for p in phis:
            c = copy.deepcopy(cfg)
            with open_dict(c):
                if s is not None:
                    c.strategy = OmegaConf.create(OmegaConf.to_container(s) if OmegaConf.is_config(s) else s)
                c.phi = p
                c.pack, c.pack_chunk, c.pack_halving = False, None, False
            out.append(Variant(variant_name(_phi_number(p), str(c.strategy.name)), c))
    return out


def _phi_number(p) -> float:
    try:
        return float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"phi must be a number, got {p!r}") from None


def variants_from_hydra(cfg: DictConfig) -> list[Variant]:
    """The variants of a `pack=true` job: list-valued `phi=[...]` and `strategy=[...]` overrides (or a phi
    list in the config) span the grid; every other override applies to all of them. Each variant's config
    is composed exactly as the job of one variant `strategy=S phi=P` would be. An override `strategy.KEY=V`
    applies to the variants whose strategy has KEY (or to all, with +/++)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    task = list(hc.overrides.task)
    parsed = OverridesParser.create().parse_overrides(task)
    keep, options, strategies = [], [], [None]
    for line, o in zip(task, parsed):
        key = o.key_or_group
        if key in PACK_KEYS or key == "phi":
            continue
        if key == "strategy":
            val = o.value()
            strategies = [str(s) for s in val] if isinstance(val, list) else [str(val)]
        elif key.startswith("strategy."):
            options.append(o)
        else:
            keep.append(line)
    phis = list(cfg.phi) if OmegaConf.is_list(cfg.phi) else [cfg.phi]
    if not phis or not strategies:
        raise ConfigError("pack=true needs at least one phi and one strategy")
    variants = []
    for s in strategies:
        base = compose(config_name=hc.job.config_name, overrides=keep + ([f"strategy={s}"] if s is not None else []))
        with open_dict(base):
            for o in options:
                sub = o.key_or_group[len("strategy.") :]
                if sub in base.strategy or o.is_add() or o.is_force_add():
                    OmegaConf.update(base, o.key_or_group, o.value(), force_add=True)
                else:
                    log.info(
                        "%s does not apply to strategy %s; ignored for its variants", o.key_or_group, base.strategy.name
                    )
        variants += make_variants(base, phis, [base.strategy])
    return variants


def single(cfg: DictConfig) -> list[Variant]:
    """The cohort of one that a plain run is: its folder is the job folder."""
    return [Variant("", cfg)]


def check_variants(variants: list[Variant]) -> None:
    """One clear error when the variants cannot share a cohort (each variant's settings checked)."""
    if not variants:
        raise ConfigError("pack: no variants")
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"pack: variants given twice: {', '.join(dup)}")
    for v in variants:
        v.settings  # noqa: B018 (checks the variant's config)

    def shared(c):
        d = OmegaConf.to_container(c, resolve=True)
        for k in (*VARIED, *PACK_KEYS):
            d.pop(k, None)
        return d

    ref = shared(variants[0].cfg)
    for v in variants[1:]:
        if shared(v.cfg) != ref:
            diff = sorted(k for k in set(ref) | set(shared(v.cfg)) if ref.get(k) != shared(v.cfg).get(k))
            raise ConfigError(
                f"pack: variant {v.name} differs from {variants[0].name} in {', '.join(diff)}; "
                "only phi and strategy may vary among a job's variants"
            )
    precision = str(variants[0].settings.trainer.precision)
    if len(variants) > 1 and precision in ("16-mixed", "16"):
        raise ConfigError(
            f"pack=true cannot train with trainer.precision={precision}: one loss scale for the "
            "cohort would skip every variant's step when one overflows; use bf16-mixed or 32-true"
        )
