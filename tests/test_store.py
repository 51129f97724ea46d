"""The store on SQLite and PostgreSQL: schema, run states, events, claims, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import queue as queues
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import delete, event, select

from routined import runs, trigger_tokens
from routined.config import Settings
from routined.db import Checkpointer, GroupCommit, Store, rows_at_most, table_of
from routined.ids import new_id
from routined.models import Base, Routine, Run, RunEvent, Token, Trigger
from routined.runs import RunStatus, TransitionRefused
from tests.conftest import T0


def make_routine(store: Store, name: str = "nightly") -> Routine:
    with store.transaction() as session:
        routine = Routine(
            id=new_id("rtn"), name=name, prompt="Do it.", model=None, created_at=T0, updated_at=T0
        )
        routine.triggers = [
            Trigger(id=new_id("trig"), position=0, type="api", config={}, created_at=T0)
        ]
        session.add(routine)
    return routine


def queue(store: Store, routine: Routine, at: datetime = T0, text: str | None = None) -> Run:
    with store.transaction() as session:
        return runs.create(
            session,
            routine,
            trigger_type="manual",
            trigger_id=None,
            text=text,
            now=at,
            reason="fired in a test",
        )


def events(store: Store, run_id: str) -> list[RunEvent]:
    with store.transaction() as session:
        return list(
            session.scalars(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq)
            )
        )


def test_migrations_create_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrate_twice_is_a_no_op(store: Store) -> None:
    make_routine(store)
    store.migrate()
    with store.transaction() as session:
        assert session.scalar(select(Routine.name)) == "nightly"


def test_times_come_back_aware_utc_and_naive_ones_are_refused(store: Store) -> None:
    routine = make_routine(store)
    run = queue(store, routine, at=T0 + timedelta(microseconds=123))
    with store.transaction() as session:
        loaded = session.get(Run, run.id)
        assert loaded is not None
        assert loaded.created_at == T0 + timedelta(microseconds=123)
        assert loaded.created_at.utcoffset() == timedelta(0)
    with pytest.raises(Exception, match="naive datetime"), store.transaction() as session:
        session.add(
            Routine(
                id=new_id("rtn"),
                name="naive",
                prompt="x",
                created_at=T0.replace(tzinfo=None),
                updated_at=T0,
            )
        )


def test_a_run_walks_its_states_with_an_event_and_reason_for_each(store: Store) -> None:
    run = queue(store, make_routine(store))
    with store.transaction() as session:
        claim = runs.claim(session, "w1", now=T0)
    assert claim is not None and claim.run_id == run.id and claim.lease == 1
    steps = [
        (RunStatus.PREPARING, RunStatus.RUNNING, "agent starting"),
        (RunStatus.RUNNING, RunStatus.FINISHING, "agent done"),
        (RunStatus.FINISHING, RunStatus.SUCCEEDED, "delivered"),
    ]
    for offset, (expected, to, reason) in enumerate(steps, start=1):
        with store.transaction() as session:
            runs.transition(
                session,
                run.id,
                runs.Move(
                    expected,
                    to,
                    now=T0 + timedelta(seconds=offset),
                    reason=reason,
                    lease=claim.lease,
                ),
            )
    recorded = events(store, run.id)
    assert [(e.seq, e.from_status, e.to_status) for e in recorded] == [
        (1, None, "queued"),
        (2, "queued", "preparing"),
        (3, "preparing", "running"),
        (4, "running", "finishing"),
        (5, "finishing", "succeeded"),
    ]
    assert all(e.reason for e in recorded)
    with store.transaction() as session:
        finished = session.get(Run, run.id)
        assert finished is not None
        assert finished.status == "succeeded"
        assert finished.finished_at == T0 + timedelta(seconds=3)
        assert finished.worker_id == "w1"


def test_a_transition_from_the_wrong_state_changes_nothing(store: Store) -> None:
    run = queue(store, make_routine(store))
    with pytest.raises(TransitionRefused, match="was not running"), store.transaction() as session:
        runs.transition(
            session, run.id, runs.Move(RunStatus.RUNNING, RunStatus.FINISHING, now=T0, reason="x")
        )
    refused = pytest.raises(TransitionRefused, match="cannot go from queued to succeeded")
    with refused, store.transaction() as session:
        runs.transition(
            session, run.id, runs.Move(RunStatus.QUEUED, RunStatus.SUCCEEDED, now=T0, reason="x")
        )
    assert [e.to_status for e in events(store, run.id)] == ["queued"]


def test_a_stale_lease_cannot_move_a_run(store: Store) -> None:
    run = queue(store, make_routine(store))
    with store.transaction() as session:
        claim = runs.claim(session, "w1", now=T0)
    assert claim is not None
    with pytest.raises(TransitionRefused, match="under lease 0"), store.transaction() as session:
        runs.transition(
            session,
            run.id,
            runs.Move(RunStatus.PREPARING, RunStatus.RUNNING, now=T0, reason="x", lease=0),
        )
    with store.transaction() as session:
        assert session.scalar(select(Run.status).where(Run.id == run.id)) == "preparing"


def test_claims_take_the_oldest_queued_run_once(store: Store) -> None:
    routine = make_routine(store)
    newer = queue(store, routine, at=T0 + timedelta(seconds=5))
    older = queue(store, routine, at=T0)
    with store.transaction() as session:
        first = runs.claim(session, "w1", now=T0)
    with store.transaction() as session:
        second = runs.claim(session, "w2", now=T0)
    with store.transaction() as session:
        third = runs.claim(session, "w3", now=T0)
    assert first is not None and first.run_id == older.id
    assert second is not None and second.run_id == newer.id
    assert third is None


def test_concurrent_workers_never_claim_the_same_run(store: Store) -> None:
    routine = make_routine(store)
    queued = {queue(store, routine, at=T0 + timedelta(milliseconds=i)).id for i in range(30)}
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def work(worker: str) -> None:
        barrier.wait()
        # On PostgreSQL a claim skips the runs others hold (SKIP LOCKED), so finding
        # none does not mean none are left: go on until all are claimed (or, a bug,
        # some never are).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with store.transaction() as session:
                claim = runs.claim(session, worker, now=T0)
            with lock:
                if claim is not None:
                    claimed.append(claim.run_id)
                if len(claimed) >= len(queued):
                    return

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(queued)


def test_runs_without_a_heartbeat_end_as_lost_and_are_not_rerun(store: Store) -> None:
    routine = make_routine(store)
    stale, fresh = queue(store, routine), queue(store, routine, at=T0 + timedelta(seconds=1))
    with store.transaction() as session:
        stale_claim = runs.claim(session, "w1", now=T0)
        fresh_claim = runs.claim(session, "w2", now=T0)
    assert stale_claim is not None and fresh_claim is not None
    with store.transaction() as session:
        runs.heartbeat(session, [fresh_claim], now=T0 + timedelta(minutes=5))
    with store.transaction() as session:
        ended = runs.end_lost(
            session, now=T0 + timedelta(minutes=5, seconds=30), lost_after=timedelta(minutes=2)
        )
    assert ended == [stale.id]
    with store.transaction() as session:
        lost = session.get(Run, stale.id)
        kept = session.get(Run, fresh.id)
        assert lost is not None and kept is not None
        assert (lost.status, kept.status) == ("failed", "preparing")
        assert lost.error is not None and lost.error.startswith("lost:")
    assert "no heartbeat" in (events(store, stale.id)[-1].reason or "")


def test_tokens_are_stored_as_digests_and_only_the_newest_works(store: Store) -> None:
    routine = make_routine(store)
    other = make_routine(store, "other")
    trigger_id, other_trigger_id = routine.triggers[0].id, other.triggers[0].id
    with store.transaction() as session:
        first = trigger_tokens.issue(session, trigger_id, now=T0)
        other_token = trigger_tokens.issue(session, other_trigger_id, now=T0)
    with store.transaction() as session:
        stored = session.scalars(select(Token)).all()
        assert all(first not in (t.digest, t.lookup) for t in stored)
        assert trigger_tokens.verify(session, trigger_id, first)
        assert not trigger_tokens.verify(session, trigger_id, other_token)
    with store.transaction() as session:
        second = trigger_tokens.issue(session, trigger_id, now=T0 + timedelta(hours=1))
    with store.transaction() as session:
        assert first.startswith("rtd_") and len(first) == trigger_tokens.LENGTH
        assert not trigger_tokens.verify(session, trigger_id, first)
        assert trigger_tokens.verify(session, trigger_id, second)
        assert not trigger_tokens.verify(session, trigger_id, second[:-1] + "!")


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "rtd_",
        "Bearer",
        "rtd_" + "a" * 43,
        "rtd_" + "a" * 45,
        "xyz_" + "a" * 44,
        "rtd_" + "é" * 44,
        "rtd_" + "a" * 43 + "٣",  # a digit, but not an ASCII one
        "rtd_" + "a" * 43 + "-",
    ],
)
def test_malformed_tokens_are_refused_before_any_lookup(presented: str) -> None:
    assert trigger_tokens.lookup_part(presented) is None


def test_plain_postgresql_urls_use_psycopg(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain)
    try:
        store.migrate()
        assert store.url.drivername == "postgresql+psycopg"
    finally:
        store.dispose()


def test_a_held_run_fails_from_whatever_state_it_is_in(store: Store) -> None:
    run = queue(store, make_routine(store))
    with store.transaction() as session:
        claim = runs.claim(session, "w1", now=T0)
    assert claim is not None
    with store.transaction() as session:
        runs.transition(session, run.id, runs.Move(RunStatus.PREPARING, RunStatus.RUNNING, now=T0, reason="x", lease=claim.lease))  # fmt: skip
    with store.transaction() as session:
        assert not runs.fail(session, runs.Claim(run.id, claim.lease + 1), now=T0, error="stale")
        assert runs.fail(session, claim, now=T0, error="interrupted: stopped")
    with store.transaction() as session:
        assert not runs.fail(session, claim, now=T0, error="twice")
        ended = session.get(Run, run.id)
        assert ended is not None and (ended.status, ended.error) == (
            "failed",
            "interrupted: stopped",
        )


def test_upgrading_keeps_every_row(store: Store, tmp_path: Path) -> None:
    """Each migration on a store with data: SQLite rebuilds tables to change them, which
    must not cascade into the rows that refer to them."""
    from routined.models import Fire, Repository, Run, Token, Trigger

    older = (
        Store(
            str(store.url.render_as_string(hide_password=False)).replace("routined.db", "older.db")
        )
        if store.is_sqlite
        else None
    )
    target = older or store
    if older is None:  # PostgreSQL: start again from the first migration
        from alembic import command

        from routined.db import _alembic_config

        with store.engine.begin() as connection:
            config = _alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
    else:
        older.migrate("0002")
    with target.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO routines (id, name, prompt, created_at, updated_at) VALUES ('rtn_1', 'r', 'p', '2026-11-28 12:00:00', '2026-11-28 12:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO repositories (routine_id, position, url) VALUES ('rtn_1', 0, '/x')"
        )
        connection.exec_driver_sql(
            "INSERT INTO triggers (id, routine_id, position, type, config, created_at) VALUES ('trig_1', 'rtn_1', 0, 'api', '{}', '2026-11-28 12:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO tokens (trigger_id, lookup, digest, created_at) VALUES ('trig_1', 'abc', 'def', '2026-11-28 12:00:00')"
        )
        connection.exec_driver_sql(
            "INSERT INTO runs (id, session_id, routine_id, trigger_type, status, created_at, branches, lease, event_seq) "
            "VALUES ('run_1', 'session_1', 'rtn_1', 'api', 'queued', '2026-11-28 12:00:00', '[]', 0, 0)"
        )
        connection.exec_driver_sql(
            "INSERT INTO fires (routine_id, trigger_id, trigger_type, decided_at, outcome, reason) VALUES ('rtn_1', 'trig_1', 'api', '2026-11-28 12:00:00', 'fired', 'x')"
        )
    target.migrate()
    with target.transaction(readonly=True) as session:
        counts = [
            len(session.scalars(select(model)).all())
            for model in (Routine, Repository, Trigger, Token, Run, Fire)
        ]
        assert session.get_one(Routine, "rtn_1").account_id == "acct_default"
    assert counts == [1, 1, 1, 1, 1, 1]
    if older is not None:
        older.dispose()


def test_rows_at_most_is_never_below_the_rows(store: Store) -> None:
    def bound_and_count() -> tuple[int, int]:
        with store.transaction() as session:
            return rows_at_most(session, table_of(Run)), len(session.scalars(select(Run.id)).all())

    assert bound_and_count() == (0, 0)
    routine = make_routine(store)
    queued = [queue(store, routine, T0 + timedelta(seconds=n)) for n in range(40)]
    bound, count = bound_and_count()
    assert count == 40 and bound >= count
    with store.transaction() as session:
        session.execute(delete(Run).where(Run.id.in_([run.id for run in queued[:25]])))
    bound, count = bound_and_count()
    assert count == 15 and bound >= count


def test_group_commit_writes_what_waited_meanwhile_as_one_batch_in_order() -> None:
    batches: list[list[int]] = []
    writing, go_on = threading.Event(), threading.Event()

    def write(items: list[int]) -> list[int | Exception]:
        batches.append(items)
        if len(batches) == 1:
            writing.set()
            go_on.wait(timeout=30)
        return [ValueError(f"refused {item}") if item == 3 else 10 * item for item in items]

    async def scenario() -> list[int | BaseException]:
        group = GroupCommit(write)
        first = asyncio.create_task(group.submit(1))
        await asyncio.to_thread(writing.wait, 30)
        rest = [asyncio.create_task(group.submit(item)) for item in (2, 3, 4)]
        await asyncio.sleep(0)  # each runs up to its wait for an answer
        go_on.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    answers = asyncio.run(scenario())
    assert batches == [[1], [2, 3, 4]]
    assert answers[:2] == [10, 20] and answers[3] == 40
    assert isinstance(answers[2], ValueError) and str(answers[2]) == "refused 3"


def test_group_commit_tells_every_caller_when_a_batch_fails() -> None:
    def write(items: list[int]) -> list[int | Exception]:
        raise RuntimeError("the store is gone")

    async def scenario() -> list[int | BaseException]:
        group = GroupCommit(write)
        return list(await asyncio.gather(group.submit(1), group.submit(2), return_exceptions=True))

    answers = asyncio.run(scenario())
    assert [str(answer) for answer in answers] == ["the store is gone"] * 2


def impatient_store(url: str) -> Store:
    """A store whose connections do not wait for SQLite's write lock: a writer that got
    in without waiting for its turn would fail at once ("database is locked"), so only
    the turns can make a second writer wait."""
    store = Store(url)

    def no_busy_wait(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=0")

    # Listeners run in the order they were added: this one after the store's own pragmas.
    event.listen(store.engine, "connect", no_busy_wait)
    store.migrate()
    return store


def names(store: Store) -> list[str]:
    with store.transaction(readonly=True) as session:
        return list(session.scalars(select(Routine.name).order_by(Routine.name)))


def test_writer_threads_take_turns(tmp_path: Path) -> None:
    store = impatient_store(f"sqlite:///{tmp_path / 'routined.db'}")
    first_in, let_first_go = threading.Event(), threading.Event()
    second_trying, second_in = threading.Event(), threading.Event()
    seen_by_second: list[str] = []
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with store.transaction() as session:
                session.add(
                    Routine(
                        id=new_id("rtn"), name="first", prompt="p", created_at=T0, updated_at=T0
                    )
                )
                session.flush()
                first_in.set()
                assert let_first_go.wait(timeout=30)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def second() -> None:
        try:
            second_trying.set()
            with store.transaction() as session:
                second_in.set()
                seen_by_second.extend(session.scalars(select(Routine.name)))
                session.add(
                    Routine(
                        id=new_id("rtn"), name="second", prompt="p", created_at=T0, updated_at=T0
                    )
                )
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        threads[0].start()
        assert first_in.wait(timeout=30)
        threads[1].start()
        assert second_trying.wait(timeout=30)
        # A window for the second writer to get in, which it must not while the first
        # is open: without turns it would be in (or failed) well within it.
        assert not second_in.wait(timeout=0.3)
    finally:
        let_first_go.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert seen_by_second == ["first"]  # it began after the first had committed
    assert names(store) == ["first", "second"]
    store.dispose()


# A writer in another process: it says when it is about to write, then records in its
# row whether the test's row was already committed when its transaction began.
_OTHER_PROCESS_WRITER = """
import sys
from datetime import UTC, datetime

