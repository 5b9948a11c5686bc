"""phicenter: iterative magnitude pruning with polarity decided at a threshold phi_center (docs/method.md)."""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # the Hydra config tree that phicenter.train composes
UNINSTALLED = "0+unknown"  # the version of a source tree that was never installed (pyproject.toml has the real one)


def version() -> str:
    """The installed phicenter's version: pyproject.toml's, as the install recorded it."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("phicenter")
    except PackageNotFoundError:
        return UNINSTALLED


# the public names, imported when first asked for: `import phicenter` stays light, and the package's own
# modules (the lowest layer) import nothing above them
PUBLIC = {"PhiCenterPruning": "phicenter.engine.boundary", "Pruner": "phicenter.method.pruner"}


def __getattr__(name: str):
    """`phicenter.__version__`, read from the install's metadata, and the public names (PUBLIC), when first
    asked for, not at import."""
    if name == "__version__":
        return version()
    if name in PUBLIC:
        from importlib import import_module

        return getattr(import_module(PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), "__version__", *PUBLIC])
