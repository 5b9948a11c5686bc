"""Nothing executes on load: every torch.load in phicenter is a safe one (weights_only=True), a planted pickle
payload in a run folder is refused and named on relaunch, and CIFAR batches go through a restricted unpickler."""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.cli import FAST, ROOT, TINY_IMAGES, results, train
from tests.test_data import fake_cifar10

from phicenter import data
from phicenter.io import newest_loadable

RUN = [*FAST, *TINY_IMAGES, "round_store.enabled=false"]
REFUSED = "holds code or objects a safe load refuses"

# ---------------------------------------------------------------- every load in the package is a safe one

PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
PICKLE_CALLS = {"pickle.load", "pickle.loads", "_pickle.load", "_pickle.loads", "pandas.read_pickle"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it imports ('np' -> 'numpy', 'load' -> 'torch.load'), from every import in the file."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """`torch.serialization.load` for an expression naming it, through the file's imports; None otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Each load in `source` that could run code: torch.load without weights_only=True, numpy.load with
    allow_pickle other than False, any plain pickle load, and pickle.Unpickler used other than as the base of
    a class that restricts what it resolves (overrides find_class)."""
    tree = ast.parse(source, filename)
    aliases, found = _aliases(tree), []
    restricted_bases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(f, ast.FunctionDef) and f.name == "find_class" for f in node.body
        ):
            restricted_bases.update(id(b) for b in node.bases)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _dotted(node.func, aliases) or ""
            if name in ("torch.load", "torch.serialization.load") and not _keyword_is(node, "weights_only", True):
                found.append(f"{where}: {name} without weights_only=True")
            if name in ("numpy.load", "numpy.lib.npyio.load") and any(
                k.arg == "allow_pickle" and not _keyword_is(node, "allow_pickle", False) for k in node.keywords
            ):
                found.append(f"{where}: {name} with allow_pickle")
            if name in PICKLE_CALLS or name.split(".")[0] in PICKLE_MODULES - {"pickle", "_pickle"}:
                found.append(f"{where}: {name}")
        if isinstance(node, (ast.Attribute, ast.Name)) and not isinstance(getattr(node, "ctx", None), ast.Store):
            name = _dotted(node, aliases) or ""
            if (
                name.endswith(".Unpickler")
                and name.split(".")[0] in PICKLE_MODULES
                and id(node) not in restricted_bases
            ):
                found.append(f"{where}: {name} that resolves every global")
    return sorted(set(found))


def test_every_load_in_phicenter_is_a_safe_one():
    found = [hit for f in sorted((ROOT / "phicenter").rglob("*.py")) for hit in unsafe_loads(f.read_text(), str(f))]
    assert not found, "loads that could run code:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p)",
        "import torch\ntorch.load(p, weights_only=False)",
        "import torch\ntorch.load(p, weights_only=flag)",
        "import torch as t\nt.load(p, map_location='cpu')",
        "from torch import load\nload(p)",
        "from torch.serialization import load as tl\ntl(p, weights_only=None)",
        "import numpy as np\nnp.load(p, allow_pickle=True)",
        "import numpy\nnumpy.load(p, allow_pickle=ok)",
        "import pickle\npickle.load(f)",
        "import pickle as pk\npk.loads(b)",
        "from pickle import loads\nloads(b)",
        "import pickle\npickle.Unpickler(f).load()",
        "import pickle\nclass U(pickle.Unpickler):\n    pass",
        "from pickle import Unpickler\nu = Unpickler(f)",
        "import joblib\njoblib.load(p)",
    ],
)
def test_the_check_finds_each_unsafe_load(source):
    assert unsafe_loads(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(p, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load(p)\nnp.load(p, allow_pickle=False)",
        "import pickle\nclass U(pickle.Unpickler):\n    def find_class(self, m, n):\n"
        "        raise pickle.UnpicklingError\nU(f).load()\npickle.dumps(x)\nerr = pickle.UnpicklingError",
    ],
)
def test_the_check_passes_safe_loads(source):
    assert not unsafe_loads(source)


# ---------------------------------------------------------------- planted payloads in a run folder


class Payload:
    """What an attacker plants: unpickling it runs a shell command (here: one that creates `marker`)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def test_newest_loadable_refuses_and_names_a_payload(tmp_path):
    marker, bad, good = tmp_path / "ran", tmp_path / "round_002.pt", tmp_path / "round_001.pt"
    torch.save({"round": 2, "model": {}, "x": Payload(marker)}, bad)
    torch.save({"round": 1, "model": {"w": torch.ones(2)}}, good)
    said = []
    found = newest_loadable([bad, good], lambda p: torch.load(p, weights_only=True), said.append)
    assert found[0] == good and torch.equal(found[1]["model"]["w"], torch.ones(2))
    assert len(said) == 1 and said[0].startswith(f"checkpoint {bad} {REFUSED} (UnpicklingError: unsupported GLOBAL")
    assert said[0].endswith("not loaded, falling back to the one before it") and "\n" not in said[0]
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_newest_loadable_reports_garbage_and_a_foreign_pickle_as_unreadable(tmp_path):
    """What the safe loader cannot parse (garbage, a pickle with opcodes it does not know) is not loaded either."""
    marker, garbage, foreign = tmp_path / "ran", tmp_path / "a.pt", tmp_path / "b.pt"
    garbage.write_bytes(b"garbage")
    foreign.write_bytes(pickle.dumps(Payload(marker), protocol=4))
    said = []
    assert newest_loadable([garbage, foreign], lambda p: torch.load(p, weights_only=True), said.append) is None
    assert [s.split(" (")[0] for s in said] == [
        f"checkpoint {p} is unreadable or holds what a safe load refuses" for p in (garbage, foreign)
    ]
    assert all(s.endswith("not loaded, falling back to the one before it") and "\n" not in s for s in said)
    assert not marker.exists()


def _failed_at(run_dir: Path, round_index: int) -> None:
    """A run whose rounds before `round_index` completed, then failed (as a relaunch finds it)."""
    proc = train(*RUN, f"fault.fail_round={round_index}", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 1 and results(run_dir)["status"] == "failed", proc.stderr[-2000:]


def test_a_planted_round_checkpoint_never_runs_and_is_named(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    _failed_at(run_dir, 2)
    planted = run_dir / "checkpoints" / "round_001.pt"
    assert planted.exists()
    torch.save({"round": 1, "model": {}, "payload": Payload(marker)}, planted)
    proc = train(*RUN, f"hydra.run.dir={run_dir}", check=False)
    assert not marker.exists(), "the planted payload ran"
    assert proc.returncode == 0 and f"checkpoint {planted} {REFUSED}" in proc.stderr + proc.stdout, proc.stderr
    assert results(run_dir)["status"] == "complete"  # from round 0's checkpoint, round 1 trained again


def test_a_planted_epoch_checkpoint_never_runs_and_is_named(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "ran"
    _failed_at(run_dir, 1)
    planted = run_dir / "checkpoints" / "round_001_epochs" / "last.ckpt"
    planted.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": 4, "state_dict": {}, "payload": Payload(marker)}, planted)
    proc = train(*RUN, f"hydra.run.dir={run_dir}", check=False)
    assert not marker.exists(), "the planted payload ran"
    assert proc.returncode == 0 and f"checkpoint {planted} {REFUSED}" in proc.stderr + proc.stdout, proc.stderr
    assert results(run_dir)["status"] == "complete"


def test_a_real_epoch_checkpoint_resumes_under_the_safe_load(tmp_path):
    """What Lightning and phicenter write into an epoch checkpoint (callback states, loop and optimizer state,
    the module's extras) all loads with weights_only=True: a relaunch resumes from it."""
    run_dir = tmp_path / "run"
    proc = train(*RUN, "fault.write=1:ENOSPC:round_001.pt", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode != 0
    last = run_dir / "checkpoints" / "round_001_epochs" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert {"state_dict", "optimizer_states", "loops", "callbacks", "phicenter"} <= set(state)
    for ckpt in sorted((run_dir / "checkpoints").glob("round_*.pt")):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    proc = train(*RUN, f"hydra.run.dir={run_dir}")
    assert f"resuming round 1 from {last}" in proc.stderr + proc.stdout
    assert results(run_dir)["status"] == "complete"


# ---------------------------------------------------------------- CIFAR batches


def _plant_cifar(root: Path, marker: Path) -> Path:
    fake_cifar10(root, per_batch=4, n_test=6)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    return bad


def test_a_cifar_batch_with_code_is_refused_by_the_reader(tmp_path):
    marker = tmp_path / "ran"
    bad = _plant_cifar(tmp_path / "data", marker)
    with pytest.raises(data.DataError) as err:
        data.load("cifar10", tmp_path / "data", download=False, val_size=5)
    assert not marker.exists(), "the planted payload ran"
    assert str(err.value).startswith(f"{bad}: holds code or objects a CIFAR batch never does (posix.system)")
    assert "\n" not in str(err.value)


def test_a_cifar_batch_with_code_is_one_line_and_exit_2(tmp_path):
    marker, run_dir = tmp_path / "ran", tmp_path / "run"
    bad = _plant_cifar(tmp_path / "data", marker)
    args = ["dataset=cifar10", "dataset.download=false", "dataset.val_size=5", f"data_dir={tmp_path / 'data'}"]
    proc = train(*args, "threads=1", "epochs=1", f"hydra.run.dir={run_dir}", check=False, timeout=120)
    assert not marker.exists(), "the planted payload ran"
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("phicenter train: error:") and str(bad) in lines[0], proc.stderr


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_protocol_and_numpy_naming_load(tmp_path, protocol):
    """Batches pickled under any protocol, and under numpy 1.x's module names (numpy.core.multiarray, as the
    published files are), read back to the same images."""
    from phicenter.data.cifar_reader import _read_cifar_batch

    x = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    blob = pickle.dumps({"data": x, "labels": [1, 2], "filenames": [b"a.png", b"b.png"]}, protocol=protocol)
    for i, raw in enumerate((blob, blob.replace(b"numpy._core", b"numpy.core") if protocol < 4 else blob)):
        f = tmp_path / f"batch_{i}"
        f.write_bytes(raw)
        xs, ys = _read_cifar_batch(f, "labels")
        assert np.array_equal(xs, x.reshape(-1, 3, 32, 32)) and ys.tolist() == [1, 2]


def test_an_object_array_in_a_cifar_batch_is_refused(tmp_path):
    from phicenter.data.cifar_reader import _read_cifar_batch

    f = tmp_path / "batch"
    f.write_bytes(pickle.dumps({"data": np.array([1, "a"], dtype=object), "labels": [0]}, protocol=2))
    with pytest.raises(data.DataError, match="an object dtype"):
        _read_cifar_batch(f, "labels")


def test_a_full_size_cifar_batch_must_match_its_published_md5(tmp_path, monkeypatch):
    """The published MD5 is checked for a batch of the published size only (here: the generated ones are
    declared to be that size)."""
    from phicenter.data import cifar_reader

    fake_cifar10(tmp_path, per_batch=4, n_test=6)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    monkeypatch.setitem(cifar_reader.PUBLISHED, "cifar-10-batches-py/data_batch_2", ("0" * 32, 4))
    with pytest.raises(data.DataError, match=f"{batch}: MD5 .* is not the published 0{{32}}"):
        cifar_reader._read_cifar_batch(batch, "labels")
    md5 = hashlib.md5(batch.read_bytes()).hexdigest()
    monkeypatch.setitem(cifar_reader.PUBLISHED, "cifar-10-batches-py/data_batch_2", (md5, 4))
    assert len(cifar_reader._read_cifar_batch(batch, "labels")[1]) == 4


def test_the_published_md5s_are_torchvisions():
    import torchvision

    from phicenter.data.cifar_reader import CIFAR, PUBLISHED

    theirs = {}
    for cls, folder, *_ in CIFAR.values():
        c = getattr(torchvision.datasets, cls)
        theirs.update({f"{folder}/{f}": md5 for f, md5 in c.train_list + c.test_list})
    assert {k: v[0] for k, v in PUBLISHED.items()} == theirs
