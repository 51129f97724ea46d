"""The setup script's cache and what its key depends on (`routined.environment`)."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest

from routined.environment import Environment, SetupCache, error_line
from tests.conftest import T0, wait_until

pytestmark = pytest.mark.anyio


def built_home(tmp_path: Path) -> Path:
    home = tmp_path / f"built-{len(list(tmp_path.glob('built-*')))}"
    (home / ".venv" / "bin").mkdir(parents=True)
    (home / ".venv" / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (home / ".venv" / "bin" / "tool").chmod(0o755)
    (home / ".cache-link").symlink_to("/etc/hostname")  # kept as a link, never followed
    return home


async def test_a_kept_home_is_restored_as_it_was(tmp_path: Path) -> None:
    cache = SetupCache(tmp_path / "cache", max_age=3600)
    await cache.keep("k1", built_home(tmp_path), now=T0, seconds=2.5)
    home = tmp_path / "run-home"
    home.mkdir()
    assert await cache.restore("k1", home, now=T0 + timedelta(minutes=5)) == 300
    assert (home / ".venv" / "bin" / "tool").read_text() == "#!/bin/sh\necho tool\n"
    assert os.access(home / ".venv" / "bin" / "tool", os.X_OK)
    assert (home / ".cache-link").is_symlink()
    assert (home / ".cache-link").readlink() == Path("/etc/hostname")


async def test_an_old_or_other_result_is_not_restored(tmp_path: Path) -> None:
    cache = SetupCache(tmp_path / "cache", max_age=3600)
    await cache.keep("k1", built_home(tmp_path), now=T0, seconds=1)
    home = tmp_path / "run-home"
    home.mkdir()
    assert await cache.restore("k2", home, now=T0) is None
    assert await cache.restore("k1", home, now=T0 + timedelta(hours=2)) is None
    assert await cache.restore("k1", home, now=T0 - timedelta(hours=1)) is None  # clock went back
    assert list(home.iterdir()) == []


async def test_a_new_result_replaces_the_others_and_abandoned_copies(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cache = SetupCache(folder, max_age=3600)
    await cache.keep("k1", built_home(tmp_path), now=T0, seconds=1)
    abandoned, copying = folder / ".partial-dead", folder / ".partial-busy"
    abandoned.mkdir()
    copying.mkdir()
    os.utime(abandoned, (T0.timestamp() - 7200, T0.timestamp() - 7200))
    os.utime(copying, (T0.timestamp() - 60, T0.timestamp() - 60))
    await cache.keep("k2", built_home(tmp_path), now=T0, seconds=1)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", ".partial-busy", "k2"]


async def test_a_result_is_not_replaced_while_a_run_restores_it(tmp_path: Path) -> None:
    cache = SetupCache(tmp_path / "cache", max_age=3600)
    await cache.keep("k1", built_home(tmp_path), now=T0, seconds=1)
    async with cache._locked(exclusive=False):  # a restore in progress
        replacing = asyncio.create_task(cache.keep("k2", built_home(tmp_path), now=T0, seconds=1))
        # Its copy is made: all that is left is to take the lock and swap.
        await wait_until(
            lambda: any(p.joinpath("made.json").exists() for p in cache.folder.glob(".partial-*"))
        )
        done, _ = await asyncio.wait([replacing], timeout=1)
        assert not done and (tmp_path / "cache" / "k1").exists()
    await replacing
    assert not (tmp_path / "cache" / "k1").exists() and (tmp_path / "cache" / "k2").exists()


def test_the_key_follows_what_the_result_depends_on() -> None:
    base = Environment(setup_script="make deps", variables={"A": "1"}, secrets=(("T", False),))
    assert (
        base.cache_key()
        == Environment(
            setup_script="make deps", variables={"A": "1"}, secrets=(("T", False),)
        ).cache_key()
    )
    others = [
        Environment(setup_script="make deps2", variables={"A": "1"}, secrets=(("T", False),)),
        Environment(setup_script="make deps", variables={"A": "2"}, secrets=(("T", False),)),
        Environment(setup_script="make deps", variables={"A": "1"}, secrets=(("U", False),)),
        Environment(
            setup_script="make deps", network="none", variables={"A": "1"}, secrets=(("T", False),)
        ),
        Environment(
            setup_script="make deps",
            network="custom",
            allowed_hosts=("pypi.org",),
            variables={"A": "1"},
            secrets=(("T", False),),
        ),
    ]
    keys = {other.cache_key() for other in others}
    assert base.cache_key() not in keys and len(keys) == len(others)


def test_with_cache_files_the_key_follows_what_the_repository_has_there() -> None:
    plain = Environment(setup_script="uv sync")
    assert plain.cache_key("100644 blob 1a2b\tuv.lock") == plain.cache_key()  # not asked for
    locked = Environment(setup_script="uv sync", cache_files=("uv.lock",))
    keys = {
        locked.cache_key("100644 blob 1a2b\tuv.lock"),
        locked.cache_key("100644 blob 3c4d\tuv.lock"),
        locked.cache_key(""),
        plain.cache_key(),
    }
    assert len(keys) == 4
    assert locked.cache_key("100644 blob 1a2b\tuv.lock") == Environment(
        setup_script="uv sync", cache_files=("uv.lock",)
    ).cache_key("100644 blob 1a2b\tuv.lock")


@pytest.mark.parametrize(
    ("lines", "quoted"),
    [
        # pip (PEP 668): the error, then advice ending in a `hint:`.
        (
            [
                "error: externally-managed-environment",
                "",
                "× This environment is externally managed",
                "note: If you believe this is a mistake…",
                "hint: See PEP 668 for the detailed specification.",
            ],
            "error: externally-managed-environment",
        ),
        # git: the last `fatal:` after earlier `error:` lines.
        (
            ["error: one", "fatal: repository 'x' not found", "  "],
            "fatal: repository 'x' not found",
        ),
        # apt and npm write theirs otherwise.
        (
            ["Reading package lists...", "E: Unable to locate package frob"],
            "E: Unable to locate package frob",
        ),
        (["npm ERR! code E404", "npm ERR! 404 Not Found", "done"], "npm ERR! 404 Not Found"),
        # No error line: the last line that is not advice, else the last line.
        (
            ["installing", "no such package: frobnicate", "hint: try again"],
            "no such package: frobnicate",
        ),
        (["hint: only advice"], "hint: only advice"),
        (["", " "], ""),
        ([], ""),
    ],
)
def test_the_line_quoted_from_a_failed_script_is_the_one_most_likely_to_say_why(
    lines: list[str], quoted: str
) -> None:
    assert error_line(lines) == quoted
