"""What every `routined` command shares: the Typer app, output, settings, the API client.

Commands that manage things speak the management API (`routined.http.management`):
of the server named by `--server` / ROUTINED_URL, with ROUTINED_API_KEY, or else
of the store here ($ROUTINED_HOME or ROUTINED_DATABASE_URL), served in this
process to the operator, with or without a running server. Either way a command
does and prints the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from routined import __version__
from routined.config import ConfigError, Secret, Settings, secure_home

# The HTTP client, the store and the server's app are loaded by the commands that use
# them: a listing needs the store alone, `--help` none of them.
if TYPE_CHECKING:
    import httpx

    from routined.cli.local import Local
    from routined.db import Store

T = TypeVar("T")

app = typer.Typer(
    name="routined",
    help="Run coding agents on their own: routines, triggers, sandboxed sessions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# How wide output is when it goes to no terminal: wider than any row, so that a
# table piped to a file or a script keeps each row on one line.
_UNBOUNDED = 10_000


class _Output(Console):
    """Rich's console, except that, writing to no terminal (a pipe, a file, a CI log)
    and told no width (`COLUMNS`), it is as wide as its rows: Rich would cut tables at
    80 columns and fold a branch name over four lines. On a terminal it is Rich's."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        told = self._width is not None or os.environ.get("COLUMNS", "").isdigit()
        if self.is_terminal or told:
            return size
        return ConsoleDimensions(_UNBOUNDED, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = _Output(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def main() -> None:
    _process.command_only = True
    # Everything routined writes (the store, keys, run folders, what it clones) is
    # its own alone; the sandbox user gets what it may change handed over.
    os.umask(0o077)
    _inherit_nothing()
    app()


def _inherit_nothing() -> None:
    """Descriptors routined was started with (a shell's, a supervisor's) are not its
    children's: uvloop starts children without closing inheritable descriptors."""
    for entry in Path("/proc/self/fd").iterdir():
        if int(entry.name) > 2:
            with contextlib.suppress(OSError):  # the listing's own, closed by now
                os.set_inheritable(int(entry.name), False)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/] {shown(message, lines=True)}")
    raise typer.Exit(code)


# A terminal obeys the control characters in what it is given: ESC and the C1 controls
# begin sequences that move the cursor, rewrite lines, retitle the window or write the
# clipboard (OSC 52), and C0's others ring, erase or return. In text an agent or a
# stranger wrote, each is shown as JSON writes it (`\u001b`), where it can do nothing.
_CONTROLS = {point: f"\\u{point:04x}" for point in [*range(0x20), *range(0x7F, 0xA0)]}
# A field shown on several lines keeps its line breaks, and its tabs (which rich
# turns into spaces).
_CONTROLS_BUT_LINES = {point: text for point, text in _CONTROLS.items() if point not in (9, 10)}
# JSON itself escapes C0, and with ASCII only everything else; these are what it
# leaves raw when it keeps Unicode.
_JSON_RAW_CONTROLS = {point: text for point, text in _CONTROLS.items() if point >= 0x7F}


def shown(text: str, *, lines: bool = False) -> str:
    """`text`, which an agent or a stranger may have written, ready for rich markup: its
    control characters written out so they cannot drive the reader's terminal, its
    markup escaped. With `lines`, line breaks stay (for a field shown on several)."""
    return escape(text.translate(_CONTROLS_BUT_LINES if lines else _CONTROLS))


def json_text(value: Any, *, indent: int | None = None) -> str:
    """`value` as JSON for a terminal: the same JSON, with DEL and the C1 controls
    written as escapes too (inside strings, where alone they can be)."""
    return json.dumps(value, indent=indent, ensure_ascii=False).translate(_JSON_RAW_CONTROLS)


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        fail(str(error))


@dataclass
class _Process:
    # Whether this process runs one command (`main`), not commands in a caller's
    # process (tests), whose garbage `loading` must not keep for good.
    command_only: bool = False


_process = _Process()


@contextmanager
def loading() -> Iterator[None]:
    """Modules being loaded by a command: what they build lives as long as the
    process, and they leave next to no garbage. The collector waits until they are
    in, then leaves them out of its passes for good (as `routined serve` does once it
    has started), instead of walking the growing heap again and again while they
    load: a quarter of what `routined list` costs otherwise."""
    if not (_process.command_only and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


@contextmanager
def opened(
    *, creates: bool = True, background_checkpoints: bool = False
) -> Iterator[tuple[Settings, Store]]:
    """The store here. Only a command that `creates` (one that may change something)
    starts one where there is none: one that only reads, run in the wrong folder (the
    default home is relative to it), says so and answers as an empty store would, from
    a scratch one it then removes, leaving no store behind to mislead the next command."""
    with loading():
        from routined.db import Store

    config = settings()
    where = store_file(config)
    with contextlib.ExitStack() as scratch:
        if where is not None and not where.exists():
            # Said to a person at a terminal; a script reads the answer alone.
            said = err.is_terminal
            if creates and said:
                err.print(f"starting a new store in {config.home} (ROUTINED_HOME)")
            if not creates:
                if said:
                    err.print(_no_store(config, where))
                folder = Path(scratch.enter_context(tempfile.TemporaryDirectory()))
                config = dataclasses.replace(
                    config, home=folder, database_url=Secret(f"sqlite:///{folder}/routined.db")
                )
        secure_home(config.home)
        store = Store(config.database_url.reveal(), background_checkpoints=background_checkpoints)
        try:
            store.migrate()
            yield config, store
        finally:
            store.dispose()


def store_file(config: Settings) -> Path | None:
    """The file of an SQLite store, whose existence can be checked; None for another."""
    from sqlalchemy.engine import make_url

    url = make_url(config.database_url.reveal())
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).absolute()


def _no_store(config: Settings, where: Path) -> str:
    home = (
        f"ROUTINED_HOME is {config.home}"
        if os.environ.get("ROUTINED_HOME")
        else f"ROUTINED_HOME is not set: ./.routined in this folder, {config.home}"
    )
    return (
        f"[yellow]no store at {where}[/] ({home}); answering as an empty store, and making "
        "none. Run the command where `routined serve` runs, or set ROUTINED_HOME to its home."
    )


def print_json(value: Any) -> None:
    sys.stdout.write(json_text(value, indent=2) + "\n")


class Unanswered(Exception):
    """A call the store here does not answer itself: the server's app answers it."""


@dataclass
class _Target:
    server: str | None = None


_target = _Target()


class Client:
    """The management API, answered by a server or by the store here in this process.

    `local` is the store here, when it is the one asked: it answers some calls itself
    (see `routined.cli.local`), and some commands (`fire --wait`) then also do a
    worker's job in this process.
    """

    def __init__(
        self,
        http: Callable[[], httpx.AsyncClient],
        local: Local | None = None,
    ) -> None:
        self._open_http = http
        self._http: httpx.AsyncClient | None = None
        self._loop = asyncio.Runner()
        self.local = local

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(work)

    def call(self, method: str, path: str, **options: Any) -> Any:
        """The answer's JSON; an error answer ends the command with its message (see
        `acall` for the options)."""
        return self.run(self.acall(method, path, **options))

    async def acall(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        explain: Callable[[str], str] = lambda message: message,
    ) -> Any:
        wanted = {k: v for k, v in (params or {}).items() if v is not None}
        if self.local is not None and body is None:
            with contextlib.suppress(Unanswered):
                return self.local.answer(method, path, wanted, explain=explain)
        import httpx

        if self._http is None:
            self._http = self._open_http()
        try:
            response = await self._http.request(
                method, f"/api/v1{path}", params=wanted, json=_jsonable(body)
            )
        except httpx.HTTPError as error:
            fail(f"cannot reach {self._http.base_url}: {error}")
        if response.is_error:
            fail(explain(_error_message(response)))
        return None if response.status_code == 204 else response.json()

    def close(self) -> None:
        if self._http is not None:
            self.run(self._http.aclose())
        self._loop.close()


def remote() -> bool:
    """Whether commands go to a server (--server) rather than to the store here."""
    return _target.server is not None


@contextmanager
def connect(*, creates: bool = True) -> Iterator[Client]:
    """A client of the server named by --server / ROUTINED_URL, or of the store here.
    A command that only reads passes `creates=False`: it starts no store (`opened`)."""
    if _target.server:
        key = os.environ.get("ROUTINED_API_KEY", "")
        if not key:
            fail(
                f"--server {_target.server}: set ROUTINED_API_KEY to an API key of your account "
                "(`routined key create` on the server makes one)"
            )
        client = Client(functools.partial(_server_client, _target.server, key))
        try:
            yield client
        finally:
            client.close()
        return
    with loading():
        from routined.cli.local import Local

    with opened(creates=creates) as (config, store):
        local = Local(config, store)
        client = Client(local.app_client, local=local)
        try:
            yield client
        finally:
            client.close()


def _server_client(server: str, key: str) -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(
        base_url=server.rstrip("/"), headers={"authorization": f"Bearer {key}"}, timeout=60
    )


def segment(value: str) -> str:
    """`value` as one segment of an API path, whatever the user typed."""
    return quote(value, safe="")


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    return str(message)


def _jsonable(value: Any) -> Any:
    # YAML gives dates and datetimes (an unquoted `once:`); the API takes their text.
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="ROUTINED_URL",
            help="Manage this server through its API (with ROUTINED_API_KEY), not the store here.",
        ),
    ] = None,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()
    _target.server = server
