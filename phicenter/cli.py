"""`phicenter COMMAND [ARGS]`: the console script (pyproject.toml, [project.scripts]). Each command is its
module's own main, given the rest of the arguments, as `python -m phicenter.COMMAND [ARGS]` runs it."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import sys

from phicenter import version

# each command's line in `phicenter --help`
COMMANDS = {
    "train": "train a run, or a grid of runs with -m (Hydra overrides; `phicenter train --help` lists them)",
    "report": "the paper's tables and figures from multirun or run folders",
    "export": "a round of a run as a signed ticket (safetensors, optionally ONNX)",
    "bench": "the performance benchmarks of docs/benchmarks.md",
    "store": "the round store: list, verify, or shrink it (ls, verify, gc)",
}
COMPLETION = ("-sc", "--shell-completion", "--shell_completion")  # Hydra's shell-completion flag, both spellings


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(
        [
            "usage: phicenter COMMAND [ARGS]   (each is also python -m phicenter.COMMAND)",
            "",
            "commands:",
            *(f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()),
            "",
            "phicenter COMMAND --help: a command's arguments; phicenter --version (-V): the installed version",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"phicenter {version()}")
        return 0
    if args[0] in COMPLETION:  # what the installed completion rule runs as the user presses TAB
        return _complete(args)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"phicenter: error: no command {name!r}; the commands are {', '.join(COMMANDS)} (phicenter --help)",
            file=sys.stderr,
        )
        return 2
    return _run(name, rest)


def _run(name: str, rest: list[str]) -> int:
    """The command's own main on `rest`, its exit status returned (SystemExit passes through)."""
    if name == "train":
        return _train(rest, "phicenter" if any(a in COMPLETION for a in rest) else "phicenter train")
    if name == "report":
        from phicenter.report import main as report

        return report(rest)
    if name == "export":
        from phicenter.export import main as export

        return export(rest)
    if name == "store":
        from phicenter.store import main as store

        return store(rest)
    from phicenter.bench.__main__ import main as bench

    return 0 if bench(rest) else 1  # as `python -m phicenter.bench` exits


def _train(rest: list[str], prog: str) -> int:
    """phicenter.train run as `python -m phicenter.train` runs it (as `__main__`: Hydra finds conf/ beside the
    file then), on `rest`. Hydra reads the command line from sys.argv, and names the command in its help by
    sys.argv[0] (`phicenter` alone for the completion rule it installs, which completes `phicenter`)."""
    sys.argv = [prog, *rest]
    # what re-runs this command line in new processes (Lightning's DDP workers) runs `python -m phicenter.train`
    sys.modules["__main__"].__spec__ = importlib.util.find_spec("phicenter.train")
    runpy.run_module("phicenter.train", run_name="__main__")
    return 0


def _complete(args: list[str]) -> int:
    """`phicenter -sc query=bash` (or fish), with the line typed so far in $COMP_LINE: the command names while
    the first word is typed, Hydra's completion of `train`'s overrides after `train`, nothing after another
    command (the shell completes file names there). Any other `-sc` (install=bash, ...) is `train`'s."""
    if not args[-1].startswith("query="):
        return _train(args, "phicenter")
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    line = line[: int(point)] if point.isdigit() else line
    words = line.split()
    if len(words) == 1 or (len(words) == 2 and not line[-1:].isspace()):
        print(" ".join(COMMANDS))
        return 0
    if words[1] != "train":
        return 0
    os.environ["COMP_LINE"] = re.sub(r"^(\s*\S+\s+)train\s*", r"\1", line, count=1)  # as if `phicenter` alone
    return _train(args, "phicenter")
