"""phicenter's hydra/sweeper=optuna (a Hydra plugin, so in the hydra_plugins namespace): an Optuna study driven
through its ask/tell API, one batch of `n_jobs` trials at a time, each trial a job of the configured launcher.

    hydra.sweeper.params: {name: search space in Hydra's override grammar}, overridden name by name by the
        command line's: choice(a,b) or a,b (categorical), range(lo,hi[,step]) (ints or floats on a step),
        interval(lo,hi) (float; int(interval(...)) for ints), tag(log, ...) (log scale); a plain value is fixed.
    direction: minimize | maximize, or a list of them (one per value a job returns)
    n_trials: the size of the study; n_jobs: trials asked and launched at once
    storage: null (in memory) or an Optuna storage URL (sqlite:///search.db): the same command run again resumes
        the study: trials it already holds count, and those left running by a stopped search run again under
        their own number and overrides (so their run folders resume)
    study_name, sampler (hydra/sweeper/sampler=tpe|random|nsgaii|qmc, each with its seed)
    digits: each float drawn from a continuous range is rounded to this many significant digits (null: as
        drawn), by the sampler itself (`Rounded`), before its job starts: the study records the value the job
        ran, and the override, the job folder's name, the run's config and its results.json say the same short
        number (`phi_abs=0.0017`, not 19 digits). Three digits move a draw by at most 0.5 %, far less than a
        search resolves; two draws that round alike are one job folder, whose complete run is not trained again.

The best parameters go to optimization_results.yaml in the sweep folder (hparams_search=phi_optuna's as the phi
they stand for too: `best phi = -1.70e-03 (val 0.9444)`). Optuna is imported when a sweep starts, not when Hydra
scans its plugins."""
# no `from __future__ import annotations`: Hydra loads its plugins outside sys.modules, where dataclasses and
# OmegaConf could not resolve annotations written as strings

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Quote, QuotedString
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

RESULTS = "optimization_results.yaml"
PHI_PARAMS = ("phi_sign", "phi_abs")  # hparams_search=phi_optuna: phi = float(phi_sign + str(phi_abs))


@dataclass
class TPESamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool | None = None
    group: bool = False
    constant_liar: bool = True


@dataclass
class RandomSamplerConf:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class NSGAIISamplerConf:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class QMCSamplerConf:
    _target_: str = "optuna.samplers.QMCSampler"
    seed: int | None = None
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.phicenter_sweeper.OptunaSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler itself, once it knows what the study holds
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = "minimize"
    study_name: str | None = None
    storage: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    digits: int | None = 3
    params: dict[str, Any] | None = None


_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="phicenter")
for _name, _node in [
    ("tpe", TPESamplerConf),
    ("random", RandomSamplerConf),
    ("nsgaii", NSGAIISamplerConf),
    ("qmc", QMCSamplerConf),
]:
    _store.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="phicenter")


def _plain(x: Any) -> Any:
    return x.text if isinstance(x, QuotedString) else x


def distribution(override: Override):
    """The Optuna distribution of one swept override."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key, sweep = override.get_key_element(), override.value()
    log_scale = "log" in getattr(sweep, "tags", set())
    if override.is_choice_sweep():
        choices = list(override.sweep_iterator(transformer=_plain))
        if not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise HydraException(f"{key}: a choice of lists or dicts cannot be searched; choose among strings")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        values = list(override.sweep_iterator())
        if not values:
            raise HydraException(f"{key}: an empty range")
        step = abs(sweep.step)
        if log_scale and step != 1:
            raise HydraException(f"{key}: a range on a log scale takes no step")
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), log=log_scale, step=int(step))
        return FloatDistribution(
            float(min(values)), float(max(values)), log=log_scale, step=None if log_scale else step
        )
    if override.is_interval_sweep():
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise HydraException(f"{key}: the optuna sweeper cannot search {override.value_type}")


def element(value: Any) -> str:
    """A value as the part after `=` of an override that Hydra parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    parser = OverridesParser.create()
    bare = text.translate({ord(c): f"\\{c}" for c in "\\()[]{}:=, \t"})
    try:
        if parser.parse_override(f"k={bare}").value() == text:
            return bare
    except Exception:
        pass
    return QuotedString(text=text, quote=Quote.single).with_quotes()


