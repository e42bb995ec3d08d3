"""Console helpers shared by the `recsys` commands: config from flags, progress, tables, errors."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.config import Config, load_config

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class UsageError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


# --- helpers --------------------------------------------------------------------------


def config_from(args: argparse.Namespace, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    return load_config(home=args.home, config_file=args.config, overrides=overrides)


def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=False)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Print a table; when stdout is a file or pipe (CI logs), wide enough not to truncate names."""
    console = out if out.is_terminal else Console(width=160)
    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console.print(table)
