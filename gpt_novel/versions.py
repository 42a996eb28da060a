"""The versions gpt-novel is tested with, for the libraries whose internals it uses.

The ranges are written once, in pyproject.toml, and read back here from the installed package's metadata; the exact
set CI tests is `constraints.txt`. DeepSpeed is checked when the trainer starts: `universal.py` rewrites the files
its `ds_to_universal` writes and `resume.py` recognises its ZeRO-3 checkpoints by file name, and a release outside
the range may change either without a word.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

from gpt_novel.errors import UserError

DISTRIBUTION = "gpt-novel"


def supported(name: str) -> str | None:
    """The range pyproject.toml gives for dependency `name` (e.g. 'deepspeed>=0.16,<0.20'), or None when gpt-novel
    runs from a source tree that was never installed (no metadata to read)."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    for text in requirements:
        requirement = Requirement(text)
        if requirement.name == name and requirement.marker is None:
            return str(requirement)
    return None


def check_deepspeed() -> None:
    """One line, exit status 2, when the installed DeepSpeed is outside the tested range."""
    wanted = supported("deepspeed")
    if wanted is None:
        return
    installed = metadata.version("deepspeed")
    if not Requirement(wanted).specifier.contains(Version(installed), prereleases=True):
        raise UserError(f"DeepSpeed {installed} is installed; gpt-novel is tested with {wanted}: install one in that "
                        f"range (pip install '{wanted}')")
