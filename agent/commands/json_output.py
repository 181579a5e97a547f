"""The `--json` documents of the commands (docs/cli.md): each an object with `"schema": 1`.

The schema number changes only when a key is renamed, removed or changes meaning; new keys may
be added under the same number, so a reader must ignore keys it does not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

SCHEMA = 1


def print_json(document: Mapping[str, Any], *, indent: int | None = 2) -> None:
    """Print `document` on stdout with the schema number first (`indent` None: on one line)."""
    print(json.dumps({"schema": SCHEMA, **document}, indent=indent))


def error_document(message: str, exit_code: int) -> dict[str, Any]:
    """What a command run with `--json` prints on stdout when it fails (besides its line on
    stderr): `{"schema": 1, "error": {"message": ..., "exit_code": ...}}`."""
    return {"schema": SCHEMA, "error": {"message": message, "exit_code": exit_code}}