def rounded(value: float, distribution, digits: int | None) -> float:
    """A float drawn from a continuous distribution (no step), to `digits` significant digits; the draw as it
    was where rounding would leave the distribution's range."""
    from optuna.distributions import FloatDistribution

    if digits is None or not isinstance(distribution, FloatDistribution) or distribution.step is not None:
        return value
    short = float(f"{value:.{digits}g}")
    return short if distribution.low <= short <= distribution.high else value


class Rounded:
    """An Optuna sampler (optuna.samplers.BaseSampler's methods) that rounds what `inner` draws (`rounded`)."""

    def __init__(self, inner, digits: int | None):
        self.inner, self.digits = inner, digits

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        drawn = self.inner.sample_relative(study, trial, search_space)
        return {n: rounded(v, search_space[n], self.digits) for n, v in drawn.items()}

    def sample_independent(self, study, trial, param_name, param_distribution):
        value = self.inner.sample_independent(study, trial, param_name, param_distribution)
        return rounded(value, param_distribution, self.digits)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def phi_of(params: dict[str, Any]) -> float | None:
    """The phi a trial of hparams_search=phi_optuna ran (its sign and magnitude, as the config decodes them)."""
    if not all(k in params for k in PHI_PARAMS):
        return None
    return float(f"{params['phi_sign']}{params['phi_abs']}")


