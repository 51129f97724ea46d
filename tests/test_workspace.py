"""Mirrors and fresh checkouts."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from routined import workspace
from tests.conftest import branches, git, push_commit

pytestmark = pytest.mark.anyio


async def test_a_local_origin_is_its_own_mirror_and_clones_share_no_files(
    origin: Path, tmp_path: Path
) -> None:
    mirror = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    assert mirror.path == origin.resolve() and mirror.objects == origin.resolve() / "objects"
    assert not (tmp_path / "mirrors").exists()
    checkout = await workspace.clone(mirror, tmp_path / "ws" / "app")
    assert checkout.default_branch == "main"
    assert (checkout.path / "CHANGELOG.md").read_text() == "# Changelog\n"
    assert branches(origin)["main"] in checkout.base
    alternates = (checkout.path / ".git" / "objects" / "info" / "alternates").read_text()
    assert alternates.strip() == str(origin.resolve() / "objects")
    origin_inodes = {p.stat().st_ino for p in (origin / "objects").rglob("*") if p.is_file()}
    clone_inodes = {p.stat().st_ino for p in (checkout.path / ".git").rglob("*") if p.is_file()}
    assert origin_inodes.isdisjoint(clone_inodes)


def test_which_urls_name_local_repositories(origin: Path, tmp_path: Path) -> None:
    assert workspace.local_repository(str(origin)) == origin.resolve()
    assert workspace.local_repository(f"file://{origin}") == origin.resolve()
    assert workspace.local_repository(str(tmp_path)) is None  # not a repository
    for remote in ("https://github.com/acme/app.git", "git@github.com:acme/app.git",
                   "ssh://git@host/app.git", f"ext::git-upload-pack {origin}"):  # fmt: skip
        assert workspace.local_repository(remote) is None


async def test_mirrors_of_network_origins(tmp_path: Path, origin: Path) -> None:
    # git's "ext::" transport stands in for a network origin: the URL is not a
    # local path, so routined keeps a mirror of it, as it would of https://…
    url = f"ext::git-upload-pack {origin}"
    mirrors = tmp_path / "mirrors"
    protocol = {"GIT_ALLOW_PROTOCOL": "ext:file"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in protocol.items():
            patch.setenv(name, value)
        mirror = await workspace.sync_mirror(url, mirrors)
        assert mirror.path.parent == mirrors and mirror.default_branch == "main"
        assert git("rev-parse", "main", cwd=mirror.path) == branches(origin)["main"]
        # New commits at the origin reach the next checkout.
        push_commit(origin, tmp_path / "seed", "NEW.md", "new\n")
        mirror = await workspace.sync_mirror(url, mirrors)
        checkout = await workspace.clone(mirror, tmp_path / "ws" / "app")
    assert (checkout.path / "NEW.md").read_text() == "new\n"
    assert git("remote", "get-url", "origin", cwd=checkout.path) == url


async def test_credentials_in_urls_are_never_shown() -> None:
    url = "https://x-access-token:ghs_SECRET@github.com/acme/app.git"
    assert workspace.display_url(url) == "https://github.com/acme/app.git"
    assert workspace.display_url("https://user@host:8443/r.git") == "https://host:8443/r.git"
    assert workspace.display_url("git@github.com:acme/app.git") == "git@github.com:acme/app.git"
    unreachable = "https://x:ghs_SECRET@127.0.0.1:9/r.git"
    with pytest.raises(workspace.GitError) as failed:
        await workspace.git("ls-remote", unreachable, secret=unreachable)
    assert "ghs_SECRET" not in str(failed.value)
    assert "https://127.0.0.1:9/r.git" in str(failed.value)


async def test_an_empty_origin_clones_with_its_future_default_branch(tmp_path: Path) -> None:
    bare = tmp_path / "empty.git"
    git("init", "--quiet", "--bare", "--initial-branch=trunk", str(bare))
    mirror = await workspace.sync_mirror(str(bare), tmp_path / "mirrors")
    checkout = await workspace.clone(mirror, tmp_path / "ws" / "empty")
    assert checkout.default_branch == "trunk" and checkout.base == ()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/srv/git/app.git", "app"),
        ("https://github.com/acme/web-app.git", "web-app"),
        ("git@github.com:acme/api.git", "api"),
        ("/srv/git/app/", "app"),
    ],
)
def test_checkout_names(url: str, expected: str) -> None:
    taken: set[str] = set()
    assert workspace.checkout_name(url, taken) == expected
    assert workspace.checkout_name(url, taken) == f"{expected}-2"


async def test_a_checkout_of_a_url_with_credentials_does_not_hold_them(
    origin: Path, tmp_path: Path
) -> None:
    url = "https://x-access-token:ghs_SECRET@github.com/acme/app.git"
    mirror = workspace.Mirror(url, origin, origin / "objects", "main")
    checkout = await workspace.clone(mirror, tmp_path / "ws" / "app")
    assert "ghs_SECRET" not in (checkout.path / ".git" / "config").read_text()
    assert git("remote", "get-url", "origin", cwd=checkout.path) == (
        "https://github.com/acme/app.git"
    )
    assert checkout.shown_url == "https://github.com/acme/app.git"


async def test_a_standby_checkout_is_taken_once_while_the_origin_has_not_moved(
    origin: Path, tmp_path: Path
) -> None:
    mirror = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    standby = tmp_path / "standby" / "0"
    await workspace.prepare_standby(mirror, standby)
    fresh = await workspace.clone(mirror, tmp_path / "fresh")
    taken = await workspace.take_standby(mirror, standby, tmp_path / "run1" / "app")
    assert taken is not None and taken.path == tmp_path / "run1" / "app"
    assert (taken.default_branch, taken.base) == (fresh.default_branch, fresh.base)
    assert git("rev-parse", "HEAD", cwd=taken.path) == branches(origin)["main"]
    assert git("status", "--porcelain", cwd=taken.path) == ""
    assert await workspace.take_standby(mirror, standby, tmp_path / "run2" / "app") is None


def checkout_state(path: Path) -> dict[str, str]:
    """All a run can see of a checkout: its refs, where HEAD is, its files, its status."""
    return {
        "refs": git("for-each-ref", "--format=%(objectname) %(refname) %(symref)", cwd=path),
        "head": git("symbolic-ref", "HEAD", cwd=path) + git("rev-parse", "HEAD", cwd=path),
        "files": "\n".join(
            sorted(str(p.relative_to(path)) for p in path.rglob("*") if ".git" not in p.parts)
        ),
        "status": git("status", "--porcelain", "--ignored", cwd=path),
    }


@pytest.mark.parametrize(
    "move", ["new commit", "new default branch", "new tag", "tag and branch removed"]
)
async def test_a_standby_checkout_is_brought_up_to_an_origin_that_moved(
    origin: Path, tmp_path: Path, move: str
) -> None:
    git("tag", "v0", "main", cwd=origin)
    git("branch", "old-feature", "main", cwd=origin)
    mirror = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    standby = tmp_path / "standby" / "0"
    await workspace.prepare_standby(mirror, standby)
    # Left in the standby as a run never leaves it, to show it cannot outlive the catch-up.
    (standby / "ready" / "repo" / "stray.txt").write_text("not from the origin\n")
    if move == "new default branch":
        git("branch", "trunk", "main", cwd=origin)
        git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=origin)
    elif move == "new tag":
        git("tag", "v1", "main", cwd=origin)
    elif move == "tag and branch removed":
        git("tag", "-d", "v0", cwd=origin)
        git("branch", "-D", "old-feature", cwd=origin)
    else:
        push_commit(origin, tmp_path / "seed", "NEW.md", "new\n")
    mirror = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    taken = await workspace.take_standby(mirror, standby, tmp_path / "run" / "app")
    fresh = await workspace.clone(mirror, tmp_path / "fresh" / "app")
    assert taken is not None and taken.path == tmp_path / "run" / "app"
    assert (taken.default_branch, taken.base) == (fresh.default_branch, fresh.base)
    assert checkout_state(taken.path) == checkout_state(fresh.path)
    assert not (standby / "ready").exists()  # taken: not offered again


async def test_credentials_never_reach_a_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other local users can read command lines; git gets the secret URL through
    its environment instead."""
    seen: list[tuple[tuple[str, ...], dict[str, str]]] = []
    spawn = asyncio.create_subprocess_exec

    async def recording(*args: str, **kwargs: object) -> asyncio.subprocess.Process:
        seen.append((args, dict(kwargs["env"])))  # type: ignore[call-overload]
        return await spawn(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    url = "https://x:ghs_SECRET@127.0.0.1:9/acme/app.git"
    with pytest.raises(workspace.GitError):
        await workspace.git("ls-remote", url, secret=url, time_limit=20)
    [(args, env)] = seen
    assert not any("ghs_SECRET" in arg for arg in args)
    assert "https://127.0.0.1:9/acme/app.git" in args
    assert env["GIT_CONFIG_KEY_0"] == f"url.{url}.insteadOf"


async def test_a_standby_is_taken_by_a_run_whose_url_carries_a_fresh_token(
    origin: Path, tmp_path: Path
) -> None:
    # A run on GitHub fetches with an installation token minted for it; the standby
    # was readied with the routine's URL, which has none.
    local = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    plain = "https://github.com/acme/app.git"
    readied = workspace.Mirror(plain, local.path, local.objects, "main")
    await workspace.prepare_standby(readied, tmp_path / "standby")
    with_token = replace(readied, url="https://x-access-token:ghs_fresh@github.com/acme/app.git")
    taken = await workspace.take_standby(with_token, tmp_path / "standby", tmp_path / "run")
    assert taken is not None
    assert git("remote", "get-url", "origin", cwd=taken.path) == plain


async def test_what_a_checkout_has_at_paths_is_read_from_git_not_the_work_tree(
    origin: Path, tmp_path: Path
) -> None:
    clone = tmp_path / "colleague"
    push_commit(origin, clone, "uv.lock", "deps 1\n")
    (clone / "web").mkdir()
    push_commit(origin, clone, "web/package-lock.json", "{}\n")
    (clone / "link.lock").symlink_to("/etc/hostname")
    git("add", "link.lock", cwd=clone)
    git("commit", "--quiet", "-m", "a link", cwd=clone)
    git("push", "--quiet", "origin", "main", cwd=clone)
    mirror = await workspace.sync_mirror(str(origin), tmp_path / "mirrors")
    checkout = await workspace.clone(mirror, tmp_path / "ws" / "app")
    (checkout.path / "uv.lock").write_text("changed in the work tree\n")

    said = await workspace.committed(
        checkout, ["uv.lock", "web", "link.lock", "missing.lock", ":(glob)*.lock"]
    )
    blob = {path: git("rev-parse", f"main:{path}", cwd=origin) for path in
            ("uv.lock", "web/package-lock.json", "link.lock")}  # fmt: skip
    assert said.split("\0") == [
        f"120000 blob {blob['link.lock']}\tlink.lock",
        f"100644 blob {blob['uv.lock']}\tuv.lock",
        f"100644 blob {blob['web/package-lock.json']}\tweb/package-lock.json",
        "",
    ]
    assert git("cat-file", "-p", blob["link.lock"], cwd=origin) == "/etc/hostname"


async def test_an_empty_repository_has_nothing_at_any_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(empty))
    mirror = await workspace.sync_mirror(str(empty), tmp_path / "mirrors")
    checkout = await workspace.clone(mirror, tmp_path / "ws" / "app")
    assert await workspace.committed(checkout, ["uv.lock"]) == ""
