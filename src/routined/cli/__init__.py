"""The `routined` command: one module per group of commands, one Typer app."""

from routined.cli import (
    accounts,
    doctor,
    events,
    inspect,
    keys,
    routines,
    runs,
    schedules,
    secrets,
)
from routined.cli.common import app, main

__all__ = [
    "accounts",
    "app",
    "doctor",
    "events",
    "inspect",
    "keys",
    "main",
    "routines",
    "runs",
    "schedules",
    "secrets",
]
