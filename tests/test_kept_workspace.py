"""What is kept of a run that delivered nothing is safe to inspect, and `routined inspect`.

Written as the attack: a hostile agent leaves its workspace so that a person's plain
`git status`, `git log` or `git diff` there runs its program, then makes the delivery
fail so the workspace is kept. The person is played by real git at a terminal (a
pseudo-terminal, so pagers run) with a default configuration; the agent's work is
packed by the real finishing script in the real sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from routined import workspace
from routined.cli import app
from routined.runs import kept, outbox
from routined.sandbox import bubblewrap
from tests.conftest import git
from tests.test_delivery import ROUTINED, SESSION_URL, Run, make_run
from tests.test_show_run import apply, finish, fire

pytestmark = pytest.mark.anyio
runner = CliRunner()
PERSON_COMMANDS = (("status",), ("log", "-p", "--all"), ("diff", "HEAD"))


@pytest.fixture
async def run(origin: Path, tmp_path: Path) -> Run:
    return await make_run(origin, tmp_path)


async def keep(run: Run, checkouts: list[workspace.Checkout] | None = None) -> list[kept.Kept]:
    """`kept.keep` as the run calls it, with delivery's finishing sandbox, once what
    the test wrote as root is the sandbox user's, as had the agent written it."""
    await workspace.hand_over(
        [run.run_dir / "workspace", run.run_dir / "home"], bubblewrap.owner(bubblewrap.SANDBOX_UID)
    )

    def sandboxed(cwd: Path) -> list[str]:
        layout = bubblewrap.finishing_layout(
            run_dir=run.run_dir, cwd=cwd, readable=[run.checkout.mirror_objects], masked=[]
        )
        return bubblewrap.bwrap_command(layout, Path("/bin/bash"))

    env = {
        "PATH": bubblewrap.SYSTEM_PATH,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "GIT_AUTHOR_NAME": ROUTINED[0],
        "GIT_AUTHOR_EMAIL": ROUTINED[1],
        "GIT_COMMITTER_NAME": ROUTINED[0],
        "GIT_COMMITTER_EMAIL": ROUTINED[1],
    }
    packing = outbox.Packing(
        sandboxed, env, f"Leftovers\n\nRoutine-Session: {SESSION_URL}\n", SESSION_URL
    )
    return await kept.keep(run.run_dir, [run.checkout] if checkouts is None else checkouts, packing)


# -- the person -----------------------------------------------------------------


def person_env(home: Path) -> dict[str, str]:
    """A person's environment: no configuration of their own (an empty home, no
    system file) but trust in every folder, as a container's git often has. (git
    refuses a repository another user owns, as the agent's files are when routined
    runs as root; that holds only while the person is not the sandbox's user, and
    must not hide what sealing does.)"""
    return {
        "HOME": str(home),
        "PATH": os.environ["PATH"],
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
        "PAGER": "cat",  # where the repository names none: nothing waits for keys
    }


def person_git(folder: Path, home: Path, *args: str) -> None:
    """`git ARGS` as a person types it at a terminal in `folder` (so a pager runs)."""
    primary, secondary = pty.openpty()
    env = person_env(home)
    try:
        process = subprocess.Popen(
            ["git", *args], cwd=folder, env=env, start_new_session=True,
            stdin=secondary, stdout=secondary, stderr=secondary,
        )  # fmt: skip
    finally:
        os.close(secondary)
    deadline = time.monotonic() + 30
    try:
        while True:  # read all it shows, until the terminal closes
            ready, _, _ = select.select([primary], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"git {' '.join(args)} in {folder} did not end in 30 s")
            try:
                if not os.read(primary, 65536):
                    break
            except OSError:  # EIO: every writer has closed the terminal
                break
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(primary)


def folders_under(*roots: Path) -> Iterator[Path]:
    """Every folder under `roots`, links not followed."""
    for root in roots:
        for folder, _, _ in os.walk(root, followlinks=False):
            yield Path(folder)


def person_looks(folders: list[Path], home: Path) -> None:
    for folder in folders:
        for command in PERSON_COMMANDS:
            person_git(folder, home, *command)


# -- the agent ------------------------------------------------------------------


def planted(markers: Path, name: str, folder: Path) -> Path:
    """A program the agent leaves in `folder` that, when anything runs it, leaves
    `markers/name`. It reads nothing: git is content to have a pager or filter that
    stops early, and as a hook it would read the terminal."""
    program = folder / f"run-{name}"
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_text(f'#!/bin/sh\necho "$0 $*" >> {markers / name}\n')
    program.chmod(0o755)
    return program


