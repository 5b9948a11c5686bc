"""python -m phicenter.export never overwrites a file unasked, and an overwrite keeps the file's permissions;
a damaged results.json is one line naming the file and what is wrong (exit 2), never a traceback.

One structured fc_lot run (1 epoch, rounds 0 and 1) serves every test: its masked ticket, its compact ticket
and the ONNX model are each of the files export writes.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from tests.cli import compose_config

from phicenter import export
from phicenter.io import FILE_MODE

ERROR = f"{export.PROG}: error: "


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from phicenter.engine.loop import run as train

    folder = tmp_path_factory.mktemp("export_safety") / "run"
    cfg = compose_config(
        "round_store.enabled=false", "threads=1", "epochs=1", "prune.iterations=1", "prune.method=structured"
    )
    train(cfg, folder)
    return folder


def refused(capsys, argv, *fragments: str) -> str:
    """Exit 2 and one line on stderr, holding each fragment; nothing on stdout."""
    assert export.main([str(a) for a in argv]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith(ERROR), err
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def old_file(path: Path, bits: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the user's own file")
    os.chmod(path, bits)
    return path


# what each export writes: its arguments (OUT: the tmp folder's ticket) and the files it writes
WRITES = {
    "default path": ([], ["RUN/tickets/round_001.safetensors"]),
    "--out": (["--out", "OUT/t.safetensors"], ["OUT/t.safetensors"]),
    "--compact": (["--compact"], ["RUN/tickets/round_001.compact.safetensors"]),
    "--onnx": (["--compact", "--onnx", "--out", "OUT/c.safetensors"], ["OUT/c.safetensors", "OUT/c.onnx"]),
}


def _paths(spec: list[str], run: Path, out: Path) -> list[Path]:
    return [Path(s.replace("RUN", str(run)).replace("OUT", str(out))) for s in spec]


@pytest.mark.parametrize("case", WRITES)
def test_a_file_there_is_kept_without_force_and_keeps_its_mode_with_it(run, tmp_path, capsys, monkeypatch, case):
    """Each file export writes: refused while it stands (before any work, nothing written), overwritten with
    --force, the new file with the old one's permission bits (0600 stays 0600, not the umask's 0644)."""
    args, written = WRITES[case]
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    argv = [folder, *(a.replace("OUT", str(tmp_path)) for a in args)]
    targets = _paths(written, folder, tmp_path)
    for there in targets:  # each target in turn stands, the others not
        for t in targets:
            t.unlink(missing_ok=True)
        old_file(there, 0o600)
        with monkeypatch.context() as m:
            m.setattr(export, "build_files", lambda *a: pytest.fail("the work began before the refusal"))
            refused(capsys, argv, f"{there}: exists already (--force overwrites it)")
        assert there.read_bytes() == b"the user's own file" and mode(there) == 0o600
        assert [t for t in targets if t.exists()] == [there]
    bits = [0o600, 0o640][: len(targets)]
    for t, b in zip(targets, bits):
        old_file(t, b)
    assert export.main([str(a) for a in [*argv, "--force"]]) == 0, capsys.readouterr().err
    for t, b in zip(targets, bits):
        assert t.read_bytes() != b"the user's own file" and mode(t) == b, (t, oct(mode(t)))
    for t in targets:  # a file written where none stood gets the usual mode
        t.unlink()
    assert export.main([str(a) for a in [*argv, "--force"]]) == 0, capsys.readouterr().err
    assert [mode(t) for t in targets] == [FILE_MODE] * len(targets)


def test_a_folder_where_the_file_goes_is_refused_even_with_force(run, tmp_path, capsys):
    (tmp_path / "t.safetensors").mkdir()
    refused(capsys, [run, "--out", tmp_path / "t.safetensors", "--force"], "t.safetensors: a folder stands there")
    assert not any((tmp_path / "t.safetensors").iterdir())


def _truncated(record: dict) -> str:
    text = json.dumps(record)
    return text[: len(text) // 2]


def _edited(change):
    def edit(record: dict) -> str:
        change(record)
        return json.dumps(record)

    return edit


DAMAGED = {  # results.json's text from the run's record -> what the one line says
    "a list": (lambda r: "[]", "not a phicenter run's results (it holds a list, not an object)"),
    "null": (lambda r: "null", "(it holds null, not an object)"),
    "no config": (lambda r: '{"rounds": 5}', "(no config)"),
    "rounds a number": (_edited(lambda r: r.update(rounds=5)), "(rounds is a whole number, not a list)"),
    "config a string": (lambda r: '{"config": "x"}', "(config is a string, not an object)"),
    "truncated": (_truncated, "not valid JSON, truncated or damaged"),
    "not text": (lambda r: "\udcff", "not valid JSON"),
    "no model name": (_edited(lambda r: r["config"]["model"].pop("name")), "(no config.model.name)"),
    "phi a string": (_edited(lambda r: r["config"].update(phi="0.1")), "(config.phi is a string, not a number)"),
    "classes a boolean": (
        _edited(lambda r: r["data"].update(num_classes=True)),
        "(data.num_classes is a boolean, not a whole number)",
    ),
    "a round not a number": (_edited(lambda r: r["rounds"][0].update(round="x")), "(rounds[0] has no round number"),
    "a round a list": (_edited(lambda r: r["rounds"].__setitem__(1, [])), "(rounds[1] is a list, not a round's"),
    "layers a list": (
        _edited(lambda r: r["rounds"][1].update(layers=[1])),
        "(rounds[1].layers is not an object of layers)",
    ),
    "an unknown model": (
        _edited(lambda r: r["config"]["model"].update(name="nope")),
        "config.model does not build a network here (unknown model 'nope'",
    ),
    "a config the schema refuses": (
        _edited(lambda r: r["config"]["optim"].update(lr="fast")),
        "its config does not pass the checks (optim.lr must be a number",
    ),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_results_json_is_one_line(run, tmp_path, capsys, case):
    make, message = DAMAGED[case]
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    results = folder / "results.json"
    text = make(json.loads(results.read_text()))
    results.write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(capsys, [folder], f"{results}: ", message)
    assert not (folder / "tickets").exists()


def test_a_round_entry_without_its_sparsity_still_exports(run, tmp_path, capsys):
    """The summary printed after the files are written reads the round's sparsity and accuracy: one not
    recorded is said so, rather than a traceback once the ticket is written."""
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    record = json.loads((folder / "results.json").read_text())
    record["rounds"][1].pop("sparsity")
    (folder / "results.json").write_text(json.dumps(record))
    assert export.main([str(folder)]) == 0, capsys.readouterr().err
    assert "sparsity not recorded" in capsys.readouterr().out
    assert (folder / "tickets" / "round_001.safetensors").is_file()
