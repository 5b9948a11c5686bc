"""Every mistake caught before any work: a bad value anywhere in a multirun (any launcher, the Optuna search's
bounds), Hydra's own errors, a key accepted and then ignored, and a logger that cannot keep records, each one
line on stderr, exit 2, nothing trained (phicenter.analysis.precheck)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import typing

import pytest
from tests.cli import compose_config, env, train

QUICK = ["threads=1", "epochs=1", "prune.iterations=0", "round_store.enabled=false"]


def refused(proc, *words: str) -> str:
    """The one line a refusal prints, checked: exit 2, `phicenter train: error:` and the words."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("phicenter train: error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def nothing_trained(folder) -> None:
    assert not list(folder.glob("**/results.json")) and not list(folder.glob("**/checkpoints")), list(folder.rglob("*"))


# ------------------------------------------------------------------ the whole sweep, before its first job


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=local"], ["hydra/launcher=slurm"]], ids=str)
def test_bad_sweep_value_refused_before_the_first_job(tmp_path, launcher):
    """phi=0 would train first, then phi=abc stop the multirun; under SLURM nothing is submitted."""
    sweep = tmp_path / "sweep"
    proc = train(*QUICK, *launcher, "phi=0,abc", f"hydra.sweep.dir={sweep}", multirun=True, check=False, cwd=tmp_path)
    refused(proc, "job phi=abc: phi must be a number")
    nothing_trained(tmp_path)
    assert json.loads((sweep / "sweep_summary.json").read_text()) == {
        "refused": [
            {"job": "phi=abc", "error": "phi must be a number, got 'abc'", "rounds_trained": 0, "rounds_reused": 0}
        ]
    }
    assert sorted(p.name for p in sweep.iterdir()) == ["sweep_summary.json"]


def test_bad_group_option_in_a_sweep(tmp_path):
    proc = train(*QUICK, "strategy=mask0,mask2", f"hydra.sweep.dir={tmp_path}", multirun=True, check=False)
    refused(proc, "strategy has no option mask2 (did you mean mask1, mask0?); options: gradual,")
    nothing_trained(tmp_path)


def test_optuna_search_bounds_checked(tmp_path):
    """The search's bounds: prune.base may be drawn up to 1.5, outside (0, 1)."""
    args = ["hparams_search=phi_optuna", "hydra.sweeper.n_trials=2", "prune.base=interval(0.5,1.5)"]
    proc = train(*QUICK, *args, f"hydra.sweep.dir={tmp_path}", multirun=True, check=False)
    refused(proc, "prune.base=1.5: prune.base must be in (0, 1), got 1.5")
    nothing_trained(tmp_path)


# ------------------------------------------------------------------ Hydra's errors, one line


HYDRA_ERRORS = [
    (["epoch=3"], "no setting epoch (did you mean epochs?); "),
    (["strategy=mask2"], "strategy has no option mask2 (did you mean mask1, mask0?); options: gradual, lrr,"),
    (["phi=0,1e-3"], "phi=0,1e-3 lists several values: add -m to sweep them"),
    (["-m", "epoch=1,2"], "no setting epoch (did you mean epochs?)"),
    (["prune.bse=0.5"], "no setting prune.bse (did you mean prune.base"),
    (["phi_abs=1e-3"], "phi_abs is what hparams_search=phi_optuna draws phi from"),
]


