"""Every shell command the docs show runs: each command of README.md's ```bash blocks, and of the ```bash blocks
of docs/*.md marked to be run (`<!-- run -->` on the line before the fence, blank lines between allowed), is run
here with tiny overrides appended, and a command that fails fails its test.

- `python -m phicenter.train ...` (also `.venv/bin/python -m ...`, and the console script `phicenter train ...`)
  gets `epochs=1 prune.iterations=1 threads=1`, a round store and its hydra.run.dir / hydra.sweep.dir in a
  temporary folder (a key the command gives itself is left as given). Other commands run as written.
- A placeholder (`outputs/runs/<time>`, `<run with prune.method=structured>`, `outputs/multirun/<time>`, ...)
  becomes the folder of a tiny run made once for the session (PLACEHOLDERS); a placeholder with no stand-in
  fails the test, so a new one is added there.
- Each command runs in its own empty folder (files it writes relative to `.`, such as `--out t.safetensors`,
  land there), in one thread, with .venv/bin first on PATH.
- A command that cannot run here (SLURM, a GPU, a download, a make target that installs) is listed in SKIP with
  the reason; any other command, a new one included, is run. A SKIP entry no doc shows any more fails too.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests import cli

ROOT = cli.ROOT
MARKER = "<!-- run -->"
TIMEOUT = 300

# appended to a documented training command: one epoch a round, one pruning iteration, one thread
TINY = {"epochs": "1", "prune.iterations": "1", "threads": "1"}

# command (as documented, comment dropped, whitespace collapsed) -> why it is not run here
SKIP = {
    "make run": "a make target that installs .venv first; what it runs is `python -m phicenter.train`, run below",
    "make test": "a make target that installs .venv and runs the whole test suite",
    "make audit": "a make target that installs .venv and asks PyPI's JSON API about every pinned package",
    "make gpu-check": "needs a CUDA GPU (a make target that installs .venv first)",
    "python -m phicenter.train -m experiment=mnist_fc_lot hydra/launcher=local hydra.launcher.cpus_per_task=2": (
        "downloads MNIST, and is the Table 1 grid (44 jobs)"
    ),
    "python -m phicenter.train -m experiment=cifar10_vgg16 seed=0,1,2 hydra/launcher=slurm "
    "hydra.launcher.partition=gpu hydra.launcher.account=myproject hydra.launcher.timeout_min=720 "
    "'hydra.launcher.setup=[source .venv/bin/activate]' data_dir=/shared/datasets": "submits to a SLURM cluster",
    "scripts/slurm-harness start": "starts SLURM daemons (tests/test_slurm.py's harness)",
    ".venv/bin/python -m pytest -q tests/test_slurm.py": "needs the SLURM harness started",
    "scripts/slurm-harness stop": "stops the SLURM harness",
    "python -m phicenter.train experiment=cifar10_vgg16 trainer.devices=4 +trainer.strategy=ddp": (
        "needs 4 GPUs, and downloads CIFAR-10"
    ),
    "PYTHONPATH=. python -m phicenter.train model=custom model._target_=mypkg.nets.make_net +model.width=32 "
    "dataset=custom dataset._target_=mypkg.data.load +dataset.n=500": (
        "needs a package of your own (tests/test_custom_target.py runs one)"
    ),
    "PYTHONPATH=. python -m phicenter.train -m model=custom model._target_=mypkg.nets.make_net phi=0,5e-4": (
        "needs a package of your own (tests/test_custom_target.py runs one)"
    ),
}

# placeholder (a regular expression) -> the tiny run that stands in for it (Runs' attribute)
PLACEHOLDERS = {
    r"<run with prune\.method=structured>": "structured",
    r"outputs/runs/(<time>|\d{4}-\d\d-\d\d_[\w-]+)": "run",
    r"outputs/multirun/(<time>|<that folder>|\d{4}-\d\d-\d\d_[\w-]+)": "multirun",
    r"<that sweep folder>": "multirun",
}


@dataclass(frozen=True)
class Command:
    source: str  # README.md:95
    text: str  # as documented, continuation lines joined, comment dropped, whitespace collapsed

    def __str__(self) -> str:
        return self.source


def strip_comment(line: str) -> str:
    """`line` without its shell comment: a # outside quotes at the start or after whitespace."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def bash_blocks(text: str, marked_only: bool) -> list[tuple[int, list[str]]]:
    """(line number of the first line, lines) of each ```bash block of `text` (marked_only: those whose fence
    follows a `<!-- run -->` line, blank lines between allowed). Indented fences count too."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            before = [l.strip() for l in lines[:i] if l.strip()]
            marked = bool(before) and before[-1] == MARKER
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if marked or not marked_only:
                out.append((i + 2, lines[i + 1 : j]))
            i = j
        i += 1
    return out


def commands_in(text: str, name: str, marked_only: bool) -> list[Command]:
    out = []
    for first, block in bash_blocks(text, marked_only):
        pending, start = "", None
        for k, raw in enumerate(block):
            line = strip_comment(raw).strip()
            if start is None:
                start = first + k
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            pending += line
            if pending.strip():
                out.append(Command(f"{name}:{start}", " ".join(pending.split())))
            pending, start = "", None
    return out


def documented() -> list[Command]:
    cmds = commands_in((ROOT / "README.md").read_text(), "README.md", marked_only=False)
    for doc in sorted((ROOT / "docs").glob("*.md")):
        cmds += commands_in(doc.read_text(), f"docs/{doc.name}", marked_only=True)
    return cmds


class Runs:
    """The tiny runs placeholders stand for, each made once, on first use."""

    def __init__(self, base: Path):
        self.base = base
        self.made: dict[str, Path] = {}

    def get(self, name: str) -> Path:
        if name not in self.made:
            folder = self.base / name
            args = {
                # the quickstart's 10 pruning iterations at 1 epoch a round: rounds 0 to 10, 9 and 10 kept
                "run": ["epochs=1", "threads=1"],
                "structured": ["prune.method=structured", *_items(TINY)],
                "multirun": ["phi=0,5e-4", *_items(TINY)],
            }[name]
            multi = name == "multirun"
            where = f"hydra.sweep.dir={folder}" if multi else f"hydra.run.dir={folder}"
            cli.train(*args, f"round_store.dir={self.base / 'round_store'}", where, multirun=multi, timeout=TIMEOUT)
            self.made[name] = folder
        return self.made[name]


def _items(d: dict) -> list[str]:
    return [f"{k}={v}" for k, v in d.items()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("readme_runs"))


def substitute(text: str, runs: Runs) -> str:
    for pattern, name in PLACEHOLDERS.items():
        if re.search(pattern, text):
            text = re.sub(pattern, lambda _m, n=name: shlex.quote(str(runs.get(n))), text)
    left = re.findall(r"<[^<>]+>", text)
    assert not left, f"no stand-in for the placeholder {left[0]}: add it to PLACEHOLDERS in {__file__}"
    return text


def argv_for(text: str, workdir: Path, store: Path) -> list[str]:
    """The command to run: the interpreter and console script of this venv, tiny overrides for a training run."""
    argv = shlex.split(text)
    bindir = Path(sys.executable).parent
    if argv[0] in ("python", "python3", ".venv/bin/python"):
        argv[0] = sys.executable
    elif argv[0] in ("phicenter", ".venv/bin/phicenter") and len(argv) > 1:
        script = bindir / "phicenter"
        if script.exists():
            argv = [str(script), *argv[1:]]
        else:  # a .venv set up before pyproject.toml declared the console script: the module it runs
            assert not argv[1].startswith("-"), f"no {script}: `make setup` installs the phicenter command"
            argv = [sys.executable, "-m", f"phicenter.{argv[1]}", *argv[2:]]
    if argv[0] == sys.executable and argv[1:2] == ["-m"] and len(argv) > 2:
        module, rest = argv[2], argv[3:]
    elif Path(argv[0]).name == "phicenter" and len(argv) > 1:
        module, rest = f"phicenter.{argv[1]}", argv[2:]
    else:
        module, rest = None, []
    if module == "phicenter.train":
        given = {a.lstrip("+~").split("=", 1)[0] for a in rest if "=" in a}
        multi = "-m" in rest or "--multirun" in rest
        extra = {**TINY, "round_store.dir": str(store)}
        extra["hydra.sweep.dir" if multi else "hydra.run.dir"] = str(workdir / ("sweep" if multi else "run"))
        argv += [f"{k}={v}" for k, v in extra.items() if k not in given]
    return argv


def test_every_skip_is_documented():
    texts = {c.text for c in documented()}
    stale = [k for k in SKIP if k not in texts]
    assert not stale, f"SKIP lists commands no doc shows any more: {stale}"


def test_extraction():
    doc = (
        "text\n\n```bash\nnot run\n```\n\n<!-- run -->\n\n```bash\n"
        "python -m phicenter.train a=1 \\\n    'b=[x, y]'   # a comment\n# a comment line\n"
        "phicenter report DIR --out 'o #1'\n```\n"
    )
    cmds = commands_in(doc, "d.md", marked_only=True)
    assert [(c.source, c.text) for c in cmds] == [
        ("d.md:10", "python -m phicenter.train a=1 'b=[x, y]'"),
        ("d.md:13", "phicenter report DIR --out 'o #1'"),
    ]
    assert len(commands_in(doc, "d.md", marked_only=False)) == 3
    w, s = Path("/w"), Path("/s")
    assert argv_for("phicenter train -m phi=0,1 threads=2", w, s)[-5:] == [
        "threads=2",
        "epochs=1",
        "prune.iterations=1",
        "round_store.dir=/s",
        "hydra.sweep.dir=/w/sweep",
    ]
    assert argv_for("python -m phicenter.export RUN --round 9", w, s) == [
        sys.executable,
        "-m",
        "phicenter.export",
        "RUN",
        "--round",
        "9",
    ]


@pytest.mark.parametrize("cmd", documented(), ids=str)
def test_documented_command_runs(cmd: Command, runs: Runs, tmp_path):
    if cmd.text in SKIP:
        pytest.skip(SKIP[cmd.text])
    argv = argv_for(substitute(cmd.text, runs), tmp_path, runs.base / "round_store")
    env = dict(cli.env(), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"{cmd.source}: `{cmd.text}` failed (exit {proc.returncode}) as {shlex.join(argv)}\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