def _name(override: Override) -> str:
    return override.get_key_element().lstrip("+~")


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        digits: int | None = 3,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if n_trials < 0 or n_jobs < 1:
            raise HydraException(f"hydra.sweeper: n_trials={n_trials} must be >= 0 and n_jobs={n_jobs} >= 1")
        self.sampler = sampler
        many = isinstance(direction, ListConfig | list)
        self.directions = [str(d).lower() for d in (direction if many else [direction])]
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.digits = n_trials, n_jobs, digits
        self.params = dict(params or {})
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
        """({name: distribution}, {name: key as the overrides write it}, fixed overrides): hydra.sweeper.params
        first, then the command line's, a later one for the same name replacing an earlier one."""
        assert self.hydra_context is not None
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides: dict[str, Override] = {}
        for o in parser.parse_overrides(lines):
            overrides.pop(_name(o), None)
            overrides[_name(o)] = o
        swept = {n: o for n, o in overrides.items() if o.is_sweep_override()}
        fixed = [
            f"{o.get_key_element()}={o.get_value_element_as_str()}" for n, o in overrides.items() if n not in swept
        ]
        return {n: distribution(o) for n, o in swept.items()}, {n: o.get_key_element() for n, o in swept.items()}, fixed

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        import optuna
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        space, keys, fixed = self.search_space(arguments)
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, directions=self.directions, load_if_exists=True
        )
        if [d.name.lower() for d in study.directions] != self.directions:
            raise HydraException(
                f"study {study.study_name} in {self.storage} has directions "
                f"{[d.name.lower() for d in study.directions]}, not {self.directions}"
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        held = study.get_trials(deepcopy=False)
        study.sampler = self._sampler(len(held))
        finished = [t for t in held if t.state.is_finished()]
        stale = [t for t in held if t.state == TrialState.RUNNING]
        todo = max(0, self.n_trials - len(finished))
        log.info(
            "Optuna study %s (%s, %s, %s): %d trials, %d held already; running %d (%d resumed)",
            study.study_name,
            self.storage or "in memory",
            type(study.sampler.inner).__name__,
            ", ".join(self.directions),
            self.n_trials,
            len(finished),
            todo,
            min(len(stale), todo),
        )
        for name, dist in space.items():
            log.info("\t%s: %s", name, dist)

        returns: list[Sequence[JobReturn]] = []
        while todo > 0:
            size = min(self.n_jobs, todo)
            batch = [(t.number, self._resumed(t, keys, fixed)) for t in stale[:size]]
            stale = stale[size:]
            while len(batch) < size:
                trial = study.ask(fixed_distributions=space)
                overrides = [*fixed, *(f"{keys[n]}={element(v)}" for n, v in trial.params.items())]
                trial.set_user_attr("overrides", overrides)
                batch.append((trial.number, overrides))
            self.validate_batch_is_legal([o for _, o in batch])
            errors: list[BaseException] = []
            for chunk in _consecutive(batch):
                rets = self.launcher.launch([o for _, o in chunk], initial_job_idx=chunk[0][0])
                for (number, _), ret in zip(chunk, rets):
                    errors += self._tell(study, number, ret)
                returns.append(rets)
            todo -= len(batch)
            if errors:  # a job that raised ends the search, as it ends Hydra's basic sweep
                self._write_results(study, sweep_dir)
                raise errors[0]
        self._write_results(study, sweep_dir)
        return returns

    def _sampler(self, held: int):
        """The configured sampler; in a study that holds trials already, seeded with seed + their number, so that
        a resumed seeded search does not draw its first trials again."""
        from hydra.utils import instantiate

        if not isinstance(self.sampler, DictConfig | dict) or "_target_" not in self.sampler:
            raise HydraException(f"hydra.sweeper.sampler={self.sampler!r}: pick one with hydra/sweeper/sampler=NAME")
        seed = self.sampler.get("seed")
        inner = instantiate(self.sampler, **({"seed": seed + held} if held and seed is not None else {}))
        return Rounded(inner, self.digits)

    @staticmethod
    def _resumed(trial, keys: dict[str, str], fixed: list[str]) -> list[str]:
        """The overrides a trial left running by a stopped search ran with, to run it again in its folder."""
        overrides = trial.user_attrs.get("overrides")
        if overrides:
            return list(overrides)
        return [*fixed, *(f"{keys.get(n, n)}={element(v)}" for n, v in trial.params.items())]

    def _tell(self, study, number: int, ret: JobReturn) -> list[BaseException]:
        """Tell the study what job `number` returned; a job that raised, returned nothing or NaN fails its trial
        (a NaN: phicenter.train's failed run, or a SLURM job that ended without a result). Returns its error."""
        from optuna.trial import TrialState

        try:
            value = ret.return_value  # re-raises what the job raised
        except Exception as e:
            study.tell(number, state=TrialState.FAIL)
            return [e]
        many = isinstance(value, Sequence | ListConfig) and not isinstance(value, str)
        values = list(value) if many else [value]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = []
        if len(values) != len(self.directions) or any(math.isnan(v) for v in values):
            log.warning("trial %d failed: its job returned %r, not %d number(s)", number, value, len(self.directions))
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, values)
        return []

    def _write_results(self, study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "n_complete": len(complete)}
        if len(self.directions) == 1:
            best = study.best_trial if complete else None
            results |= {"best_params": best.params if best else None, "best_value": best.value if best else None}
            phi = phi_of(best.params) if best else None
            if phi is not None:  # what phicenter.train returns: the final validation accuracy
                results["best_phi"] = phi
                log.info("best phi = %.2e (val %.4f), trial %d", phi, best.value, best.number)
            elif best:
                shown = ", ".join(f"{k}={element(v)}" for k, v in best.params.items())
                log.info("best trial %d: %s, value %s", best.number, shown, best.value)
            else:
                log.info("no trial completed")
        else:
            results["solutions"] = [{"params": t.params, "values": t.values} for t in study.best_trials]
            log.info("Pareto front: %d trials", len(results["solutions"]))
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS)


def _consecutive(batch: list[tuple[int, list[str]]]) -> list[list[tuple[int, list[str]]]]:
    """The batch in runs of consecutive trial numbers, so each job's number is its trial's."""
    chunks: list[list[tuple[int, list[str]]]] = []
    for item in sorted(batch, key=lambda b: b[0]):
        if chunks and chunks[-1][-1][0] + 1 == item[0]:
            chunks[-1].append(item)
        else:
            chunks.append([item])
    return chunks
