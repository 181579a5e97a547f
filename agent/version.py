"""The version of mtagent: written once, in pyproject.toml, and read from the package metadata."""

from __future__ import annotations

import importlib.metadata

DISTRIBUTION = "mtagent"
# A source tree run without being installed has no metadata to read.
UNKNOWN = "0+unknown"


def agent_version() -> str:
    """The installed distribution's version (pyproject.toml's `version`), or `0+unknown` when
    mtagent runs from a source tree that was never installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN
