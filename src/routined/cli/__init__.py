"""The `routined` command: one module per group of commands, one Typer app."""

from routined.cli import routines, runs, schedules
from routined.cli.common import app, main

__all__ = ["app", "main", "routines", "runs", "schedules"]
