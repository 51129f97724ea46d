"""The store: one engine per process, short transactions, migrations on open."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Select,
    Table,
    cast,
    create_engine,
    event,
    func,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from routined.wakeup import Loop

if TYPE_CHECKING:
    from alembic.config import Config

# Whether the SQLite transaction being opened only reads (see `Store.transaction`).
_reading: ContextVar[bool] = ContextVar("reading", default=False)
# PostgreSQL's page layout (htup_details.h, bufpage.h): a page header, then per tuple
# a line pointer and a header, so a heap page holds at most
# (block size - 24) // 28 tuples (291 in 8 kB pages): MaxHeapTuplesPerPage.
_PAGE_HEADER = 24
_TUPLE_OVERHEAD = 4 + 24

_CHECKPOINT_INTERVAL = 1.0  # seconds

Item = TypeVar("Item")
Result = TypeVar("Result")


_WAL_KEPT = 64 * 1024 * 1024  # bytes of write-ahead log kept between checkpoints


class Store:
    """Where routined keeps its rows: SQLite by default, PostgreSQL when configured."""

    def __init__(self, url: str, *, background_checkpoints: bool = False) -> None:
        """`background_checkpoints` (SQLite): a `Checkpointer` runs for this store (in
        this process, or in the server that started it), so its commits leave
        checkpoints to it (see there)."""
        self.url = _with_driver(make_url(url))
        self.engine = _create_engine(self.url, autocheckpoint=not background_checkpoints)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_turn = _WriteTurn(self.url.database) if self.is_sqlite else None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back if it raises.

        On SQLite a transaction that may write takes the write lock when it begins
        (BEGIN IMMEDIATE), waiting up to the busy timeout for it: one that read first
        could not write after another connection committed, and would fail at once.
        `readonly` transactions take no lock and never wait for writers. Before
        that, writers take turns (`_WriteTurn`).
        """
        turn = (
            self._write_turn.taken()
            if self._write_turn is not None and not readonly
            else contextlib.nullcontext()
        )
        reading = _reading.set(readonly)
        try:
            with turn, self._sessions.begin() as session:
                session.connection()  # begin now, while the flag says how
                yield session
        finally:
            _reading.reset(reading)

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration; cheap when it is already there.

        Every command opens the store, so the common case (nothing to do) is decided
        by comparing the stored revision with the newest one in `migrations/versions`,
        without loading alembic; alembic runs only when they differ."""
        current, newest = self.revisions()
        target = newest if revision == "head" else revision
        if target is not None and current == target:
            return
        self._upgrade(revision)

    def revisions(self) -> tuple[str | None, str | None]:
        """The revision the store is at (None: it has none yet), and the newest."""
        with self.engine.connect() as connection, connection.begin():
            return _stored_revision(connection), _head_revision()

    def _upgrade(self, revision: str) -> None:
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        config = _alembic_config()
        target = ScriptDirectory.from_config(config).get_current_head()
        with self.engine.connect() as connection:
            with connection.begin():
                current = MigrationContext.configure(connection).get_current_revision()
            if current == (target if revision == "head" else revision):
                return
            # SQLite changes a table by copying it and dropping the old one, and
            # the drop would cascade through foreign keys into every table that
            # refers to it. Keys are off while migrating (the pragma is ignored
            # inside a transaction) and checked before they are on again.
            raw = connection.connection.driver_connection if self.is_sqlite else None
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with connection.begin():
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    if raw is not None:
                        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                        if broken:
                            raise RuntimeError(f"migration left broken references: {broken}")
            finally:
                if raw is not None:
                    raw.execute("PRAGMA foreign_keys=ON")

    def checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database (SQLite), without
        waiting for writers or holding them up (a passive checkpoint)."""
        if self.is_sqlite:
            # On the driver's connection, outside a transaction: SQLite cannot
            # checkpoint inside one, and SQLAlchemy's connections begin one.
            connection = self.engine.raw_connection()
            try:
                connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
            finally:
                connection.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._write_turn is not None:
            self._write_turn.close()