@pytest.mark.parametrize("args,message", HYDRA_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_hydra_errors_one_line(tmp_path, args, message):
    proc = train(*args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", check=False)
    refused(proc, message)
    assert not list(tmp_path.iterdir())


def test_an_optuna_search_takes_sweeps_without_dash_m():
    """hparams_search=phi_optuna sets hydra.mode=MULTIRUN itself: a search space is no list of values there."""
    from phicenter.analysis.precheck import check_argv

    check_argv(["hparams_search=phi_optuna", "phi_abs=tag(log,interval(1e-5,1e-2))", "hydra.sweeper.n_trials=0"])


# ------------------------------------------------------------------ no key accepted and then ignored


@pytest.mark.parametrize("args", [["+phi_abs=1e-3"], ["+phi_sign=-"], ["hparams_search=phi_optuna", "phi=0.5"]])
def test_phi_search_keys_outside_the_search_refused(tmp_path, args):
    """Outside the search nothing reads phi_sign or phi_abs (the run trained at phi = 0 and recorded phi_abs)."""
    run = tmp_path / "run"
    proc = train(*QUICK, *args, f"hydra.run.dir={run}", f"hydra.sweep.dir={tmp_path / 's'}", check=False)
    refused(proc, "would be ignored", "set phi itself")
    assert not run.exists()


def _leaves(cls, tree: dict, prefix=""):
    """(dotted key, type) of every declared key under cls, groups through (a group declared per name: the
    declaration its name in `tree` picks)."""
    from phicenter.spec import by_name, declared, group_in

    for name, (tp, _) in declared(cls).items():
        if name in (getattr(cls, "PASS_THROUGH", None), "name"):
            continue
        sub = tree.get(name) if isinstance(tree.get(name), dict) else {}
        named = by_name(tp)
        group = named.registry.get(sub.get("name")) if named else group_in(tp)
        if group is not None:
            yield from _leaves(group, sub, f"{prefix}{name}.")
        elif named is None:
            yield f"{prefix}{name}", tp


def _candidates(tp, d) -> list:
    members = [typing.get_args(m)[0] if typing.get_origin(m) is typing.Annotated else m for m in _flat(tp)]
    out = [x for m in members if typing.get_origin(m) is typing.Literal for x in typing.get_args(m)]
    out += [not d] if isinstance(d, bool) else []
    if isinstance(d, (int, float)) and not isinstance(d, bool):
        out += [d + 1, d * 0.5, d * 2, 1, 2, 0.5, 0]
    out += [1, 2, 0.5, 1e-3, True, "x", [0.5], [1, 2], "2775"]
    return [c for c in out if c != d and not (isinstance(c, bool) and isinstance(d, (int, float)) and d == c)]


def _flat(tp):
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [x for a in typing.get_args(tp) for x in _flat(a)]
    return [tp]


BASES = [  # every logger; then other names for the groups declared per name
    ["logger=[tensorboard,csv,mlflow,wandb]"],
    ["strategy=gradual", "model=vgg16_pretrained", "dataset=npz", "dataset.path=/d.npz", "optim.name=sgd"],
    ["strategy=sign_transfer", "model=resnet20", "dataset=synthetic", "schedule.name=multistep", "+schedule.at=[0.5]"],
]


@pytest.mark.parametrize("overrides", BASES, ids=lambda b: b[0])
def test_every_declared_key_is_refused_or_acts(overrides):
    """Each declared key set to another valid value, one at a time, either is refused or changes the typed
    settings; phi_sign and phi_abs, what the phi search draws phi from, change nothing by themselves (phi
    acts), so set alone they must be refused. Composed once; each value set with OmegaConf (no training)."""
    from omegaconf import OmegaConf, open_dict

    from phicenter.config import ConfigError, schema, settings

    base = compose_config(*overrides)
    default = _acting(settings(base))
    ignored, tried = [], 0
    for key, tp in _leaves(schema.Config, OmegaConf.to_container(base, resolve=True)):
        if key.startswith("reference"):  # recorded, never acts (keys.RECORD_ONLY_KEYS; tests/test_literature.py)
            continue
        for value in _candidates(tp, OmegaConf.select(base, key, default=None)):
            cfg = base.copy()
            with open_dict(cfg):
                OmegaConf.update(cfg, key, value, force_add=True)
            try:
                s = settings(cfg)
            except ConfigError:
                continue
            tried += 1
            if _acting(s) == default:
                ignored.append(f"{key}={value!r}")
            break
    assert tried > 40 and ignored == [], ignored


def _acting(s):
    """Typed settings as they act: phi_sign and phi_abs act only through phi."""
    return dataclasses.replace(s, phi_sign=None, phi_abs=None)


# ------------------------------------------------------------------ loggers, before any work


def _no_wandb_login(tmp_path) -> dict:
    """The subprocess's environment with no W&B credentials: its home, netrc and W&B folders in tmp_path
    (matplotlib keeps its own folder, so its first-use line stays off stderr)."""
    import matplotlib

    e = {k: v for k, v in env().items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    e.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / "wandb"))
    e.update(MPLCONFIGDIR=matplotlib.get_configdir(), WANDB_DIR=str(home / "wandb"))
    return e


def test_wandb_online_without_login_refused(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "phicenter.train", *QUICK, "logger=wandb", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_no_wandb_login(tmp_path), capture_output=True, text=True, timeout=120)
    refused(proc, "no W&B login", "logger.wandb.mode=offline")
    assert not run.exists()


def test_wandb_login_found_where_wandb_looks(tmp_path, monkeypatch):
    from phicenter.loggers.reach import wandb_logged_in

    for k in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logged_in()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    os.chmod(tmp_path / "netrc", 0o600)
    assert wandb_logged_in()
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8080")  # a server of one's own: its own entry
    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_logged_in()


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("multirun", [False, True])
def test_mlflow_server_that_does_not_answer_refused(tmp_path, multirun):
    uri = f"http://127.0.0.1:{_closed_port()}"
    args = [*QUICK, "logger=mlflow", f"logger.mlflow.tracking_uri={uri}", *(["phi=0,1e-3"] if multirun else [])]
    where = [f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = train(*args, *where, multirun=multirun, check=False, cwd=tmp_path)
    refused(proc, f"no MLflow server answers at {uri}", "logger.mlflow.tracking_uri=file://")
    nothing_trained(tmp_path)
    assert not (tmp_path / "run").exists()
