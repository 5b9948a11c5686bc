"""Architectures, one constructor each (nets: f(input_shape, num_classes, **options) -> nn.Module), and each
one's options (options: plain Python, which the command line checks before torch is imported). Importing the
package imports nothing else: a name is loaded from its module on first use."""

from __future__ import annotations

import importlib

MODULES = ("options", "nets")


def __getattr__(name: str):
    for m in MODULES:
        module = importlib.import_module(f"{__name__}.{m}")
        if name in module.__dict__ and not name.startswith("_"):
            return module.__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
