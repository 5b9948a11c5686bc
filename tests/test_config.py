"""The config schema and the one list of execution settings: each bad key or value is refused in one line by
the same check the command line runs first (phicenter.config.check_launch), every shipped config passes it,
and the conf/ files, the code's defaults and the derived key lists agree with the declarations."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from tests.cli import ROOT, compose_config

from phicenter import config
from phicenter.config import ConfigError, groups, schema
from phicenter.data.options import DATASET_OPTIONS, DatasetOptions
from phicenter.method import options
from phicenter.models.options import MODEL_OPTIONS
from phicenter.spec import PosInt, check_value, declared, default, group_in

CONF = ROOT / "conf"


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


BAD = [
    ("phi=abc", "phi must be a number, got 'abc'"),
    ("phi=inf", "phi must be a finite number"),
    ("phi=[0,1e-3]", "phi=[0, 0.001] is a list: a list of phi values needs pack=true"),
    ("phi_scale=bogus", "phi_scale must be absolute or layer_std, got 'bogus'"),
    ("seed=-1", "seed must be >= 0"),
    ("epochs=0", "epochs must be >= 1, got 0"),
    ("epochs=2.5", "epochs must be an integer"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("eval_batch_size=0", "eval_batch_size must be >= 1, got 0"),
    ("threads=0", "threads must be >= 1 (or null)"),
    ("compile=maybe", "compile must be true or false, got 'maybe'"),
    ("pack_chunk=0", "pack_chunk must be >= 1 (or null)"),
    ("resume=2", "resume must be true or false"),
    ("dry_run=bogus", "dry_run must be phi or false (or null)"),
    ("dry_run_grid.strategies=[mask0,nope]", "dry_run_grid.strategies must be a list of items each mask0, mask1"),
    ("fault.fail_round=-1", "fault.fail_round must be >= 0 (or null)"),
    ("+foo=1", "unknown key foo: the config has no option foo (its options: phi, phi_scale, seed"),
    ("prune.base=1.5", "prune.base must be in (0, 1), got 1.5"),
    ("prune.output_base=1.5", "prune.output_base must be in (0, 1] (or null), got 1.5"),
    ("prune.conv_base=0", "prune.conv_base must be in (0, 1] (or null), got 0"),
    ("prune.iterations=-1", "prune.iterations must be >= 0"),
    ("prune.scope=bogus", "prune.scope must be layer or global"),
    ("prune.method=bogus", "prune.method must be magnitude or structured, got 'bogus'"),
    ("+prune.foo=1", "unknown key prune.foo: prune has no option foo (its options: iterations, base, scope"),
    ("rewind.epoch=-1", "rewind.epoch must be >= 0, got -1"),
    ("rewind.step=1.5", "rewind.step must be an integer, got 1.5"),
    (
        "rewind.epoch=1 rewind.step=5",
        "rewind.epoch=1 and rewind.step=5: the rewind point is one of them; set the other to 0",
    ),
    ("epochs=3 rewind.epoch=3", "rewind.epoch=3 is not inside round 0 (epochs=3): rounds >= 1 train epochs k+1..3"),
    (
        "strategy=lrr rewind.epoch=1",
        "rewind.epoch=1 does not apply to strategy=lrr: learning-rate rewinding retrains the trained survivors",
    ),
    ("strategy=sign_transfer rewind.step=5", "rewind.step=5 does not apply to strategy=sign_transfer: sign transfer"),
    ("reinit.magnitude=-1", "reinit.magnitude must be init_std, init_abs_mean or a number > 0, got -1"),
    ("reinit.magnitude=foo", "reinit.magnitude must be init_std, init_abs_mean or a number > 0, got 'foo'"),
    ("optim.name=lbfgs", "optim.name must be adam, adamw or sgd, got 'lbfgs'"),
    ("optim.lr=-1", "optim.lr must be >= 0, got -1"),
    ("+optim.momentum=0.9", "unknown key optim.momentum: optim adam has no option momentum (its options: lr, "),
    ("optim.name=sgd +optim.betas=[0.9,0.99]", "unknown key optim.betas: optim sgd has no option betas"),
    ("+optim.betas=[0.9]", "optim.betas must be a list of 2 numbers in [0, 1), got [0.9]"),
    ("optim.fused=maybe", "optim.fused must be true, false or null, got 'maybe'"),
    ("schedule.name=foo", "schedule.name must be none, multistep or cosine, got 'foo'"),
    ("schedule.name=multistep +schedule.at=[0.5,2]", "schedule.at must be a list of numbers in [0, 1]"),
    ("schedule.name=multistep +schedule.gamma=0", "schedule.gamma must be > 0"),
    ("+schedule.gamma=0.1", "unknown key schedule.gamma: schedule none has no option gamma (its options: none)"),
    (
        "trainer.precision=bogus",
        "trainer.precision must be 64, 32, 16, 64-true, 32-true, 16-true, 16-mixed, bf16-true, bf16-mixed",
    ),
    ("trainer.accelerator=abacus", "trainer.accelerator must be auto, cpu, gpu, cuda, mps or tpu"),
    ("trainer.devices=0", "trainer.devices must be an integer >= 1, auto or a list of integers >= 0, got 0"),
    ("trainer.deterministic=sometimes", "trainer.deterministic must be true, false or null"),
    ("checkpoint.every_n_epochs=0", "checkpoint.every_n_epochs must be >= 1"),
    ("+checkpoint.keep=1", "unknown key checkpoint.keep: checkpoint has no option keep"),
    ("strategy=gradual strategy.trained_fraction=1.5", "strategy.trained_fraction must be in [0, 1], got 1.5"),
    ("strategy.pruned_fill=random", "strategy.pruned_fill must be zero or trained, got 'random'"),
    ("strategy.rewind_other=2", "strategy.rewind_other must be true or false"),
    (
        "+strategy.trained_fraction=0.5",
        "unknown key strategy.trained_fraction: strategy mask0 has no option trained_fraction "
        "(its options: pruned_fill, rewind_other)",
    ),
    ("strategy.name=nope", "strategy.name must be mask0, mask1, gradual, standard, lth, random"),
    ("model.init=zeros", "model.init must be torch_default, kaiming_normal or glorot_normal"),
    ("+model.width=3", "unknown key model.width: model fc_lot has no option width (its options: init, hidden)"),
    ("model=vgg16_pretrained model.batch_norm=3", "model.batch_norm must be true or false, got 3"),
    ("model=vgg16_pretrained model.verify_weights=maybe", "model.verify_weights must be true or false"),
    ("model=vgg16_pretrained model.pretrained=1", "model.pretrained must be true or false"),
    ("model=conv2 +model.hidden=[10]", "unknown key model.hidden: model conv2 has no option hidden"),
    ("model=vgg16 model.batchnorm_init=normal", "model.batchnorm_init must be ones or uniform, got 'normal'"),
    ("+model.batchnorm_init=uniform", "unknown key model.batchnorm_init: model fc_lot has no option batchnorm_init"),
    ("dataset.augment=3", "dataset.augment must be true or false, got 3"),
    ("dataset.pipeline=bogus", "dataset.pipeline must be fast or torchvision"),
    ("dataset.normalize=bogus", "dataset.normalize must be dataset or imagenet"),
    ("dataset.val_size=-1", "dataset.val_size must be >= 0"),
    ("+dataset.foo=1", "unknown key dataset.foo: dataset digits has no option foo"),
    ("dataset=npz", "dataset.path has no value; set dataset.path=..."),
    ("dataset=synthetic dataset.shape=[1,0,8]", "dataset.shape must be a list of integers >= 1"),
    ("+dataset.download=false", "unknown key dataset.download: dataset digits has no option download"),
    ("+logger.csv.dir=x", "unknown key logger.csv.dir: logger.csv has no option dir (its options: none)"),
    ("logger=wandb logger.wandb.mode=sometimes", "logger.wandb.mode must be online, offline or disabled (or null)"),
    (
        "logger=mlflow +logger.mlflow.uri=x",
        "unknown key logger.mlflow.uri: logger.mlflow has no option uri (its "
        "options: tracking_uri, experiment, run_name)",
    ),
    ("logger=mlflow logger.mlflow.experiment=null", "logger.mlflow.experiment must be a string, got None"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_key_or_value_refused_in_one_line(tmp_path, args, message):
    """What the command line runs before torch: one line naming the key (it prints it and exits 2, see
    tests/test_cli.py), nothing written."""
    cfg = compose_config(*args.split())
    with pytest.raises(ConfigError) as err:
        config.check_launch(cfg, lambda: None, tmp_path / "run")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()


GOOD = [
    (),
    ("hparams_search=phi_optuna",),
    ("+trainer.strategy=ddp", "+trainer.num_nodes=2"),
    ("optim.name=sgd", "+optim.momentum=0.9", "+optim.nesterov=true", "+optim.weight_decay=5e-4"),
    ("optim.name=adamw", "+optim.betas=[0.8,0.9]", "+optim.amsgrad=true"),
    ("schedule.name=multistep", "+schedule.at=[0.75]"),
    ("schedule.name=cosine",),
    ("trainer.precision=bf16-mixed",),
    ("trainer.precision=32",),
    ("trainer.devices=auto",),
    ("trainer.devices=[0,1]",),
    ("trainer.accelerator=gpu",),
    ("epochs=2.0",),
    ("phi=-5e-5",),
    ("phi='1e-3'",),
    ("pack=true", "phi=[0,1e-3]", "strategy=[mask0,gradual]", "strategy.trained_fraction=0.5"),
    ("prune.method=structured", "rewind.epoch=2", "prune.output_base=0.5", "reinit.magnitude=0.01"),
    ("model=conv2", "prune.conv_base=0.9", "prune.output_base=0.9"),
    ("rewind.step=500",),
    ("epochs=3", "rewind.epoch=2"),
    ("dry_run=phi", "dry_run_grid.phis=[0,5e-4]", "dry_run_grid.strategies=[mask0,lrr]", "fault.fail_round=2"),
    ("model=vgg16_pretrained", "model.batch_norm=true", "model.verify_weights=false", "model.weights_path=/w.pth"),
    ("dataset=cifar10", "dataset.augment=true", "dataset.pipeline=torchvision", "+dataset.num_workers=2"),
    ("dataset=npz", "dataset.path=/d.npz"),
    ("dataset=synthetic", "dataset.shape=[3,8,8]"),
    (
        "logger=[tensorboard,csv,mlflow,wandb]",
        "logger.mlflow.tracking_uri=http://127.0.0.1:5000",
        "logger.wandb.mode=offline",
        "logger.wandb.entity=me",
    ),
    ("logger=[]",),
    ("logger=csv", "pack=true", "phi=[0,1]"),
]


@pytest.mark.parametrize("args", GOOD, ids=" ".join)
def test_good_settings_pass(tmp_path, monkeypatch, args):
    """(An MLflow server is taken to answer and W&B to be logged in: tests/test_precheck.py checks both.)"""
    from phicenter.loggers import reach

    monkeypatch.setattr(reach, "answers", lambda host, port, timeout=0: None)
    monkeypatch.setattr(reach, "wandb_logged_in", lambda: True)
    config.check_launch(compose_config(*args), lambda: None, tmp_path)


@pytest.mark.parametrize(
    "group,name", [(g, n) for g in ("strategy", "model", "dataset", "experiment") for n in names(g)]
)
def test_every_shipped_config_passes(group, name):
    extra = ["dataset.path=/d.npz"] if name == "npz" else []
    extra += [f"{group}._target_=mypkg.module.function"] if name == "custom" else []
    config.check(compose_config(f"{group}={name}", *extra))


def test_unknown_strategy_keeps_hydras_list_of_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as err:
        compose_config("strategy=nope")
    assert {"mask0", "mask1", "gradual", "standard", "lth", "random"} <= set(err.value.options)


def test_a_new_strategy_option_is_checked_for_free(monkeypatch):
    """One declared field: the command line checks it, the strategy gets it."""
    from phicenter.method import strategies

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WideOptions(options.StrategyOptions):
        width: PosInt = 3

    monkeypatch.setitem(options.STRATEGY_OPTIONS, "wide", WideOptions)
    monkeypatch.setitem(strategies.STRATEGIES, "wide", None)

    @strategies.register("wide")
    class Wide(strategies.Mask0):
        pass

    tree = config.resolved(compose_config())
    assert schema.check_tree(dict(tree, strategy={"name": "wide", "width": 4}))["strategy"]["width"] == 4
    with pytest.raises(ConfigError, match=r"^strategy.width must be >= 1, got 0$"):
        schema.check_tree(dict(tree, strategy={"name": "wide", "width": 0}))
    with pytest.raises(
        ConfigError,
        match=r"strategy wide has no option depth \(its options: pruned_fill, "
        r"rewind_other, width\)",
    ):
        schema.check_tree(dict(tree, strategy={"name": "wide", "depth": 1}))
    assert strategies.build("wide", width=5).options.width == 5 and strategies.build("wide").options.width == 3
    with pytest.raises(ValueError, match="strategy.width must be >= 1"):
        strategies.build("wide", width=0)


def test_schema_imports_no_torch_hydra_or_omegaconf():
    code = (
        "import sys; import phicenter.config, phicenter.method.options, phicenter.loggers; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'omegaconf', 'hydra', 'mlflow', "
        "'wandb', 'tensorboard'})); "
        "import phicenter.train; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["[]", "False"]  # and the command line imports torch after its checks


# ---------------------------------------------------------------- declarations agree with conf/ and the code


def normalised(cls, key: str, value):
    tp, _ = declared(cls)[key]
    return check_value(key, value, tp)


def env_default(value):
    """`${oc.env:NAME,DEFAULT}` stands for DEFAULT when NAME is unset."""
    if isinstance(value, str) and value.startswith("${oc.env:") and value.endswith("}") and "," in value:
        return value[:-1].split(",", 1)[1]
    return value


def flat_leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# config.yaml's settings whose values are not the declared defaults on purpose: the optimizer, schedule and
# Trainer declare torch's and Lightning's own defaults, which the default experiment overrides
NOT_DEFAULTS = ("defaults", "hydra", "optim", "schedule", "trainer")


def conf_trees() -> list[tuple[str, dict]]:
    """Every conf/ file that holds settings, as the part of a config tree it is: config.yaml at the top, a group
    file (conf/model/conv2.yaml) under its group's key."""
    out = [("config.yaml", OmegaConf.to_container(OmegaConf.load(CONF / "config.yaml")))]
    for group in ("strategy", "model", "dataset", "logger"):
        for name in names(group):
            node = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
            out.append((f"{group}/{name}.yaml", {group: node}))
    return out


@pytest.mark.parametrize("label,tree", conf_trees(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_conf_file_holds_the_declared_defaults(label, tree):
    """One generic check of every registry's copies: each setting a conf/ file writes is the default its
    declaration (phicenter.config.schema, groups, method.options, by the name a group file picks) gives it."""
    for key, value in flat_leaves(tree).items():
        if key.split(".")[0] in NOT_DEFAULTS or value == "???" or value == {}:
            continue  # ???: a value every config must set; {}: a group with no options (logger.csv)
        declared_default = schema.default_of(tree, key)
        assert declared_default is not dataclasses.MISSING or key.endswith(".name"), f"{label}: {key} is not declared"
        if key.endswith(".name"):
            assert value == label.split("/")[-1].removesuffix(".yaml"), f"{label}: name {value}"
            continue
        tp = spec_type(tree, key)
        assert check_value(key, env_default(value), tp) == declared_default, f"{label}: {key}"


def spec_type(tree: dict, key: str):
    """The declared type of a dotted key (ByName groups picked by the tree's names)."""
    from phicenter.spec import by_name

    cls, node = schema.Config, tree
    *heads, last = key.split(".")
    for head in heads:
        tp = declared(cls)[head][0]
        named = by_name(tp)
        node = node.get(head) or {}
        cls = named.registry[node["name"]] if named else group_in(tp)
    return declared(cls)[last][0]


def test_registries_match_the_code():
    """Each registry's names: its declarations, its code and its conf/ files (one per name)."""
    from phicenter import data, loggers, models
    from phicenter.method.strategies import STRATEGIES

    assert names("strategy") == sorted(options.STRATEGY_OPTIONS) == sorted(STRATEGIES)
    assert names("model") == sorted(MODEL_OPTIONS) == sorted(models.MODELS)
    assert names("dataset") == sorted(DATASET_OPTIONS) == sorted(data.DATASETS)
    assert names("logger") == sorted(loggers.SINKS) == sorted(declared(schema.Loggers))
    for name in names("logger"):  # conf/logger/<name>.yaml: one key, its name, with all its options
        node = OmegaConf.to_container(OmegaConf.load(CONF / "logger" / f"{name}.yaml"))
        assert list(node) == [name] and loggers.SINKS[name].key == name
        group = group_in(declared(schema.Loggers)[name][0])
        assert group is loggers.SINKS[name].Options and set(node[name] or {}) == set(declared(group)), name
    assert compose_config().logger == {"tensorboard": {}}  # the default: TensorBoard alone


def keyword_defaults(fn, skip=()) -> dict:
    return {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty and n not in skip
    }


def test_registered_code_takes_only_declared_options():
    """Every keyword a model or dataset function takes is declared (so it is checked); a keyword's default is the
    declaration's own value (written there once: `hidden=FcLotOptions.hidden`), none of its own."""
    from phicenter import data, models

    pairs = [(name, fn, MODEL_OPTIONS[name]) for name, fn in models.MODELS.items()]
    pairs += [(name, fn, DATASET_OPTIONS[name]) for name, fn in data.DATASETS.items()]
    pairs.append(("dataset", data.load, DatasetOptions))
    for name, fn, cls in pairs:
        fields = declared(cls)
        for key, value in keyword_defaults(fn).items():
            assert key in fields, f"{name}: {key} is not declared"
            if default(fields[key][1]) is not dataclasses.MISSING:  # npz's path: required in a config
                assert value is getattr(cls, key), f"{name}.{key}: a default of its own"


def test_optimizer_options_are_torchs_keywords():
    from phicenter.engine import module

    assert set(module.OPTIMIZERS) == set(groups.OPTIMIZERS)
    for name, cls in groups.OPTIMIZERS.items():
        torch_defaults = keyword_defaults(module.OPTIMIZERS[name])
        for key, (_, f) in declared(cls).items():
            if key == "name":  # optim=NAME: which optimizer, not one of its keywords
                continue
            assert key in torch_defaults, f"{name}: torch takes no {key}"
            if key != "fused":  # phicenter's fused: true picks torch's fused implementation where there is one
                assert default(f) == torch_defaults[key], f"{name}.{key}"


# ---------------------------------------------------------------- the one list of execution settings


def test_folder_name_exclusions_are_derived_from_execution_keys():
    exclude = OmegaConf.load(CONF / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    assert sorted(exclude) == sorted(config.folder_name_excluded())
    assert "eval_batch_size" in exclude and "fault.fail_round" not in exclude  # a fault test sweeps it


def test_every_execution_key_is_declared():
    top = declared(schema.Config)
    regs = {"trainer": {"": schema.Trainer}, "dataset": DATASET_OPTIONS, "optim": groups.OPTIMIZERS}
    for key in config.EXECUTION_KEYS:
        head, _, rest = key.partition(".")
        assert head in top, key
        if rest:
            assert any(rest in declared(cls) for cls in regs[head].values()), key


def test_pack_keys_are_execution_keys():
    from phicenter.engine import cohort

    assert all(config.is_execution_key(k) for k in config.PACK_KEYS)
    assert tuple(cohort.PACK_KEYS) == config.PACK_KEYS


def test_report_rows_ignore_execution_settings(tmp_path):
    """Seeds run on two machines (compile, fused, accelerator, eval batch) are one experiment in the report."""
    from phicenter.analysis import runs as report

    base = config.recorded_config(compose_config("epochs=2", "prune.iterations=1"))
    runs = []
    for seed, extra in enumerate(
        (
            {},
            {"compile": True, "eval_batch_size": 500},
            {"optim": dict(base["optim"], fused=False), "trainer": dict(base["trainer"], accelerator="gpu", devices=2)},
        )
    ):
        rounds = [{"round": r, "val_acc": 0.9, "test_acc": 0.9, "flipped_by_phi": None} for r in range(2)]
        path = tmp_path / str(seed) / "results.json"
        path.parent.mkdir()
        path.write_text(
            json.dumps(
                {"config": dict(base, seed=seed, **extra), "rounds": rounds, "final": rounds[-1], "status": "complete"}
            )
        )
        runs.append(report.read_run(path))
    other = dict(base, optim=dict(base["optim"], lr=0.5))
    path = tmp_path / "lr" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"config": other, "rounds": [], "final": {"test_acc": 0.9}, "status": "complete"}))
    runs.append(report.read_run(path))
    report.label(runs)
    assert len({(r.dataset, r.row, r.col) for r in runs[:3]}) == 1
    assert runs[3].row != runs[0].row and "optim.lr=0.5" in runs[3].row


