"""The engine fits through one function: a round, an instability copy and a transfer all call engine.fit.fit_round,
so they are checkpointed, resumed and tested alike. Read from the source, as tests/test_layers.py reads imports."""

from __future__ import annotations

import ast
from pathlib import Path

import phicenter

ENGINE = Path(phicenter.__file__).parent / "engine"


def fit_calls(folder: Path = ENGINE) -> list[str]:
    """'file:line' of every call of a trainer's fit (`trainer.fit(`, `self.trainer.fit(`) in the engine's modules."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "fit":
                if ast.unparse(node.func.value).split(".")[-1] == "trainer":
                    out.append(f"{path.relative_to(folder)}:{node.lineno}")
    return out


def test_trainer_fit_is_called_once_in_the_engine():
    calls = fit_calls()
    assert len(calls) == 1 and calls[0].startswith("fit.py:"), calls


def test_the_round_loop_the_copy_and_the_transfer_use_fit_round():
    for name in ("loop.py", "instability.py", "transfer.py"):
        assert "fit_round(" in (ENGINE / name).read_text(), name


def test_a_second_fit_is_seen(tmp_path):
    """The check itself: a module that calls trainer.fit beside engine/fit.py is reported."""
    (tmp_path / "fit.py").write_text("def f(trainer, m):\n    trainer.fit(m)\n")
    (tmp_path / "other.py").write_text(
        '"""trainer.fit( in a docstring is no call."""\n\n\ndef g(self, rounds):\n    rounds.fit(1)\n'
        "    self.trainer.fit(1)\n"
    )
    assert fit_calls(tmp_path) == ["fit.py:2", "other.py:6"]