from sqlalchemy import event, select

from routined.db import Store
from routined.ids import new_id
from routined.models import Routine

store = Store(sys.argv[1])
event.listen(
    store.engine, "connect", lambda connection, _: connection.execute("PRAGMA busy_timeout=0")
)
print("started", flush=True)
with store.transaction() as session:
    seen = session.scalar(select(Routine.name).where(Routine.name == "parent"))
    now = datetime.now(UTC)
    session.add(
        Routine(id=new_id("rtn"), name="child", prompt=f"saw {seen}", created_at=now, updated_at=now)
    )
store.dispose()
"""


def test_a_writer_in_another_process_waits_for_its_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'routined.db'}"
    store = impatient_store(url)
    lines: queues.Queue[str] = queues.Queue()
    with store.transaction() as session:
        session.add(
            Routine(id=new_id("rtn"), name="parent", prompt="p", created_at=T0, updated_at=T0)
        )
        session.flush()
        child = subprocess.Popen(
            [sys.executable, "-c", _OTHER_PROCESS_WRITER, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            stdout = child.stdout
            threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
            assert lines.get(timeout=30) == "started\n"
            # Without turns the child, which does not wait for SQLite's lock, would
            # have failed within this window; with them it is still waiting.
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(timeout=0.5)
        except BaseException:
            child.kill()
            child.wait(timeout=30)
            raise
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 0, stderr
    with store.transaction(readonly=True) as session:
        assert session.scalar(select(Routine.prompt).where(Routine.name == "child")) == (
            "saw parent"
        )
    store.dispose()


def test_a_write_transaction_holds_the_turn_for_other_processes(sqlite_store: Store) -> None:
    writer = Path(f"{sqlite_store.url.database}-writer")
    # What a writer in another process would take, asked for without waiting.
    with writer.open("ab") as other, sqlite_store.transaction(), pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with writer.open("ab") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the writer is done
        fcntl.flock(other, fcntl.LOCK_UN)


def test_a_readonly_transaction_does_not_wait_for_an_open_writer(sqlite_store: Store) -> None:
    make_routine(sqlite_store, "committed")
    read: list[str] = []
    with sqlite_store.transaction() as session:
        session.add(
            Routine(id=new_id("rtn"), name="pending", prompt="p", created_at=T0, updated_at=T0)
        )
        session.flush()
        reader = threading.Thread(target=lambda: read.extend(names(sqlite_store)))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "the reader waited for the writer"
    assert read == ["committed"]


def test_background_checkpoints_turn_sqlites_own_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'routined.db'}"
    stores = [Store(url, background_checkpoints=True), Store(url)]
    try:
        reported = []
        for store in stores:
            with store.engine.connect() as connection:
                reported.append(connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar())
        assert reported == [0, 1000]
    finally:
        for store in stores:
            store.dispose()


def in_database_file(store: Store, tmp_path: Path) -> list[str]:
    """The routines the database file holds, not counting what is still in the log."""
    assert store.url.database is not None
    copy = tmp_path / "copy" / "routined.db"
    copy.parent.mkdir(exist_ok=True)
    copy.unlink(missing_ok=True)
    shutil.copyfile(store.url.database, copy)  # the file alone: not its -wal
    with contextlib.closing(sqlite3.connect(copy)) as connection:
        rows = connection.execute("SELECT name FROM routines ORDER BY name").fetchall()
    return [name for (name,) in rows]


def outside_a_transaction(store: Store) -> sqlite3.Connection:
    """A plain connection to the store's database: SQLite checkpoints only outside a
    transaction, and the store's connections begin one for every statement."""
    assert store.url.database is not None
    return sqlite3.connect(store.url.database, isolation_level=None)