class _WriteTurn:
    """Writers to one SQLite database take turns before they ask SQLite for its lock.

    SQLite has one writer at a time, and a writer waiting for the lock polls it in
    sleeps that grow to 100 ms (its busy handler): behind a busy writer, one wakes
    long after the lock was free, and a writer that keeps coming back (the GitHub
    matcher) can starve one that sleeps (the webhook receiver). Taking turns
    first, threads on a lock and processes on an flock of a file beside the
    database, a waiter is woken the moment the turn is free. SQLite's busy handler
    still guards against writers that do not take turns (other programs).
    Reentrant: a write transaction nested in another fails on SQLite's busy
    timeout, as without turns, instead of waiting forever.
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0
        self._file: BinaryIO | None = None
        if database and database != ":memory:":
            self._file = Path(f"{database}-writer").open("ab")  # noqa: SIM115 - the process's

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    @contextmanager
    def taken(self) -> Iterator[None]:
        with self._threads:
            self._depth += 1
            try:
                if self._depth == 1 and self._file is not None:
                    fcntl.flock(self._file, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    if self._depth == 1 and self._file is not None:
                        fcntl.flock(self._file, fcntl.LOCK_UN)
            finally:
                self._depth -= 1


def count_up_to(session: Session, rows: Select[Any], cap: int | None = None) -> int:
    """How many rows `rows` selects, counting no further than `cap`: a limit needs only
    to know whether it is reached, and rows past it must not make the answer slower."""
    if cap is not None:
        rows = rows.limit(cap)
    return session.scalar(select(func.count()).select_from(rows.subquery())) or 0


def table_of(entity: type[DeclarativeBase]) -> Table:
    """The table an entity is mapped to: statements on it skip the ORM's bookkeeping."""
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def rows_at_most(session: Session, table: Table) -> int:
    """At most how many rows `table` holds, found without reading them.

    A cap above it cannot be reached, so whatever a count capped there would find
    is below the cap, and the count (which costs a read per row) can be skipped.
    SQLite: rowids are distinct integers, so the span between the lowest and the
    highest bounds the rows. PostgreSQL: every row version lives in one of the
    table's pages, and a page holds at most MaxHeapTuplesPerPage of them.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        span: int | None = session.scalar(_rowid_span(table))
        return span or 0
    size, block = session.execute(_heap_size(table)).one()
    tuples_a_page = (int(block) - _PAGE_HEADER) // _TUPLE_OVERHEAD
    return int(size) // int(block) * tuples_a_page


# The statements of `rows_at_most`, built once: building one costs more than running it.


@functools.cache
def _rowid_span(table: Table) -> Select[int]:
    rowid = literal_column("rowid", Integer)
    highest = select(func.max(rowid)).select_from(table).scalar_subquery()
    lowest = select(func.min(rowid)).select_from(table).scalar_subquery()
    return select(highest - lowest + 1)


@functools.cache
def _heap_size(table: Table) -> Select[int, str]:
    return select(
        func.pg_relation_size(cast(table.name, REGCLASS)), func.current_setting("block_size")
    )


class GroupCommit(Generic[Item, Result]):
    """One writer for many callers: group commit.

    What callers submit while a batch is being written waits, and then goes, all
    of it, in the next batch: one thread hop and one transaction however many
    came, so the cost of a transaction is shared as load grows, and a caller
    waits for at most the batch before its own. `write` gets a batch in the order
    it came and returns one outcome for each item, in that order: the result, or
    the exception to raise to that caller. It runs in a thread, never two at once.
    """

    def __init__(self, write: Callable[[list[Item]], list[Result | Exception]]) -> None:
        self._write = write
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    outcomes = await asyncio.to_thread(self._write, [item for item, _ in batch])
                except Exception as error:  # noqa: BLE001 - raised to each caller instead
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its caller went away; what it asked for was still done
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        finally:
            # Cancelled (the server is stopping): nobody may wait for an answer forever.
            for _, future in batch + self._waiting:
                future.cancel()
            self._waiting = []
            self._writer = None


def _with_driver(url: URL) -> URL:
    # psycopg 3 is the driver routined ships with; a plain postgresql:// URL
    # would otherwise ask SQLAlchemy for psycopg2.
    if url.drivername in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    return url


def _create_engine(parsed: URL, *, autocheckpoint: bool = True) -> Engine:
    url = parsed.render_as_string(hide_password=False)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite opens transactions lazily, at the first write, so a read and the
        # write that depends on it would not be one transaction. Turn that off and
        # begin explicitly (below), as SQLAlchemy's documentation recommends.
        dbapi_connection.isolation_level = None
        # WAL lets the server, its workers and CLI processes read while one writes;
        # busy_timeout makes a writer wait for the lock instead of failing at once.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # The write-ahead log keeps its largest size once checkpointed: a run that
        # wrote much would keep the disk it took for good.
        cursor.execute(f"PRAGMA journal_size_limit={_WAL_KEPT}")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN" if _reading.get() else "BEGIN IMMEDIATE")

    return engine


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


_MIGRATIONS = resources.files("routined") / "migrations"
_REVISES = re.compile(r'^(down_revision|revision) = "(\w+)"$', re.MULTILINE)


@functools.cache
def _head_revision() -> str | None:
    """The newest migration's id, read from the migration files' `revision =` and
    `down_revision =` lines; None when they do not make one line of history (then
    alembic decides)."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in (_MIGRATIONS / "versions").iterdir():
        if script.name.endswith(".py") and script.name != "__init__.py":
            for kind, value in _REVISES.findall(script.read_text()):
                (revisions if kind == "revision" else revised).add(value)
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def _stored_revision(connection: Connection) -> str | None:
    """The revision alembic recorded in this store; None when it holds none (or several)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    stored = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return stored[0] if len(stored) == 1 else None


class Checkpointer(Loop):
    """Checkpoints an SQLite store every second, apart from its writers.

    By default SQLite checkpoints in the commit that takes its log past 1,000
    pages: that writer copies the log into the database and syncs it, tens of
    milliseconds during which every other writer waits its turn, and under a
    stream of webhook bodies that is several times a second. Here a thread of
    its own does it, and writers only append to the log.
    """

    doing = "store: checkpointing"

    def step(self, stopping: Callable[[], bool]) -> float:
        self.store.checkpoint()
        return _CHECKPOINT_INTERVAL
