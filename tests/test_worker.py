"""The worker loop: it keeps going through store errors and ends runs it cannot do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from routined import runs
from routined.config import Settings
from routined.db import Store
from routined.ids import new_id
from routined.models import Repository, Routine, Run
from routined.worker import Worker, utcnow
from tests.conftest import wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def queue_unclonable(store: Store, tmp_path: Path) -> str:
    """A run whose repository is not there: it fails at once, without an agent."""
    with store.transaction() as session:
        routine = Routine(
            id=new_id("rtn"), name="gone", prompt="x", created_at=utcnow(), updated_at=utcnow()
        )
        routine.repositories = [Repository(position=0, url=str(tmp_path / "missing.git"))]
        session.add(routine)
        session.flush()
        run = runs.create(
            session, routine, trigger_type="manual", trigger_id=None, text=None, now=utcnow(),
            reason="test",
        )  # fmt: skip
        return run.id


def status(store: Store, run_id: str) -> tuple[str, str | None]:
    with store.transaction() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.status, run.error


async def test_the_loop_survives_store_errors_and_goes_on(
    store: Store, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = queue_unclonable(store, tmp_path)
    real_claim = runs.claim
    failures: list[int] = []

    def flaky_claim(*args: object, **kwargs: object) -> runs.Claim | None:
        if not failures:
            failures.append(1)
            raise OperationalError("SELECT …", {}, Exception("database is locked"))
        return real_claim(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runs, "claim", flaky_claim)
    worker = Worker(store, settings, retry_after_error=0.01)
    stop = asyncio.Event()
    looping = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: status(store, run_id)[0] in runs.TERMINAL)
    finally:
        stop.set()
        await looping
    assert failures == [1]
    state, error = status(store, run_id)
    assert state == "failed" and error is not None and error.startswith("clone_failed:")


async def test_a_run_taken_by_another_worker_is_left_alone(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    run_id = queue_unclonable(store, tmp_path)
    with store.transaction() as session:
        assert runs.claim(session, "elsewhere", now=utcnow(), run_id=run_id) is not None
    assert await Worker(store, settings).run_claimed(run_id) is False
    with store.transaction() as session:
        assert session.scalar(select(Run.worker_id).where(Run.id == run_id)) == "elsewhere"
