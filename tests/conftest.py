"""Shared test kit: real stores (SQLite and PostgreSQL), real git origins, the fake model API."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

# pytest-xdist's workers run with COLUMNS=80, which the CLI's consoles would take, when
# first imported, as a width fixed for good: the tests that widen the output by setting
# COLUMNS themselves would no longer widen it.
os.environ.pop("COLUMNS", None)

from routined.config import Settings
from routined.db import Store
from routined.testing.fake_anthropic import FakeAnthropic
from tests.stage_support import Stages, stages_for

POSTGRES_ADMIN_URL = os.environ.get(
    "ROUTINED_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(POSTGRES_ADMIN_URL)
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, dbname=url.database,
        password=url.password, autocommit=True,
    )  # fmt: skip


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"routined_test_{secrets.token_hex(6)}"
    try:
        admin = _admin_connect()
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is needed for the store tests ({POSTGRES_ADMIN_URL}): {error}; "
            "set ROUTINED_TEST_POSTGRES_URL to an admin URL"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio, as routined does (anyio would also try trio)."""
    return "asyncio"


@pytest.fixture
def stages(settings: Settings, origin: Path, tmp_path: Path) -> Iterator[Stages]:
    """A run's stages on the fast harness (`tests/stage_support.py`)."""
    found = stages_for(settings, origin, tmp_path)
    try:
        yield found
    finally:
        found.store.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated store on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'routined.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = Store(url)
    opened.migrate()
    try:
        yield opened
    finally:
        opened.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'routined.db'}")
    opened.migrate()
    try:
        yield opened
    finally:
        opened.dispose()


def git(
    *args: str, cwd: Path | None = None, who: tuple[str, str] = ("Test", "test@example.com")
) -> str:
    """git as `who` (name, email), author and committer."""
    name, email = who
    result = subprocess.run(
        # A run's checkout belongs to the sandbox's user; the test looks at it as root.
        ["git", "-c", "safe.directory=*", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        },
    )
    return result.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A bare repository with two commits on `main`, like a project's origin."""
    return make_origin(tmp_path / "origin")


def make_origin(folder: Path) -> Path:
    """`folder/app.git`: a bare repository with two commits on `main`."""
    bare = folder / "app.git"
    bare.parent.mkdir(parents=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    seed = folder / "seed"
    git("clone", "--quiet", str(bare), str(seed))
    (seed / "README.md").write_text("# app\n")
    git("add", "README.md", cwd=seed)
    git("commit", "--quiet", "-m", "first", cwd=seed)
    (seed / "CHANGELOG.md").write_text("# Changelog\n")
    git("add", "CHANGELOG.md", cwd=seed)
    git("commit", "--quiet", "-m", "second", cwd=seed)
    git("push", "--quiet", "origin", "main", cwd=seed)
    return bare


def push_commit(
    origin: Path,
    clone: Path,
    path: str,
    content: str,
    branch: str = "main",
    who: tuple[str, str] = ("Test", "test@example.com"),
) -> str:
    """Someone else's commit (by `who`, name and email) on `branch` of the origin (made
    in `clone`); its sha."""
    if not clone.exists():
        git("clone", "--quiet", str(origin), str(clone))
    if branch not in git("branch", "--format=%(refname:short)", cwd=clone).split():
        git("switch", "--quiet", "-c", branch, cwd=clone)
    (clone / path).write_text(content)
    git("add", path, cwd=clone)
    git("commit", "--quiet", "-m", f"add {path}", cwd=clone, who=who)
    git("push", "--quiet", "origin", branch, cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


def branches(bare: Path) -> dict[str, str]:
    """Branch name → commit, as the origin has them."""
    listing = git("for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads", cwd=bare)
    return dict(line.split(" ") for line in listing.splitlines())


@pytest.fixture(scope="session")
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key="sk-ant-test") as fake:
        yield fake


@pytest.fixture
def settings(tmp_path: Path, fake_api: FakeAnthropic) -> Settings:
    home = tmp_path / "home"
    return Settings.from_env(
        {
            "ROUTINED_HOME": str(home),
            "ANTHROPIC_BASE_URL": fake_api.base_url,
            "ANTHROPIC_API_KEY": "sk-ant-test",
            "ROUTINED_PUBLIC_URL": "http://routined.test",
            "ROUTINED_HEARTBEAT_INTERVAL": "0.5",
        }
    )


def poll_until(what: str, condition: Callable[[], bool], seconds: float = 30) -> None:
    """Poll, without an event loop, for a state another process brings about."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


async def wait_until(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Poll for a state another process (or task) brings about, within a deadline."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(0.02)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The store CLI commands run in this process work on, as its URL: SQLite in a fresh
    `ROUTINED_HOME`, or a PostgreSQL database of the test's own; no remote server."""
    monkeypatch.setenv("ROUTINED_HOME", str(tmp_path / "home"))
    for name in ("ROUTINED_URL", "ROUTINED_API_KEY", "ROUTINED_SECRET_KEY", "ROUTINED_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "sqlite":
        monkeypatch.delenv("ROUTINED_DATABASE_URL", raising=False)
        return f"sqlite:///{tmp_path / 'home' / 'routined.db'}"
    url: str = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("ROUTINED_DATABASE_URL", url)
    return url


@pytest.fixture
def uvicorn_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """`caplog` with uvicorn's error log too: whether that one reaches the root logger
    depends on how an earlier test in this process configured uvicorn."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    uvicorn_errors.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn_errors.removeHandler(caplog.handler)


def api_trigger(store: Store, tmp_path: Path) -> tuple[str, str]:
    """A routine named `target` with one API trigger, applied at T0; the trigger's id
    and a token for it. No run is executed: its repository is any folder."""
    from routined import trigger_tokens
    from routined.models import Trigger
    from routined.routines.apply import apply
    from routined.routines.load import load

    path = tmp_path / "routines.yaml"
    path.write_text(
        "routines:\n"
        f"  - {{name: target, prompt: Go., repositories: [{{url: {tmp_path}}}],"
        " triggers: [{type: api}]}\n"
    )
    with store.transaction() as session:
        apply(session, load(path, now=T0), now=T0)
    with store.transaction() as session:
        [trigger_id] = session.scalars(select(Trigger.id)).all()
        return trigger_id, trigger_tokens.issue(session, trigger_id, now=T0)


ROUTINED = str(Path(sys.executable).with_name("routined"))


def start_serve(env: Mapping[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """`routined serve` on a free port, started as its user starts it: the process, and
    the URL it says it serves at, once it listens."""
    process = subprocess.Popen(
        [ROUTINED, "serve", "--port", "0", *args],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"serving at (http://\S+)", line)
    assert found, f"serve printed {line!r}"
    return process, found.group(1)
