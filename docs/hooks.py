"""mkdocs hook: the files at the repository root that the site shows as pages (README.md as the home page),
their links to docs/X.md rewritten to X.md and to one another to their pages. The files stay where they are."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"index.md": "README.md", "contributing.md": "CONTRIBUTING.md", "changelog.md": "CHANGELOG.md"}
_LINK = re.compile(r"\]\((?:\./)?([^)#\s]+)(#[^)\s]*)?\)")


def _site_link(m: re.Match) -> str:
    target, anchor = m.group(1), m.group(2) or ""
    if target.startswith("docs/"):
        target = target[len("docs/") :]
    else:
        target = {root: page for page, root in PAGES.items()}.get(target, target)
    return f"]({target}{anchor})"


def on_files(files, config):
    for page, root in PAGES.items():
        text = _LINK.sub(_site_link, (ROOT / root).read_text(encoding="utf-8"))
        files.append(File.generated(config, page, content=text))
    return files
