"""The `phicenter` console script (phicenter/cli.py): its commands run each module's own main, every command's
bad-input line is `phicenter COMMAND: error: ...` however it is launched, and the commands a run prints at its
end work pasted into a shell whose PATH has no virtual environment on it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli import ROOT, env, results

import phicenter
from phicenter.cli import COMMANDS

SCRIPT = Path(sys.executable).parent / "phicenter"  # where the editable install put the console script
TINY = ["round_store.enabled=false", "threads=1", "epochs=1", "prune.iterations=1"]


def phicenter_command(*args: str, cwd=ROOT, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    assert SCRIPT.exists(), f"no {SCRIPT}: install phicenter (pip install --no-deps -e .) to get the console script"
    return subprocess.run(
        [str(SCRIPT), *args], cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=300
    )


def module_command(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )


def pyproject_version() -> str:
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_is_pyprojects(flag):
    proc = phicenter_command(flag)
    assert proc.returncode == 0 and proc.stdout == f"phicenter {pyproject_version()}\n", proc
    assert phicenter.__version__ == pyproject_version()


@pytest.mark.parametrize("args", [[], ["--help"]])
def test_help_lists_the_commands_one_line_each(args):
    proc = phicenter_command(*args)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) == ["train", "report", "export", "bench", "store"]


def test_an_unknown_command_names_the_commands():
    proc = phicenter_command("nonsense")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("phicenter: error: no command 'nonsense'"), proc.stderr
    assert all(name in proc.stderr for name in COMMANDS)


def test_train_takes_the_same_arguments():
    """`phicenter train` is `python -m phicenter.train`: the same overrides compose the same config."""
    proc = phicenter_command("train", "--cfg", "job", "phi=0.001", "strategy=mask1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == module_command("phicenter.train", "--cfg", "job", "phi=0.001", "strategy=mask1").stdout
    assert "phi: 0.001" in proc.stdout and "name: mask1" in proc.stdout
    helped = phicenter_command("train", "--hydra-help")
    assert helped.returncode == 0 and 'eval "$(phicenter train -sc install=bash)"' in helped.stdout


# a bad input of each command, the line it gives (after `COMMAND: error: `)
BAD = {
    "train": (["phi=abc"], "phi must be a number"),
    "report": (["/nonexistent/folder"], "not a folder: /nonexistent/folder"),
    "export": (["/nonexistent/folder"], "/nonexistent/folder: no such folder"),
    "bench": (["--device", "tpu"], "argument --device: invalid choice"),
    "store": (["nonsense"], "argument {ls,verify,gc}: invalid choice"),
}


@pytest.mark.parametrize("launch", ["console script", "python -m"])
@pytest.mark.parametrize("command", list(BAD))
def test_bad_input_is_one_line_with_the_commands_prefix(command, launch):
    args, says = BAD[command]
    if launch == "console script":
        proc = phicenter_command(command, *args)
    else:
        proc = module_command(f"phicenter.{command}", *args)
    assert proc.returncode == 2, proc
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"phicenter {command}: error: {says}"), proc.stderr


def test_shell_completion_completes_the_phicenter_command():
    """The rule `eval "$(phicenter train -sc install=bash)"` installs is for `phicenter`; as TAB is pressed it
    runs `phicenter -sc query=bash`: the command names, then train's overrides."""
    install = phicenter_command("train", "-sc", "install=bash")
    assert install.returncode == 0 and install.stdout.rstrip().endswith("-F hydra_bash_completion phicenter")

    def query(line: str) -> list[str]:
        proc = phicenter_command("-sc", "query=bash", extra_env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert query("phicenter tr") == list(COMMANDS)  # the shell keeps those that start with `tr`
    assert query("phicenter train strategy=mask") == ["strategy=mask0", "strategy=mask1"]
    assert query("phicenter report ") == []  # the shell completes file names


def fresh_shell(line: str, cwd: Path) -> subprocess.CompletedProcess:
    """`line` in a new bash: no virtual environment active, and the one running the tests not on PATH."""
    venv_bin = Path(sys.executable).parent.absolute()
    path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and Path(p).absolute() != venv_bin]
    shell_env = {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", str(cwd)), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=shell_env, capture_output=True, text=True, timeout=300)


def test_the_commands_a_run_prints_work_in_a_fresh_shell(tmp_path):
    """A tiny run through the console script; the lines under `to read them:` run in a new shell in another
    folder (TensorBoard with --version_tb added, so that it exits at once instead of serving)."""
    run_dir = tmp_path / "run"
    proc = phicenter_command("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0 and results(run_dir)["status"] == "complete", proc.stderr[-3000:]
    out = (proc.stdout + proc.stderr).splitlines()
    start = next(i for i, line in enumerate(out) if line.endswith("to read them:"))
    printed = [line.split("] - ", 1)[-1].strip() for line in out[start + 1 : start + 3]]
    assert printed == [
        f"{sys.executable} -m tensorboard.main --logdir {run_dir}",
        f"{sys.executable} -m phicenter.report {run_dir}",
    ]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tensorboard = fresh_shell(f"{printed[0]} --version_tb", elsewhere)
    assert tensorboard.returncode == 0 and re.match(r"\d+\.\d+", tensorboard.stdout), tensorboard
    report = fresh_shell(printed[1], elsewhere)
    assert report.returncode == 0 and (run_dir / "report" / "report.md").is_file(), report


def test_a_multirun_through_the_console_script_runs_its_jobs_in_the_launchers_processes(tmp_path):
    """hydra/launcher=local (submitit): each job in a process of its own, which runs phicenter.train's job."""
    sweep = tmp_path / "sweep"
    proc = phicenter_command("train", "-m", "hydra/launcher=local", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "multirun finished: 2 complete" in proc.stdout + proc.stderr
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == [
        "epochs=1,prune.iterations=1,seed=0",
        "epochs=1,prune.iterations=1,seed=1",
    ]


def test_make_help_lists_every_target_with_its_line():
    """`make help` reads the `## ` comment on each target's line: every target a .PHONY line names is there."""
    makefile = (ROOT / "Makefile").read_text()
    phony = {t for line in makefile.splitlines() if line.startswith(".PHONY:") for t in line.split(":", 1)[1].split()}
    proc = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0]: line.split(None, 1)[1:] for line in proc.stdout.splitlines()}
    assert phony <= set(listed) and all(listed.values()), (phony - set(listed), proc.stdout)
