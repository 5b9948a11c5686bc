"""Loggers: TensorBoard (the default), CSV, MLflow and W&B each get the same scalars and hparams, read back
from what each wrote (TensorBoard's events, the CSV file, MLflow through its client, W&B's offline run
files); a failed run relaunched appends to the same run in each; a cohort gets one run per variant; a
missing extra is refused in one line; and the loggers stay out of round keys, folder names and hparams."""

from __future__ import annotations

import csv
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tests.cli import ROOT, env, results, train

from phicenter import config

RUN = ["threads=1", "epochs=1", "prune.iterations=2", "round_store.enabled=false"]
ALL = "logger=[tensorboard,csv,mlflow,wandb]"


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """W&B offline, its own files under a temporary folder; no MLflow store but the one each test names."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(home / var.lower()))
        for var in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        yield home


# ---------------------------------------------------------------- what each logger should hold


def expected(res: dict) -> dict[tuple[str, int], float]:
    """{(tag, step): value} from results.json, by hand: epoch rows at round * epochs + epoch, the round's
    metrics and per-layer values at its last epoch, the final metrics at step 0."""
    out = {}
    epochs = res["config"]["epochs"]
    for r in res["rounds"]:
        for row in r["epochs"]:
            step = r["round"] * epochs + row["epoch"]
            out.update({(f"epoch/{k}", step): v for k, v in row.items() if k not in ("round", "epoch")})
            out[("epoch/round", step)] = r["round"]
        last = (r["round"] + 1) * epochs - 1
        for k in (
            "val_acc",
            "test_acc",
            "sparsity",
            "effective_sparsity",
            "flipped_by_phi",
            "flipped_vs_init",
            "dead_zone",
        ):
            if r[k] is not None:
                out[(f"round/{k}", last)] = r[k]
        for name, layer in r["layers"].items():
            out.update(
                {
                    (f"layer/{name}/{k}", last): v
                    for k, v in layer.items()
                    if k in ("sparsity", "effective_sparsity", "flipped_by_phi", "flipped_vs_init", "dead_zone")
                }
            )
    out[("final/val_acc", 0)] = res["final"]["val_acc"]
    out[("final/test_acc", 0)] = res["final"]["test_acc"]
    return out


def once(pairs: list[tuple[tuple[str, int], float]]) -> dict:
    """The (tag, step) -> value pairs as a dict, each pair logged once."""
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)[:5]
    return dict(pairs)


# ---------------------------------------------------------------- reading each logger back


def tensorboard(folder: Path) -> tuple[dict, dict, int]:
    """({(tag, step): value}, hparams, events files) of a run's tb/ folder, from the records themselves."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    pairs, hp, files = [], {}, sorted((folder / "tb").glob("events.out.tfevents.*"))
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    start = HParamsPluginData.FromString(v.metadata.plugin_data.content).session_start_info
                    hp.update({k: getattr(x, x.WhichOneof("kind")) for k, x in start.hparams.items()})
                else:
                    pairs.append(((v.tag, event.step), v.simple_value))
    return once(pairs), hp, len(files)


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`), as wandb's own protobuf Record: a header (":W&B",
    magic, version), then LevelDB's log format (32 KiB blocks; each chunk a 7-byte header: crc, length,
    type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        assert len(chunk) == length, f"{path} ends inside a record"
        pos += 7 + length
        parts = [chunk] if kind in (1, 2) else parts + [chunk]
        if kind in (1, 4):
            yield pb.Record.FromString(b"".join(parts))
            parts = []


def wandb_offline(folder: Path) -> list[dict]:
    """Each launch's offline run under folder/wandb, in the order they started: its id, config, history rows
    ({key: value}), summary and exit code."""
    launches = []
    for run_dir in folder.glob("wandb/offline-run-*"):
        (path,) = run_dir.glob("run-*.wandb")
        out = {"config": {}, "rows": [], "summary": {}, "exit_code": None}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out.update(id=rec.run.run_id, name=rec.run.display_name, start=rec.run.start_time.ToNanoseconds())
                out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "config":
                out["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
            elif kind == "history":
                out["rows"].append(
                    {("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in rec.history.item}
                )
            elif kind == "summary":
                out["summary"].update(
                    {("/".join(u.nested_key) or u.key): json.loads(u.value_json) for u in rec.summary.update}
                )
            elif kind == "exit":
                out["exit_code"] = rec.exit.exit_code
        launches.append(out)
    return sorted(launches, key=lambda x: x["start"])


def wandb_scalars(launches: list[dict]) -> dict:
    return once(
        [
            ((k, row["step"]), v)
            for launch in launches
            for row in launch["rows"]
            for k, v in row.items()
            if k != "step" and not k.startswith("_")
        ]
    )


def csv_scalars(folder: Path) -> dict:
    with open(folder / "csv" / "scalars.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "tag", "value", "wall_time"] and ["step", "tag", "value", "wall_time"] not in rows[1:]
    return once([((tag, int(step)), float(value)) for step, tag, value, _ in rows[1:]])


def mlflow_runs(uri: str, experiment: str = "phicenter") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def mlflow_scalars(client, run) -> dict:
    return once(
        [((key, m.step), m.value) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
    )


def same_as_float32(got: dict, want: dict) -> bool:
    """TensorBoard keeps 32-bit floats."""
    return got.keys() == want.keys() and all(np.float32(want[k]) == np.float32(got[k]) for k in want)


def ids(folder: Path) -> dict:
    return json.loads((folder / "loggers.json").read_text())


# ---------------------------------------------------------------- one run, failed and resumed, every logger


@pytest.fixture(scope="module")
def resumed(offline, tmp_path_factory):
    """A run with every logger whose first launch fails as round 1 starts (round 0 logged), then the same
    command again, which resumes it to the end."""
    d = tmp_path_factory.mktemp("resumed")
    run_dir, uri = d / "run", f"sqlite:///{d / 'mlflow.db'}"
    args = [*RUN, ALL, f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={run_dir}"]
    first = train(*args, "fault.fail_round=1", check=False)
    assert first.returncode == 1 and results(run_dir)["status"] == "failed"
    assert len(results(run_dir)["rounds"]) == 1
    second = train(*args)
    res = results(run_dir)
    assert res["status"] == "complete" and "resuming" in second.stdout + second.stderr
    return {
        "dir": run_dir,
        "uri": uri,
        "res": res,
        "want": expected(res),
        "out": second.stdout + second.stderr,
        "hparams": config.hparams(res["config"]),
    }


def test_tensorboard_holds_every_scalar_once_and_the_hparams(resumed):
    scalars, hp, files = tensorboard(resumed["dir"])
    assert files == 2  # one events file per launch, in one run folder: one run in TensorBoard
    assert same_as_float32(scalars, resumed["want"])
    assert {("round/flipped_by_phi", 1), ("layer/fc1/dead_zone", 2), ("epoch/val_acc", 0)} <= scalars.keys()
    assert ("round/flipped_by_phi", 0) not in scalars  # round 0 re-signs nothing: no value, not a zero
    want = {
        k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for k, v in resumed["hparams"].items()
    }
    assert hp == want and hp["strategy"] == "mask0" and hp["epochs"] == 1.0
    assert {k: type(v) for k, v in hp.items()} == {k: type(v) for k, v in want.items()}  # a bool a bool


def test_csv_holds_the_same_scalars_and_hparams(resumed):
    assert csv_scalars(resumed["dir"]) == resumed["want"]  # exact: written as Python floats
    saved = json.loads((resumed["dir"] / "csv" / "hparams.json").read_text())
    assert saved == {
        "hparams": resumed["hparams"],
        "metrics": {
            "final/val_acc": resumed["res"]["final"]["val_acc"],
            "final/test_acc": resumed["res"]["final"]["test_acc"],
        },
    }


def test_mlflow_holds_one_run_with_the_same_scalars_and_params(resumed):
    client, runs = mlflow_runs(resumed["uri"])
    assert len(runs) == 1  # the relaunch appended to the run of the first launch
    run = runs[0]
    assert run.info.run_id == ids(resumed["dir"])["mlflow"]["id"] and run.info.status == "FINISHED"
    assert run.info.run_name == str(resumed["dir"])  # the run folder (outside the working folder: absolute)
    assert run.data.tags["phicenter.run_dir"] == str(resumed["dir"])
    assert run.data.params == {k: str(v) for k, v in resumed["hparams"].items()}
    assert mlflow_scalars(client, run) == resumed["want"]
    assert f"{sys.executable} -m mlflow ui --backend-store-uri {resumed['uri']}" in resumed["out"]


def test_wandb_holds_one_run_with_the_same_scalars_and_config(resumed):
    launches = wandb_offline(resumed["dir"])
    run_id = ids(resumed["dir"])["wandb"]["id"]
    assert len(launches) == 2 and {x["id"] for x in launches} == {run_id}  # two launches, one run
    assert [x["exit_code"] for x in launches] == [1, 0]
    assert all(x["name"] == str(resumed["dir"]) for x in launches)
    assert wandb_scalars(launches) == resumed["want"]
    for launch in launches:
        assert {k: v for k, v in launch["config"].items() if k != "_wandb"} == resumed["hparams"]
    assert launches[-1]["summary"]["final/test_acc"] == resumed["res"]["final"]["test_acc"]
    assert f"{sys.executable} -m wandb sync {resumed['dir']}/wandb/offline-run-*" in resumed["out"]


def test_a_stopped_run_is_marked_so_and_its_relaunch_continues_it(offline, tmp_path):
    """The sinks alone: a launch stopped (SIGTERM: closed with status running) leaves MLflow's run KILLED and
    W&B's exit code 1; the next launch in the same folder takes the same runs up again."""
    from phicenter.loggers import open_sinks

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    loggers = {"mlflow": {"tracking_uri": uri}, "wandb": {}}
    statuses = []
    for launch, (step, status) in enumerate([(0, "running"), (1, "complete")]):
        sinks = open_sinks(tmp_path / "run", loggers, {"phi": 0.5, "strategy": "mask1"})
        client, (run,) = mlflow_runs(uri)
        statuses.append(run.info.status)
        for sink in sinks:
            sink.scalars({"round/val_acc": 0.25 * (launch + 1)}, step)
            sink.close(status)
        statuses.append(mlflow_runs(uri)[1][0].info.status)
    assert statuses == ["RUNNING", "KILLED", "RUNNING", "FINISHED"]
    assert mlflow_scalars(client, run) == {("round/val_acc", 0): 0.25, ("round/val_acc", 1): 0.5}
    assert run.data.params == {"phi": "0.5", "strategy": "mask1"}
    launches = wandb_offline(tmp_path / "run")
    assert [x["exit_code"] for x in launches] == [1, 0]
    assert {x["id"] for x in launches} == {ids(tmp_path / "run")["wandb"]["id"]}
    assert wandb_scalars(launches) == {("round/val_acc", 0): 0.25, ("round/val_acc", 1): 0.5}


# ---------------------------------------------------------------- a cohort: one run per variant


def test_a_cohort_gets_one_run_per_variant_in_each_logger(offline, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tmp_path / "job"
    train(
        *RUN,
        "pack=true",
        "phi=[0,0.02]",
        "logger=[csv,mlflow,wandb]",
        f"logger.mlflow.tracking_uri={uri}",
        f"hydra.run.dir={job}",
    )
    variants = ["phi=0.0,strategy=mask0", "phi=0.02,strategy=mask0"]
    client, runs = mlflow_runs(uri)
    assert sorted(r.info.run_name for r in runs) == [str(job / v) for v in variants]
    for v in variants:
        folder, res = job / v, results(job / v)
        want = expected(res)
        assert not (folder / "tb").exists()  # not picked
        (run,) = [r for r in runs if r.info.run_name == str(folder)]
        assert run.info.run_id == ids(folder)["mlflow"]["id"] and run.data.params["phi"] == str(res["config"]["phi"])
        assert mlflow_scalars(client, run) == want
        (launch,) = wandb_offline(folder)
        assert launch["id"] == ids(folder)["wandb"]["id"] and launch["config"]["phi"] == res["config"]["phi"]
        assert wandb_scalars([launch]) == want
        assert csv_scalars(folder) == want
    assert ids(job / variants[0])["wandb"]["id"] != ids(job / variants[1])["wandb"]["id"]
    assert not (job / "loggers.json").exists()


# ---------------------------------------------------------------- MLflow against a tracking server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free localhost port, its store and artifacts under tmp_path; stopped at the end."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.skip(f"mlflow server did not start on {url}: {(tmp_path / 'server.log').read_text()[-500:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server and the workers it started, in the session it leads
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        log.close()


def test_mlflow_against_a_tracking_server(offline, tmp_path, mlflow_server):
    run_dir = tmp_path / "run"
    proc = train(
        *RUN,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "logger.mlflow.experiment=served",
        f"hydra.run.dir={run_dir}",
    )
    res = results(run_dir)
    client, runs = mlflow_runs(mlflow_server, "served")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params == {k: str(v) for k, v in config.hparams(res["config"]).items()}
    assert mlflow_scalars(client, runs[0]) == expected(res)
    assert not (run_dir / "tb").exists() and f"open {mlflow_server}" in proc.stdout + proc.stderr


# ---------------------------------------------------------------- refused before any work


def test_a_missing_extra_is_refused_in_one_line(tmp_path):
    """mlflow hidden from the command line: one line naming the install command, exit 2, no run folder."""
    code = (
        "import sys, runpy; sys.modules['mlflow'] = None; "
        f"sys.argv = ['train', 'logger=[tensorboard,mlflow]', 'hydra.run.dir={tmp_path / 'run'}']; "
        "runpy.run_module('phicenter.train', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "phicenter train: error: logger=mlflow needs the mlflow package, which is not installed; install it with: "
        "pip install 'phicenter[mlflow]'"
    ]
    assert not (tmp_path / "run").exists()


def test_loggers_stay_out_of_round_keys_folder_names_hparams_and_the_same_run_check():
    from tests.cli import compose_config

    from phicenter.engine.reuse import training_settings

    extra = [ALL, "logger.mlflow.tracking_uri=sqlite:///x.db", "logger.wandb.project=p", "logger.wandb.mode=offline"]
    folders = [compose_config("phi=0.02", *e, hydra=True).hydra.job.override_dirname for e in ([], extra)]
    plain, logged = (compose_config("phi=0.02", *e) for e in ([], extra))
    assert folders == ["phi=0.02", "phi=0.02"]
    assert training_settings(logged) == training_settings(plain)
    before, now = config.recorded_config(plain), config.recorded_config(logged)
    assert now["logger"]["wandb"]["project"] == "p" and "logger" in before  # recorded in results.json
    assert config.hparams(now) == config.hparams(before)
    assert config.config_changes(before, now) == []  # a relaunch may change its loggers


def tensorboard_table(folder: Path) -> tuple[list[tuple[str, int]], dict]:
    """TensorBoard's HParams table of a run folder's events, as its hparams plugin orders it: [(column, data
    type)], and the run's {name: protobuf Value}."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    experiment, values = None, {}
    for path in sorted((folder / "tb").glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            for v in Event.FromString(data[pos + 12 : pos + 12 + n]).summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    hp = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    experiment = hp.experiment if hp.HasField("experiment") else experiment
                    values.update(hp.session_start_info.hparams)
            pos += 12 + n + 4
    _sort_and_reduce_to_hparams_limit(experiment)
    return [(i.name, i.type) for i in experiment.hparam_infos], values


def test_tensorboard_hparams_lead_with_what_the_sweep_varies_and_bools_are_bools(tmp_path):
    """TensorBoard orders its HParams columns by `differs`, then by name: a single run's table leads with phi
    and strategy, a multirun job's with the keys its sweep sets (Hydra's overrides of the job; execution
    settings and loggers not), the rest after; a bool is a bool column, not 0.0/1.0."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict
    from tensorboard.plugins.hparams import api_pb2
    from tests.cli import compose_config

    from phicenter.loggers import open_sinks

    resolved = config.recorded_config(compose_config("phi=0.02", "strategy=mask1"))
    job = compose_config("phi=0.02", "strategy=mask1", "seed=3", "optim=sgd", hydra=True)
    with open_dict(job):
        job.hydra.mode = "MULTIRUN"
        job.hydra.overrides.task = ["seed=3", "optim=sgd", "threads=1", "logger=[tensorboard,csv]", "phi_abs=0.02"]
    single = config.hparams(resolved)
    HydraConfig.instance().set_config(job)
    try:
        swept = config.hparams(resolved)
    finally:
        HydraConfig.instance().cfg = None
    assert list(single)[:2] == ["phi", "strategy"] and single.lead == ("phi", "strategy")
    assert swept.lead == ("seed", "optim.name", "phi") and list(swept)[:3] == list(swept.lead)
    assert dict(swept) == dict(single) and single["dataset.augment"] is False
    for name, params in (("single", single), ("swept", swept)):
        (sink,) = open_sinks(tmp_path / name, {"tensorboard": {}}, params)
        sink.hparams(params, {"final/val_acc": 0.9})
        sink.close("complete")
    columns, values = tensorboard_table(tmp_path / "single")
    names = [c for c, _ in columns]
    assert names[:2] == ["phi", "strategy"] and names[2:] == sorted(names[2:]) and "batch_size" in names[2:]
    assert dict(columns)["dataset.augment"] == api_pb2.DATA_TYPE_BOOL
    assert values["dataset.augment"].WhichOneof("kind") == "bool_value"
    assert values["phi"].number_value == 0.02 and values["strategy"].string_value == "mask1"
    names = [c for c, _ in tensorboard_table(tmp_path / "swept")[0]]
    assert names[:3] == ["optim.name", "phi", "seed"] and "strategy" in names[3:]  # by name among the lead


def test_jobs_that_start_together_share_a_new_sqlite_store(tmp_path):
    """Four processes open the same new sqlite store at once (parallel jobs of a multirun): each gets its run."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    code = (
        "import sys; from pathlib import Path; from phicenter.loggers import open_sinks; "
        f"(s,) = open_sinks(Path(sys.argv[1]), {{'mlflow': {{'tracking_uri': '{uri}'}}}}, {{'job': sys.argv[1]}}); "
        "s.scalars({'round/val_acc': 0.5}, 3); s.close('complete')"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / f"job{i}")],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    client, runs = mlflow_runs(uri)
    assert sorted(r.data.params["job"] for r in runs) == [str(tmp_path / f"job{i}") for i in range(4)]
    assert all(r.info.status == "FINISHED" and r.data.metrics == {"round/val_acc": 0.5} for r in runs)


def test_resume_false_starts_new_logger_runs(tmp_path):
    """resume=false starts the folder over: the loggers' run ids go with its checkpoints."""
    from phicenter.engine.rundir import RunFolder

    (tmp_path / "loggers.json").write_text(json.dumps({"mlflow": {"id": "abc"}}))
    RunFolder(tmp_path).start_over()
    assert not (tmp_path / "loggers.json").exists()