def test_hparams_lead_with_the_grid_axes_and_drop_execution_settings():
    resolved = config.recorded_config(
        compose_config(
            "strategy=gradual", "phi=5e-5", "seed=3", "threads=2", "schedule.name=multistep", "+schedule.at=[0.5]"
        )
    )
    hp = config.hparams(resolved)
    assert list(hp)[:5] == ["phi", "strategy", "seed", "model", "dataset"]  # a single run leads with phi, strategy
    assert [hp[k] for k in list(hp)[:5]] == [5e-5, "gradual", 3, "fc_lot", "digits"]
    assert hp.lead == ("phi", "strategy")
    assert hp["optim.lr"] == 1.2e-3 and hp["strategy.trained_fraction"] == 0.7 and hp["prune.method"] == "magnitude"
    assert hp["prune.output_base"] == "null" and hp["schedule.at"] == "[0.5]"
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())
    for gone in (
        "threads",
        "compile",
        "data_dir",
        "eval_batch_size",
        "optim.fused",
        "trainer.accelerator",
        "trainer.devices",
        "checkpoint.keep_all",
        "pack",
        "fault.fail_round",
        "strategy.name",
    ):
        assert gone not in hp, gone
    assert "trainer.precision" in hp and "optim.name" in hp


def test_keys_added_with_their_default_leave_old_runs_resumable():
    now = config.recorded_config(compose_config())
    before = json.loads(json.dumps(now))
    del before["rewind"], before["prune"]["method"]
    assert config.config_changes(before, now) == []
    assert config.config_changes(before, dict(now, rewind={"epoch": 2})) == ["rewind.epoch: (absent) -> 2"]
    adam = dict(now, optim=dict(now["optim"], momentum=0.9))
    assert config.config_changes(now, adam) == ["optim.momentum: (absent) -> 0.9"]
