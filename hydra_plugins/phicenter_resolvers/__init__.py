"""phicenter's OmegaConf resolvers for Hydra's own keys (the folder names in conf/config.yaml). A module of the
hydra_plugins namespace: Hydra imports it in every process before it composes a config (the command line, a
test's compose), and phicenter's launchers import it on the machine that runs a job, where a multirun's
config is resolved again from the values cached when it was launched."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def suffix() -> str:
    """Four random hex digits: two runs started in the same microsecond still get folders of their own. Cached
    per config (use_cache), so every key of one launch that names it names the same folder."""
    return secrets.token_hex(2)


def job_folder(name: str) -> str:
    """A multirun job's folder name, from Hydra's override_dirname (the job's overrides as typed, `/` and `..`
    included), as one folder inside the sweep folder: `/` and `\\` written %2F and %5C, a leading dot %2E (no
    `..`, no hidden folder). A name without them (`phi=0.0005,strategy=mask0`) stays as it is, so a sweep
    launched again resumes into its folders."""
    safe = str(name).replace("/", "%2F").replace("\\", "%5C")
    return "%2E" + safe[1:] if safe.startswith(".") else safe


def register() -> None:
    OmegaConf.register_new_resolver("phicenter.suffix", suffix, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("phicenter.job_folder", job_folder, replace=True)


register()