def hostile_config(markers: Path, name: str, folder: Path, *extra: str) -> str:
    """A git configuration that runs the agent's program from every person's command:
    status (fsmonitor, a clean filter), log (the pager, textconv), diff (diff.external)."""
    program = planted(markers, name, folder)
    return (
        "[core]\n"
        f"\tfsmonitor = {program}\n\tpager = {program}\n\thooksPath = {folder}\n"
        + "".join(f"\t{line}\n" for line in extra)
        + f'[diff]\n\texternal = {program}\n[diff "evil"]\n\ttextconv = {program}\n'
        f'[filter "evil"]\n\tclean = {program}\n\tsmudge = {program}\n'
        f"[pager]\n\tlog = {program}\n\tdiff = {program}\n\tstatus = {program}\n"
    )


def hostile_workspace(run: Run, markers: Path) -> dict[str, str]:
    """Everything finding 4 found, and more, in the run's workspace; returns what the
    agent committed and left, file → content."""
    repo = run.repo
    markers.mkdir()
    # Its work: a commit on a claude/ branch, and changes it did not commit.
    git("switch", "--quiet", "-c", "claude/feature", cwd=repo)
    (repo / "feature.txt").write_text("the feature\n")
    (repo / ".gitattributes").write_text("* diff=evil filter=evil\n")
    git("add", "feature.txt", ".gitattributes", cwd=repo)
    git("commit", "--quiet", "-m", "add the feature", cwd=repo)
    (repo / "NOTES.md").write_text("uncommitted notes\n")
    (repo / "README.md").write_text("# app, edited\n")
    # 1. .git moved aside (.git/config is read-only during the session, .git is not),
    # and a new .git whose commondir points back at it: git reads the config there.
    (repo / ".git").rename(repo / ".moved")
    (repo / ".git").mkdir()
    for name in ("HEAD", "index"):
        (repo / ".git" / name).write_bytes((repo / ".moved" / name).read_bytes())
    (repo / ".git" / "commondir").write_text("../.moved\n")
    (repo / ".moved" / "config").write_text(
        (repo / ".moved" / "config").read_text()
        + hostile_config(markers, "moved-git", repo / ".moved" / "bin")
    )
    # 2. A nested repository with a configuration of its own.
    nested = repo / "vendor" / "lib"
    git("init", "--quiet", str(nested))
    (nested / "lib.txt").write_text("lib\n")
    git("add", "lib.txt", cwd=nested)
    git("commit", "--quiet", "-m", "lib", cwd=nested)
    with (nested / ".git" / "config").open("a") as config:
        config.write(hostile_config(markers, "nested", repo / "vendor" / "bin"))
    (nested / "lib.txt").write_text("lib, changed\n")
    # 3. A .git file in a subfolder naming the moved repository: docs/ is a worktree.
    (repo / "docs").mkdir()
    (repo / "docs" / "guide.md").write_text("guide\n")
    (repo / "docs" / ".git").write_text(f"gitdir: {repo / '.moved'}\n")
    # 4. A bare repository's layout, whose config also claims a work tree.
    bare = repo / "fixtures" / "evil.git"
    git("init", "--quiet", "--bare", str(bare))
    (bare / "config").write_text(
        hostile_config(markers, "bare", repo / "fixtures" / "bin", "bare = false", "worktree = ..")
    )
    # 5. The workspace itself laid out as a bare repository: every folder below it
    # would find it, once the checkout's own .git is gone.
    space = run.run_dir / "workspace"
    for folder in ("objects", "refs"):
        (space / folder).mkdir()
    (space / "HEAD").write_text("ref: refs/heads/main\n")
    (space / "config").write_text(hostile_config(markers, "workspace", space / "bin"))
    # 6. The run's home, which the agent writes too, as a repository, and a link to it.
    home = run.run_dir / "home"
    git("init", "--quiet", str(home))
    with (home / ".git" / "config").open("a") as config:
        config.write(hostile_config(markers, "home", run.run_dir / "tmp" / "bin"))
    (repo / "my-home").symlink_to(os.path.relpath(home, repo))
    # 7. Things that are no files: a fifo, and a set-user-id program.
    os.mkfifo(repo / "pipe")
    (repo / "tool").write_text("#!/bin/sh\n")
    (repo / "tool").chmod(0o4755)
    return {
        "feature.txt": "the feature\n",
        "NOTES.md": "uncommitted notes\n",
        "README.md": "# app, edited\n",
    }


