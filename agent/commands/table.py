"""Output and arguments shared by the commands that read the agent's config."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agent.config import DEFAULT_CONFIG_PATH


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """`--config F`, defaulting to the installed agent's configuration."""
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        help=f"agent configuration (default {DEFAULT_CONFIG_PATH})",
    )


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