def fully_checkpointed(store: Store) -> bool:
    with contextlib.closing(outside_a_transaction(store)) as connection:
        busy, log, done = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy == 0 and log == done)


@pytest.fixture
def checkpointed_store(tmp_path: Path) -> Iterator[Store]:
    """A store that leaves checkpoints to `checkpoint()`, its schema already in the
    database file, so that what a test writes is all the log holds."""
    store = Store(f"sqlite:///{tmp_path / 'routined.db'}", background_checkpoints=True)
    store.migrate()
    assert fully_checkpointed(store)
    try:
        yield store
    finally:
        store.dispose()


def test_checkpoint_moves_the_log_into_the_database_file(
    checkpointed_store: Store, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        make_routine(checkpointed_store, name)
    wal = Path(f"{checkpointed_store.url.database}-wal")
    assert wal.stat().st_size > 0
    assert in_database_file(checkpointed_store, tmp_path) == []
    checkpointed_store.checkpoint()
    assert in_database_file(checkpointed_store, tmp_path) == ["a", "b", "c"]
    assert fully_checkpointed(checkpointed_store)


def test_the_checkpointer_checkpoints_and_comes_back(
    checkpointed_store: Store, settings: Settings, tmp_path: Path
) -> None:
    make_routine(checkpointed_store, "a")
    assert in_database_file(checkpointed_store, tmp_path) == []
    checkpointer = Checkpointer(checkpointed_store, settings, clock=lambda: T0)
    assert checkpointer.step(lambda: False) > 0
    assert in_database_file(checkpointed_store, tmp_path) == ["a"]


def test_routines_stored_before_network_levels_keep_the_model_api_only(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        store.migrate("0006")
        with store.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO routines (id, account_id, name, prompt, created_at, updated_at, "
                "catch_up, catch_up_window, overlap, stagger, pull_requests, comment) VALUES "
                "('rtn_old', 'acct_default', 'old', 'p', '2026-11-01 00:00:00', "
                "'2026-11-01 00:00:00', 'latest', 604800, 'skip', 0, 0, 0)"
            )
        store.migrate()
        with store.transaction() as session:
            old = session.get(Routine, "rtn_old")
            assert old is not None
            assert old.environment == {"network": "none"} and old.limits == {}
    finally:
        store.dispose()