# -- the attacks ----------------------------------------------------------------


async def test_a_hostile_workspace_kept_runs_nothing_when_a_person_uses_git(
    run: Run, tmp_path: Path
) -> None:
    markers, person_home = tmp_path / "markers", tmp_path / "person"
    person_home.mkdir()
    work = hostile_workspace(run, markers)
    # As routined kept it until now, the workspace runs the agent's programs for
    # whoever looks.
    space = run.run_dir / "workspace"
    looked_at = [
        run.repo, run.repo / "docs", run.repo / "vendor" / "lib",
        run.repo / "fixtures" / "evil.git" / "refs", run.repo / "my-home",
    ]  # fmt: skip
    person_looks(looked_at, person_home)
    fired = {marker.name for marker in markers.iterdir()}
    assert {"moved-git", "nested", "bare", "home"} <= fired
    for marker in markers.iterdir():
        marker.unlink()

    item, *beside = await keep(run)

    # Nothing of the agent's runs, wherever a person uses git in what is kept.
    everywhere = [*folders_under(space, run.run_dir / "kept"), run.run_dir]
    assert len(everywhere) > 20
    person_looks(everywhere, person_home)
    assert list(markers.iterdir()) == []
    # Nothing there is a repository to git, nor leads anywhere else.
    for folder in everywhere:
        found = subprocess.run(
            ["git", "rev-parse", "--git-dir"], cwd=folder, capture_output=True, text=True,
            env=person_env(person_home),
        )  # fmt: skip
        assert found.returncode != 0 and "not a git repository" in found.stderr, folder
    for path in [*folders_under(space)]:
        for entry in os.scandir(path):
            assert entry.name.casefold() != ".git"
            assert not entry.is_symlink(), entry.path
            assert entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False)
            assert not entry.stat(follow_symlinks=False).st_mode & 0o6000, entry.path
    # The plain tree has the agent's files; its links are files naming their target.
    tree = space / "app"
    assert item.tree == tree and item.missing == ()
    # What the agent made beside its checkout is kept as files too, and said to be so.
    assert [(other.name, other.tree, other.bundle) for other in beside] == [
        (name, space / name, None) for name in ("bin", "objects", "refs")
    ]
    assert {other.missing for other in beside} == {(kept.NOT_A_CHECKOUT,)}
    for name, content in work.items():
        assert (tree / name).read_text() == content
    assert (tree / "my-home").read_text() == os.path.relpath(run.run_dir / "home", run.repo)
    assert (tree / "fixtures" / "evil.git" / f"HEAD{kept.INERT_SUFFIX}").is_file()
    assert (space / f"HEAD{kept.INERT_SUFFIX}").is_file()
    # The bundle has the agent's commit and its uncommitted work, which a person
    # brings into a clone of their own.
    assert item.bundle == run.run_dir / "kept" / "app.bundle"
    assert set(item.refs) == {"refs/heads/claude/feature", kept.UNCOMMITTED}
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(run.origin), str(clone))
    fetch = item.fetch_command("run_01TESTRUNAB12CD34")
    assert fetch is not None
    subprocess.run(fetch, shell=True, cwd=clone, check=True, capture_output=True)  # noqa: S602
    assert git("show", "run-ab12cd34/claude/feature:feature.txt", cwd=clone) == "the feature"
    uncommitted = "run-ab12cd34-routined/uncommitted"
    for name, content in work.items():
        assert git("show", f"{uncommitted}:{name}", cwd=clone) == content.rstrip("\n")
    assert git("log", "-1", "--format=%(trailers:key=Routine-Session,valueonly)",
               "run-ab12cd34/claude/feature", cwd=clone) == SESSION_URL  # fmt: skip
    assert list(markers.iterdir()) == []


