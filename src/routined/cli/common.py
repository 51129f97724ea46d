"""What every `routined` command shares: the Typer app, output, settings and the store.

The commands work on $ROUTINED_HOME (or ROUTINED_DATABASE_URL) directly, with or
without a running server; a running server sees their changes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from routined import __version__
from routined.config import ConfigError, Settings
from routined.db import Store
from routined.models import Routine

app = typer.Typer(
    name="routined",
    help="Run coding agents on their own: routines, triggers, sandboxed sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def main() -> None:
    app()


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        fail(str(error))


@contextmanager
def opened() -> Iterator[tuple[Settings, Store]]:
    config = settings()
    store = Store(config.database_url.reveal())
    try:
        store.migrate()
        yield config, store
    finally:
        store.dispose()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def find_routine(store: Store, name: str) -> Routine:
    with store.transaction(readonly=True) as session:
        routine = session.scalar(
            select(Routine)
            .where(Routine.name == name)
            .options(selectinload(Routine.triggers), selectinload(Routine.repositories))
        )
    if routine is None:
        fail(f"no routine named {name!r}; `routined list` shows the routines there are")
    return routine


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()