async def test_work_fsck_refuses_is_not_kept_and_the_reason_is_said(
    run: Run, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    (run.repo / ".gitmodules").write_text(
        f'[submodule "lib"]\n\tpath = lib\n\turl = --upload-pack=touch {marker}\n'
    )
    [item] = await keep(run)
    assert item.bundle is None and item.refs == {}
    [why] = item.missing
    assert "gitmodulesUrl: disallowed submodule url" in why
    assert not (run.run_dir / "kept" / "app.bundle").exists()
    assert (item.tree is not None) and (item.tree / ".gitmodules").is_file()
    assert not marker.exists()


def hostile_names(run: Run, marker: Path) -> None:
    """As the attack: a FIFO and a file whose names are not UTF-8 in the checkout, a
    folder so named beside it, and a `.gitmodules` that fsck refuses, committed, so
    that nothing is delivered and the workspace is kept."""
    # Python names the bytes 0xff, 0xfe, 0xfd that are no UTF-8 as these surrogates.
    os.mkfifo(run.repo / os.fsdecode(b"\xff-fifo"))
    (run.repo / os.fsdecode(b"\xfe-notes.txt")).write_bytes(b"notes\n")
    (run.run_dir / "workspace" / os.fsdecode(b"\xfd-scratch")).mkdir()
    (run.repo / ".gitmodules").write_text(
        f'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch {marker}\n'
    )
    git("add", ".gitmodules", cwd=run.repo)
    git("commit", "--quiet", "-m", "sub", cwd=run.repo)


async def test_names_not_in_utf8_never_stop_the_manifest(run: Run, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile_names(run, marker)

    item, scratch = await keep(run)

    manifest = run.run_dir / "kept" / kept.MANIFEST
    record = json.loads(manifest.read_bytes().decode("utf-8"))  # text, strictly UTF-8
    assert record["sealed"]["dropped"] == ["app/\\xff-fifo"]
    assert [entry["name"] for entry in record["repositories"]] == ["app", "\\xfd-scratch"]
    assert "gitmodulesUrl: disallowed submodule url" in " ".join(item.missing)
    assert item.bundle is None and not marker.exists()
    # The tree is sealed, its files kept under their own names, bytes as they were.
    names = {os.fsencode(path.name) for path in run.repo.iterdir()}
    assert b"\xfe-notes.txt" in names and b"\xff-fifo" not in names
    assert not (run.repo / ".git").exists()
    assert scratch.tree == run.run_dir / "workspace" / "\udcfd-scratch"
    assert kept.load(run.run_dir) == [
        item,
        kept.Kept("", "\\xfd-scratch", None, run.run_dir / "workspace" / "\\xfd-scratch", {},
                  (kept.NOT_A_CHECKOUT,)),
    ]  # fmt: skip
    # What the run records of it in its events is text too.
    json.dumps(scratch.as_dict(run.run_dir), ensure_ascii=False).encode("utf-8")


async def test_sealing_removes_every_attribute_the_agent_set(run: Run) -> None:
    # As the attack: `setfattr -n user.token -v "$TOKEN"` on files and folders of the
    # workspace, the workspace itself, and the run's home.
    home = run.run_dir / "home"
    (home / "notes.txt").write_text("notes\n")
    (run.repo / "src").mkdir()
    (run.repo / "src" / "main.py").write_text("print()\n")
    tagged = [
        run.run_dir / "workspace", run.repo, run.repo / "src", run.repo / "src" / "main.py",
        run.repo / "README.md", home, home / "notes.txt",
    ]  # fmt: skip
    for path in tagged:
        os.setxattr(path, "user.token", b"tok-secret-value")
        os.setxattr(path, "user.mime_type", b"text/plain")

    await keep(run)
    sealed = kept.seal(home)

    record = json.loads((run.run_dir / "kept" / kept.MANIFEST).read_text())
    assert record["sealed"]["attributes"] == 2 * 5
    assert sealed.attributes == 2 * 2
    for root in (run.run_dir / "workspace", home):
        for folder in folders_under(root):
            for path in [folder, *folder.iterdir()]:
                assert os.listxattr(path, follow_symlinks=False) == [], path
    assert (run.repo / "src" / "main.py").read_text() == "print()\n"


async def test_what_cannot_be_packed_is_said_and_the_tree_is_still_sealed(
    run: Run, tmp_path: Path
) -> None:
    """The agent broke its repository; another checkout was never made (its clone was
    cancelled)."""
    (run.repo / ".git" / "HEAD").write_text("garbage\n")
    (run.repo / ".git" / "objects").rename(run.repo / ".git" / "objects-gone")
    never = workspace.Checkout(
        url=str(run.origin),
        path=run.run_dir / "workspace" / "other",
        default_branch="main",
        base=(),
        mirror_objects=run.checkout.mirror_objects,
    )
    broken, missing = await keep(run, [run.checkout, never])
    assert broken.bundle is None and broken.tree == run.repo
    assert broken.missing[0].startswith("the work could not be packed: ")
    assert not (run.repo / ".git").exists()
    assert missing.bundle is None and missing.tree is None
    assert missing.missing == (
        "the run ended before this repository was checked out",
        "there is no plain tree: the checkout's folder is not there",
    )


async def test_a_clone_the_run_never_recorded_is_kept_as_files(run: Run) -> None:
    """The run was cancelled while it cloned: no checkout to pack, its files sealed."""
    (run.repo / "NOTES.md").write_text("notes\n")
    [item] = await keep(run, [])
    assert (item.name, item.repository, item.bundle, item.tree) == ("app", "", None, run.repo)
    assert item.missing == (kept.NOT_A_CHECKOUT,)
    assert not (run.repo / ".git").exists() and (run.repo / "NOTES.md").is_file()
    assert kept.load(run.run_dir) == [item]


async def test_nothing_new_keeps_the_plain_tree_only(run: Run) -> None:
    [item] = await keep(run)
    assert item.bundle is None and item.tree == run.repo
    assert item.missing == ("the agent left nothing new: no new commits, nothing uncommitted",)
    assert kept.load(run.run_dir) == [item]


async def test_a_tree_that_cannot_be_sealed_is_removed(run: Run) -> None:
    """A path longer than the system can name: half a seal would be a trap."""
    folder = os.open(run.repo, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(250):  # each made relative to the last: too long a path to name
        os.mkdir("d" * 20, dir_fd=folder)
        below = os.open("d" * 20, os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder)
        os.close(folder)
        folder = below
    os.close(folder)
    (run.repo / "NOTES.md").write_text("notes\n")
    [item] = await keep(run)
    assert item.tree is None
    assert any(why.startswith("the plain tree was removed: ") for why in item.missing)
    assert not (run.run_dir / "workspace").exists()
    assert item.bundle is not None  # packed before: the bundle holds the work


# -- routined inspect -----------------------------------------------------------


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def ok(result: Result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}"
    return result.stdout


# What is kept is read from the run's folder: the store's backend does not matter.
sqlite_only = pytest.mark.parametrize("database", ["sqlite"], indirect=True)


def kept_run(
    database: str, origin: Path, tmp_path: Path, agent: Callable[[Run], None] | None = None
) -> tuple[Run, str]:
    """A run of `nightly` that failed to deliver, whose agent committed on a claude/
    branch and left changes (and then did `agent`): what `keep` kept, in the run's
    folder; it and its id. (The commands run their own event loop: this test runs none.)"""
    run = asyncio.run(make_run(origin, tmp_path))
    apply(tmp_path, run.origin, "nightly")
    run_id = fire("nightly")
    finish(database, run_id, status="failed", error="delivery_failed: the origin went away")
    git("switch", "--quiet", "-c", "claude/feature", cwd=run.repo)
    (run.repo / "feature.txt").write_text("the feature\n")
    git("add", "feature.txt", cwd=run.repo)
    git("commit", "--quiet", "-m", "add the feature", cwd=run.repo)
    (run.repo / "NOTES.md").write_text("uncommitted notes\n")
    if agent is not None:
        agent(run)
    asyncio.run(keep(run))
    run.run_dir.rename(run.run_dir.with_name(run_id))
    return run, run_id


@sqlite_only
def test_inspect_shows_what_is_kept_and_how_to_fetch_it(
    database: str, origin: Path, tmp_path: Path
) -> None:
    run, run_id = kept_run(database, origin, tmp_path)
    folder = tmp_path / "home" / "runs" / run_id
    shown = ok(invoke("inspect", run_id))
    bundle = folder / "kept" / "app.bundle"
    short = run_id[-8:].lower()
    fetch = (
        f"git fetch {bundle} 'refs/heads/*:refs/remotes/run-{short}/*' "
        f"'refs/routined/*:refs/remotes/run-{short}-routined/*'"
    )
    for line in (
        f"Run {run_id} (failed): what it did not deliver is kept in {folder}:",
        f"app  {run.origin}",
        f"  bundle  {bundle}",
        f"  files   {folder / 'workspace' / 'app'}",
        f"  To bring the work into your own clone of {run.origin}:",
        f"    {fetch}",
    ):
        assert line in shown.splitlines(), f"{line!r} not in:\n{shown}"
    # Each ref of the bundle, as a person reads it, with its commit.
    listed = dict(
        line.strip().rsplit(maxsplit=1)
        for line in shown.splitlines()
        if re.fullmatch(r" {10}\S.* [0-9a-f]{12}", line)
    )
    [item] = kept.load(folder) or []
    assert listed == {
        "(uncommitted work)": item.refs[kept.UNCOMMITTED][:12],
        "claude/feature": item.refs["refs/heads/claude/feature"][:12],
    }
    # The command as printed works, in a clone of the person's own.
    clone = tmp_path / "clone"
    git("clone", "--quiet", str(run.origin), str(clone))
    subprocess.run(fetch, shell=True, cwd=clone, check=True, capture_output=True)  # noqa: S602
    assert git("show", f"run-{short}/claude/feature:feature.txt", cwd=clone) == "the feature"
    assert git("show", f"run-{short}-routined/uncommitted:NOTES.md", cwd=clone) == (
        "uncommitted notes"
    )
    # The same by session id, and as JSON.
    session_id = json.loads(ok(invoke("show-run", run_id, "--json")))["session_id"]
    [item] = json.loads(ok(invoke("inspect", session_id, "--json")))["kept"]
    assert item["bundle"] == str(bundle) and item["fetch"] == fetch
    assert set(item["refs"]) == {"refs/heads/claude/feature", kept.UNCOMMITTED}
    assert item["tree"] == str(folder / "workspace" / "app") and item["missing"] == []


@sqlite_only
def test_inspect_reads_what_was_kept_of_names_not_in_utf8(
    database: str, origin: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    _, run_id = kept_run(database, origin, tmp_path, lambda run: hostile_names(run, marker))
    folder = tmp_path / "home" / "runs" / run_id
    shown = ok(invoke("inspect", run_id)).splitlines()
    assert "\\xfd-scratch" in shown
    tree = folder / "workspace" / "\\xfd-scratch"  # as escaped: no such path
    assert f"  files   {tree}" in shown
    assert any("gitmodulesUrl: disallowed submodule url" in line for line in shown)
    app, scratch = json.loads(ok(invoke("inspect", run_id, "--json")))["kept"]
    assert (app["name"], app["bundle"]) == ("app", None)
    assert scratch["name"] == "\\xfd-scratch" and scratch["missing"] == [kept.NOT_A_CHECKOUT]
    assert not marker.exists()


@sqlite_only
def test_inspect_says_plainly_when_nothing_was_kept(
    database: str, origin: Path, tmp_path: Path
) -> None:
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    assert ok(invoke("inspect", run_id)).strip() == (
        f"Nothing is kept for run {run_id} yet: it is queued."
    )
    finish(database, run_id, status="succeeded")
    folder = tmp_path / "home" / "runs" / run_id
    assert ok(invoke("inspect", run_id)).strip() == (
        f"Nothing is kept for run {run_id}: its folder {folder} is gone (run folders are "
        "removed ROUTINED_RUN_FILES_MAX_AGE after the run ended)."
    )
    (folder / "home").mkdir(parents=True)
    shown = ok(invoke("inspect", run_id, "--json"))
    assert json.loads(shown)["kept"] == []
    assert json.loads(shown)["note"].startswith(f"Nothing was kept for run {run_id} (succeeded)")


class _FakeServer(BaseHTTPRequestHandler):
    """A routined server's answer to `GET /api/v1/runs/{run}`, as the API gives it."""

    def do_GET(self) -> None:
        if not self.path.startswith("/api/v1/runs/"):
            self.send_error(404)
            return
        body = json.dumps({"id": "run_01REMOTERUN", "status": "failed"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_inspect_against_a_remote_server_says_the_files_are_there() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = runner.invoke(
            app, ["--server", url, "inspect", "session_01X"], env={"ROUTINED_API_KEY": "rtd_x"}
        )
    finally:
        server.shutdown()
        serving.join()
    assert ok(result).strip() == (
        "run run_01REMOTERUN: its kept files are on the server's machine, in its "
        "ROUTINED_HOME under runs/run_01REMOTERUN/; run `routined inspect run_01REMOTERUN` there"
    )


@sqlite_only
def test_inspect_warns_of_a_workspace_that_is_not_sealed(
    database: str, origin: Path, tmp_path: Path
) -> None:
    """A run kept by an older routined, or one whose keeping was cut short: its
    workspace is as the agent left it."""
    apply(tmp_path, origin, "nightly")
    run_id = fire("nightly")
    finish(database, run_id, status="failed", error="delivery_failed: the origin went away")
    space = tmp_path / "home" / "runs" / run_id / "workspace"
    (space / "app" / ".git").mkdir(parents=True)
    assert ok(invoke("inspect", run_id)).strip() == (
        f"Run {run_id}'s workspace is not sealed: do not run git in {space}, where the "
        "agent's configuration would run its programs. routined seals it as the run ends; a "
        "run that ended before this version of routined kept it as the agent left it."
    )
