"""No secret in what a run leaves: pieces cut by previews, files under a run's home.

Written as the attacks: an agent prints a secret where Claude Code or routined cuts
its output at any character, and leaves it in Claude Code's own transcript, in a
saved tool output, in a large file, beside links into the host and a FIFO. `leaks`
is the reference the tests check against: by brute force, every piece of every
spelling of a value that a cut could have left, looked for at every cut mark.

The cuts are Claude Code 2.1.x's, as its bundled JavaScript makes them (`h$e`, `ue`:
the first 2,000 characters of a tool output too large to keep, cut at the last line
break if that is past half of them, else at 2,000, then "\\n...\\n"; `cp`/`MH`: a long
output's first and last parts around "\\n\\n... [N characters truncated] ...\\n\\n"),
and routined's own (an event's 16 KiB preview, a summary's last 4,000 characters, a
line cut at 64 KiB bytes).
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from routined.agents.claude import describe
from routined.sandbox import bubblewrap
from routined.secrets import redaction, tree_redaction
from routined.secrets.redaction import Redactor
from routined.testing.fake_anthropic import FakeAnthropic, bash, text

TOKEN = "ghp_Q7rT2xLm9VbN4cYw8ZkP3dFs6HjA1uGe5Rt0"
KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBq7Ybn0Rzd9PwvGk2M1cXhHtLJ8uAaVe3sFoqN5yKiTwAAAJhR2x8kUdsf\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
PASSWORD = 'pä"ss\\wörd-Ünï9x'  # a quote, a backslash, characters beyond ASCII
SECRETS = {"GITHUB_TOKEN": TOKEN, "DEPLOY_KEY": KEY, "DB_PASSWORD": PASSWORD}
MARKS = ("\n", "\r", "\\n", "\\r", '"', "…", "...", "\ufffd", "\\u2026", "\\ufffd")
# The rule `redaction.MIN_PIECE` sets: a piece counts from four letters and digits.
PIECE = 4


def spellings(value: str) -> set[str]:
    """The value, each of its lines, stripped or not, JSON-escaped once or twice, as
    Python (ASCII only) and JavaScript write it."""
    parts = {value, *value.splitlines(), *(line.strip() for line in value.splitlines())}
    once = {
        form
        for part in parts
        for form in (part, json.dumps(part)[1:-1], json.dumps(part, ensure_ascii=False)[1:-1])
    }
    twice = {json.dumps(form, ensure_ascii=flag)[1:-1] for form in once for flag in (True, False)}
    return {form for form in once | twice if len(form.strip()) >= redaction.MIN_REDACTED}


def counts(piece: str) -> bool:
    return sum(char.isalnum() for char in piece) >= PIECE


@functools.cache
def pieces(value: str) -> tuple[set[str], set[str], set[str]]:
    """The spellings of `value`, and the starts and ends of them that count."""
    forms = spellings(value)
    heads = {form[:size] for form in forms for size in range(1, len(form))}
    tails = {form[size:] for form in forms for size in range(1, len(form))}
    return forms, {head for head in heads if counts(head)}, {tail for tail in tails if counts(tail)}


def leaks(text: str, values: Iterable[str] = SECRETS.values()) -> list[str]:
    """What `text` still holds of the values: a spelling whole, a start of one that
    counts just before the end or a cut mark, an end of one just after the start or a
    cut mark; tried at every cut in `text`, every spelling, every length."""
    before_cut, after_cut = {len(text)}, {0}
    for mark in MARKS:
        at = text.find(mark)
        while at >= 0:
            before_cut.add(at)
            after_cut.add(at + len(mark))
            at = text.find(mark, at + 1)
    found = []
    for value in values:
        forms, heads, tails = pieces(value)
        found += [form for form in forms if form in text]
        found += [head for head in heads if any(text.endswith(head, 0, c) for c in before_cut)]
        found += [tail for tail in tails if any(text.startswith(tail, c) for c in after_cut)]
    return found


def claude_code_preview(output: str, limit: int = 2000) -> str:
    """The tool result Claude Code gives the model for an output too large to keep."""
    line_end = output[:limit].rfind("\n")
    preview = output[: line_end if line_end > limit * 0.5 else limit]
    return (
        "<persisted-output>\nOutput too large (41KB). Full output saved to: "
        "/root/.claude/projects/-w-app/0b1c/tool-results/b1a2c3.txt\n\n"
        f"Preview (first 2KB):\n{preview}\n...\n</persisted-output>"
    )


def claude_code_middle_cut(output: str, head: int = 500, tail: int = 300) -> str:
    """Claude Code's cut of a long command output: its start and end around a marker."""
    cut = len(output) - head - tail
    return f"{output[:head]}\n\n... [{cut} characters truncated] ...\n\n{output[-tail:]}"


def as_json(message: str) -> list[str]:
    """`message` and the JSON strings that carry it: Python's and Claude Code's."""
    return [message, json.dumps(message), json.dumps(message, ensure_ascii=False)]


# Pieces cut by previews


@pytest.mark.parametrize("name", SECRETS)
def test_claude_codes_2kb_preview_cut_anywhere_in_a_value_keeps_no_piece(name: str) -> None:
    redactor, value = Redactor(SECRETS), SECRETS[name]
    for offset in range(len(value) + 1):
        output = "x" * (2000 - offset) + value + "\n" + "y" * 40_000
        for said in as_json(claude_code_preview(output)):
            redacted = redactor.text(said)
            assert leaks(redacted) == [], (offset, redacted[-120:])
            assert "x" * (1000 - offset) in redacted
            assert redacted.endswith(said[-20:])  # "</persisted-output>"


@pytest.mark.parametrize("name", SECRETS)
def test_a_long_outputs_cut_middle_keeps_no_piece_of_either_end(name: str) -> None:
    redactor, value = Redactor(SECRETS), SECRETS[name]
    for offset in range(len(value) + 1):
        cut_after_head = "a" * (500 - offset) + value + "z" * 5000
        cut_before_tail = "z" * 5000 + value + "a" * (300 - len(value) + offset)
        for output in (cut_after_head, cut_before_tail):
            for said in as_json(claude_code_middle_cut(output)):
                redacted = redactor.text(said)
                assert leaks(redacted) == [], (offset, redacted)
                assert "characters truncated] ..." in redacted


@pytest.mark.parametrize("name", SECRETS)
def test_a_summary_of_the_last_4000_characters_keeps_no_piece(name: str) -> None:
    # routined keeps the last 4,000 characters of what the agent said.
    redactor, value = Redactor(SECRETS), SECRETS[name]
    for offset in range(len(value) + 1):
        rest = " and then" + "w" * (4000 - len(value) + offset - 9)
        said = ("earlier " * 600 + value + rest)[-4000:]
        assert said.startswith(value[offset:])
        redacted = redactor.text(said)
        assert leaks(redacted) == [] and redacted.endswith(rest), offset


def test_a_line_cut_at_a_byte_inside_a_character_keeps_no_piece() -> None:
    # An output line is cut at 64 KiB bytes and decoded with U+FFFD for a broken character.
    redactor, encoded = Redactor(SECRETS), PASSWORD.encode()
    for offset in range(len(encoded) + 1):
        line = (b"o" * (65536 - offset) + encoded + b"!")[:65536]
        redacted = redactor.text(line.decode(errors="replace"))
        assert leaks(redacted) == [], (offset, redacted[-40:])


@dataclass
class Huge:
    """An SDK-like message too large for one event: its content is kept as a preview."""

    content: str


@pytest.mark.parametrize("name", SECRETS)
def test_an_events_16kb_preview_cut_inside_a_value_keeps_no_piece(name: str) -> None:
    redactor, value = Redactor(SECRETS), SECRETS[name]
    escaped = json.dumps(value)[1:-1]
    before = json.dumps({"content": "x"}).index("x")  # where the content starts
    for offset in range(len(escaped) + 1):
        message = Huge("x" * (16384 - before - offset) + value + "y" * 300_000)
        _, data = describe(message)
        assert data["truncated"] and data["preview"].endswith(escaped[:offset])
        recorded = redactor.data(data)
        assert leaks(recorded["preview"]) == [], (offset, recorded["preview"][-60:])


# Files under a run's home


def shape(value: Any) -> Any:
    """The keys of a JSON document, all the way down; strings and numbers by type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        yield from value.keys()
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def javascript_json(entry: Any) -> str:
    """JSON as Claude Code (JSON.stringify) writes it: compact, characters as they are."""
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def transcript_lines() -> list[str]:
    """A Claude Code transcript holding the values every way a session writes them."""
    entries: list[Any] = []
    for name, value in SECRETS.items():
        for offset in range(len(value) + 1):
            output = "x" * (2000 - offset) + value + "\n" + "y" * 3000
            entries.append(
                {
                    "type": "user",
                    "uuid": f"{name}-{offset}",
                    "message": {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": f"toolu_{offset}",
                                "content": claude_code_preview(output),
                            }
                        ],
                    },
                    # A cut text at the end of a JSON string.
                    "toolUseResult": {"stdout": output[:2000], "stderr": "", "isImage": False},
                }
            )
        entries.append(
            {
                "type": "assistant",
                "message": {"content": [{"type": "text", "text": f"It was {value}, see?"}]},
                # A tool's JSON output, quoted in the transcript's JSON.
                "toolUseResult": {"stdout": json.dumps({name: value}, ensure_ascii=False)},
            }
        )
    return [javascript_json(entry) + "\n" for entry in entries]


def test_a_transcript_holding_values_every_way_stays_valid_json_with_the_same_keys(
    tmp_path: Path,
) -> None:
    session = tmp_path / "home" / ".claude" / "projects" / "-w-app" / "0b1c2d3e.jsonl"
    session.parent.mkdir(parents=True)
    written = transcript_lines()
    session.write_text("".join(written))
    assert tree_redaction.redact_tree(tmp_path / "home", Redactor(SECRETS)) == 1
    redacted = session.read_text().splitlines(keepends=True)
    assert len(redacted) == len(written)
    for before, after in zip(written, redacted, strict=True):
        loaded = json.loads(after)
        assert shape(loaded) == shape(json.loads(before))
        assert leaks(after) == [], after[-200:]
        for said in strings(loaded):
            assert leaks(said) == [], said[-200:]
        assert loaded.get("uuid") == json.loads(before).get("uuid")


def test_a_saved_tool_output_is_rewritten_keeping_owner_mode_and_times(tmp_path: Path) -> None:
    results = tmp_path / "home" / ".claude" / "projects" / "-w-app" / "0b1c" / "tool-results"
    results.mkdir(parents=True)
    saved, clean = results / "b1a2c3.txt", results / "d4e5f6.txt"
    saved.write_text(f"x{TOKEN}\n{KEY}\nDB: {PASSWORD}\ndone\n")
    clean.write_text("nothing secret here\n")
    if os.geteuid() == 0:  # root redacts files the sandbox's own user owns
        os.chown(saved, 4242, 4343)
    saved.chmod(0o6750)
    os.utime(saved, ns=(1_700_000_000_000_000_000, 1_700_000_123_000_000_000))
    was, clean_was = saved.stat(), clean.stat()

    assert tree_redaction.redact_tree(tmp_path / "home", Redactor(SECRETS)) == 1

    now = saved.stat()
    assert saved.read_text() == (
        "x[redacted:GITHUB_TOKEN]\n[redacted:DEPLOY_KEY]\nDB: [redacted:DB_PASSWORD]\ndone\n"
    )
    assert (now.st_uid, now.st_gid) == (was.st_uid, was.st_gid)
    assert stat.S_IMODE(now.st_mode) == 0o750  # set-id bits never survive outside
    assert (now.st_atime_ns, now.st_mtime_ns) == (was.st_atime_ns, was.st_mtime_ns)
    assert clean.stat() == clean_was  # no secret: not rewritten at all
    assert sorted(p.name for p in results.iterdir()) == ["b1a2c3.txt", "d4e5f6.txt"]


def unchanged(path: Path) -> tuple[int, int, int, int]:
    """What shows a file was not written again (its count of names may change)."""
    status = path.stat()
    return status.st_ino, status.st_mode, status.st_size, status.st_mtime_ns


def test_links_planted_in_the_tree_never_reach_a_host_file(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    credentials, notes = host / "credentials", host / "notes"
    credentials.write_text(f"token={TOKEN}\n")
    notes.write_text(f"token={TOKEN}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "creds").symlink_to(credentials)
    (home / "hostdir").symlink_to(host, target_is_directory=True)
    (home / "notes").hardlink_to(notes)  # one file, two names: the host's and the tree's
    (tmp_path / "home-link").symlink_to(host, target_is_directory=True)
    host_before = {path: (path.read_bytes(), unchanged(path)) for path in (credentials, notes)}

    assert tree_redaction.redact_tree(tmp_path / "home-link", Redactor(SECRETS)) == 0
    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 1

    for path, (content, status) in host_before.items():
        assert (path.read_bytes(), unchanged(path)) == (content, status)
    assert (home / "creds").readlink() == credentials
    assert (home / "hostdir").readlink() == host
    assert (home / "notes").read_text() == "token=[redacted:GITHUB_TOKEN]\n"


def test_a_fifo_or_socket_in_the_tree_neither_blocks_nor_is_opened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    fifo = home / "pipe"
    os.mkfifo(fifo)
    (home / "pipe-link").symlink_to(fifo)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home / "socket"))
    (home / "after.txt").write_text(f"{TOKEN}\n")
    done: dict[str, int] = {}
    walk = threading.Thread(
        target=lambda: done.update(changed=tree_redaction.redact_tree(home, Redactor(SECRETS))),
        daemon=True,
    )
    walk.start()
    walk.join(timeout=60)
    try:
        assert not walk.is_alive(), "redact_tree is blocked opening the FIFO"
    finally:
        if walk.is_alive():  # let it go: a writer at the other end ends the open
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        listener.close()
    assert done == {"changed": 1}
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISSOCK((home / "socket").lstat().st_mode)
    assert (home / "after.txt").read_text() == "[redacted:GITHUB_TOKEN]\n"


def test_a_large_file_is_streamed_and_values_across_chunk_edges_are_caught(
    tmp_path: Path,
) -> None:
    # 48 MiB: the token across every 1 MiB edge, at a different offset each time;
    # its end at the very start of the file and its start at the very end (both cut);
    # bytes that are not UTF-8 between them, to come back as they were.
    mark = b"[redacted:GITHUB_TOKEN]"
    filler = "lörem ïpsum, \xff\xfe not text \x00;\n".encode("utf-8", "surrogateescape")
    token = TOKEN.encode()
    original, expected = bytearray(token[-9:] + b"\n"), bytearray(mark + b"\n")
    for edge in range(1 << 20, 48 << 20, 1 << 20):
        gap = edge - len(original) - (edge >> 20) % len(token)
        padding = (filler * (gap // len(filler) + 1))[:gap]
        original += padding + token
        expected += padding + mark
    original += b"\n" + token[:11]
    expected += b"\n" + mark
    big = tmp_path / "home" / "big.log"
    big.parent.mkdir()
    big.write_bytes(original)

    tracemalloc.start()
    try:
        assert tree_redaction.redact_tree(big.parent, Redactor(SECRETS)) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert big.read_bytes() == expected
    assert peak < 16 << 20, f"{peak} bytes at once for a file of {len(original)}"


def test_a_file_not_in_utf8_keeps_every_other_byte(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    blob = home / "core.dump"
    around = bytes(range(256))
    blob.write_bytes(around + TOKEN.encode() + around + PASSWORD.encode("utf-8") + around)
    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 1
    assert blob.read_bytes() == (
        around + b"[redacted:GITHUB_TOKEN]" + around + b"[redacted:DB_PASSWORD]" + around
    )


def test_folders_nested_deeper_than_the_walk_can_go_fail_it_loudly(tmp_path: Path) -> None:
    # The agent nests folders deeper than os.fwalk (recursive) can go, with a secret at
    # the bottom: the walk must say so, for the caller to remove the tree.
    home = tmp_path / "home"
    home.mkdir()
    (home / "top.txt").write_text(TOKEN)
    folder = os.open(home, os.O_RDONLY)
    for _ in range(300):
        os.mkdir("d", dir_fd=folder)
        inner = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    bottom = os.open("token.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=folder)
    os.write(bottom, TOKEN.encode())
    os.close(bottom)
    os.close(folder)
    limit = sys.getrecursionlimit()
    # 300 levels past a limit set just above this test's own depth stand for a tree
    # deeper than the default limit of 1,000 (which the tree's clean-up could not undo).
    sys.setrecursionlimit(len(inspect.stack(0)) + 100)
    try:
        with pytest.raises(tree_redaction.RedactionError, match="nested too deep") as raised:
            tree_redaction.redact_tree(home, Redactor(SECRETS))
    finally:
        sys.setrecursionlimit(limit)
    assert raised.value.failed == [f"{home}: folders nested too deep to walk"]
    assert (home / "top.txt").read_text() == "[redacted:GITHUB_TOKEN]"


def test_a_missing_tree_or_one_without_secrets_is_left_alone(tmp_path: Path) -> None:
    assert tree_redaction.redact_tree(tmp_path / "gone", Redactor(SECRETS)) == 0
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    (home / "sub" / "f.txt").write_text(TOKEN)
    assert tree_redaction.redact_tree(home, Redactor({})) == 0
    assert (home / "sub" / "f.txt").read_text() == TOKEN


# What an agent hides beside its files' text: holes, names, link targets, attributes

GIB = 1 << 30
MARK = "[redacted:GITHUB_TOKEN]"


class Reads:
    """The bytes read from files through `os.read` and `os.pread` (what redaction
    reads with), failing once past `budget`: a test that less is read must not read
    100 GiB of holes to fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
        self.count, self.budget = 0, budget
        for name in ("read", "pread"):
            monkeypatch.setattr(os, name, self._counting(getattr(os, name)))

    def _counting(self, read: Any) -> Any:
        def counted(*args: Any) -> bytes:
            data: bytes = read(*args)
            self.count += len(data)
            if self.count > self.budget:
                raise AssertionError(f"read {self.count} bytes, more than {self.budget}")
            return data

        return counted


def write_at(path: Path, offset: int, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(descriptor, data, offset)
    finally:
        os.close(descriptor)


def read_at(path: Path, offset: int, size: int) -> bytes:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return os.pread(descriptor, size, offset)
    finally:
        os.close(descriptor)


def test_huge_sparse_files_cost_what_they_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack: files of holes cost no disk (the disk cap counts blocks), but read
    # whole they cost a core ~6 s a GiB, while the run holds its worker. Here 100 GiB
    # of holes with a secret in a small run of data halfway, and 3 x 100 GiB of holes
    # alone, as `truncate -s` makes them.
    home = tmp_path / "home"
    home.mkdir()
    line = f"export GITHUB_TOKEN={TOKEN}\n".encode()
    sparse = home / "sparse-secret"
    write_at(sparse, 50 * GIB + 100, line)
    os.truncate(sparse, 100 * GIB)
    holes = [home / f"sparse{number}" for number in range(3)]
    for path in holes:
        path.touch()
        os.truncate(path, 100 * GIB)
    holes_before = [unchanged(path) for path in holes]
    reads = Reads(monkeypatch, budget=64 << 20)

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 1

    assert reads.count <= 64 << 10, f"{reads.count} bytes read for {len(line)} of data"
    shrunk = len(TOKEN) - len(MARK)
    assert sparse.stat().st_size == 100 * GIB - shrunk
    redacted = line.replace(TOKEN.encode(), MARK.encode())
    assert read_at(sparse, 50 * GIB - 4096, 3 * 4096) == (
        bytes(4096 + 100) + redacted + bytes(3 * 4096 - 100 - len(redacted) - 4096)
    )
    # Written again, its holes stayed holes: the file still holds a block or so.
    assert sparse.stat().st_blocks * 512 <= 64 << 10
    assert [unchanged(path) for path in holes] == holes_before


def test_a_value_across_data_written_apart_is_caught_and_holes_stay_holes(
    tmp_path: Path,
) -> None:
    # Data runs that touch are one run: a value written in two pieces, the second at
    # the first's end (a block's edge, a chunk's edge), is still one value. Holes
    # around and between runs read as the zero bytes they are.
    home = tmp_path / "home"
    home.mkdir()
    path = home / "pieces.bin"
    token = TOKEN.encode()
    for edge in (4 << 20, 9 << 20):  # two runs of data, a value written across each
        write_at(path, edge - 17, b"token: " + token[:10])
        write_at(path, edge, token[10:] + b"\n")
    write_at(path, 12 << 20, b"after a hole: " + PASSWORD.encode() + b"\n")
    os.truncate(path, 16 << 20)
    dense = read_at(path, 0, 16 << 20)
    assert dense.count(token) == 2

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 1

    expected = dense.replace(token, MARK.encode()).replace(
        PASSWORD.encode(), b"[redacted:DB_PASSWORD]"
    )
    assert read_at(path, 0, 32 << 20) == expected
    assert path.stat().st_blocks * 512 <= 1 << 20
    descriptor = os.open(path, os.O_RDONLY)
    try:
        assert os.lseek(descriptor, 0, os.SEEK_DATA) >= (4 << 20) - 4096  # still a hole
    finally:
        os.close(descriptor)


def test_where_holes_cannot_be_found_the_whole_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem without SEEK_DATA answers EINVAL: nothing is taken for a hole.
    home = tmp_path / "home"
    home.mkdir()
    path = home / "plain.bin"
    write_at(path, 6 << 20, f"token={TOKEN}\n".encode())
    size = path.stat().st_size
    seek = os.lseek

    def no_holes(descriptor: int, position: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return seek(descriptor, position, how)

    monkeypatch.setattr(os, "lseek", no_holes)
    reads = Reads(monkeypatch, budget=64 << 20)
    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 1
    assert reads.count >= 2 * size  # read to find the value, then to write it again
    assert path.read_bytes() == bytes(6 << 20) + f"token={MARK}\n".encode()


def names_under(root: Path) -> list[str]:
    return [name for _, folders, files in os.walk(root) for name in [*folders, *files]]


def test_a_secret_in_a_name_is_renamed_and_takes_no_other_entrys_name(tmp_path: Path) -> None:
    # The agent names entries after its secrets: whole, a line of a key, a piece at a
    # name's end; a file, a folder (with a secret inside), a link, a FIFO, and the name
    # redaction would choose already taken.
    home = tmp_path / "home"
    home.mkdir()
    (home / f"cache-{TOKEN}").write_text("cached\n")
    (home / f"cache-{MARK}").write_text("the agent's own\n")
    folder = home / f"dir-{PASSWORD}"
    folder.mkdir()
    (folder / "inside.txt").write_text(f"{TOKEN}\n")
    (home / KEY.splitlines()[1]).write_text("a line of the key\n")
    (home / f"log-{TOKEN[:12]}").write_text("a piece at the end\n")
    (home / f"link-{TOKEN}").symlink_to("/etc/hostname")
    os.mkfifo(home / f"fifo-{TOKEN}")
    (home / "plain.txt").write_text("nothing secret\n")

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 7

    names = names_under(home)
    assert [name for name in names if leaks(name)] == []
    assert sorted(path.name for path in home.iterdir()) == sorted(
        [
            f"cache-{MARK}",
            f"cache-{MARK}-2",
            "dir-[redacted:DB_PASSWORD]",
            "[redacted:DEPLOY_KEY]",
            "log-[redacted:GITHUB_TOKEN]",
            f"link-{MARK}",
            f"fifo-{MARK}",
            "plain.txt",
        ]
    )
    assert (home / f"cache-{MARK}").read_text() == "the agent's own\n"
    assert (home / f"cache-{MARK}-2").read_text() == "cached\n"
    renamed = home / "dir-[redacted:DB_PASSWORD]"
    assert (renamed / "inside.txt").read_text() == f"{MARK}\n"  # walked under its new name
    assert (home / f"link-{MARK}").readlink() == Path("/etc/hostname")
    assert stat.S_ISFIFO((home / f"fifo-{MARK}").lstat().st_mode)


def test_a_name_too_long_once_marked_keeps_the_marks_alone(tmp_path: Path) -> None:
    # A short value under a long variable's name: its mark is longer than the value.
    name = "A_SERVICE_ACCOUNT_TOKEN_FOR_THE_NIGHTLY_DEPLOYMENT_OF_THE_APP"
    redactor = Redactor({name: "k3y9"})
    home = tmp_path / "home"
    home.mkdir()
    (home / ("x" * 200 + "k3y9" + "y" * 40)).write_text("long\n")
    assert tree_redaction.redact_tree(home, redactor) == 1
    assert [path.name for path in home.iterdir()] == [f"[redacted:{name}]"]


def test_a_link_whose_target_holds_a_secret_points_at_the_target_redacted(
    tmp_path: Path,
) -> None:
    # As the attack: `ln -s "https://user:$TOKEN@example.com/" ~/.remote-link`, and
    # links to a folder and to nowhere with a secret in their target.
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    remote = home / ".remote-link"
    remote.symlink_to(f"https://user:{TOKEN}@example.com/")
    (home / f"folder-{PASSWORD}").mkdir()
    (home / "to-folder").symlink_to(f"folder-{PASSWORD}", target_is_directory=True)
    (home / "sub" / "dangling").symlink_to(f"../gone/{TOKEN[:20]}")
    (home / "plain-link").symlink_to("sub")
    if os.geteuid() == 0:  # root redacts links the sandbox's own user made
        os.chown(remote, 4242, 4343, follow_symlinks=False)
    os.utime(
        remote, ns=(1_700_000_000_000_000_000, 1_700_000_123_000_000_000), follow_symlinks=False
    )
    was = remote.lstat()

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 4  # the folder is renamed too

    assert remote.readlink() == Path(f"https://user:{MARK}@example.com/")
    now = remote.lstat()
    assert (now.st_uid, now.st_gid, now.st_mtime_ns) == (was.st_uid, was.st_gid, was.st_mtime_ns)
    assert (home / "to-folder").readlink() == Path("folder-[redacted:DB_PASSWORD]")
    assert (home / "to-folder").is_dir()  # it still leads where it did
    assert (home / "sub" / "dangling").readlink() == Path(f"../gone/{MARK}")
    assert (home / "plain-link").readlink() == Path("sub")
    for folder, folders, files in os.walk(home):
        for name in [*folders, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                assert leaks(str(path.readlink())) == [], path


def test_an_attribute_holding_a_secret_is_removed_and_the_others_stay(tmp_path: Path) -> None:
    # As the attack: `setfattr -n user.token -v "$TOKEN" ~/xattr.txt`, on a file whose
    # text is harmless, on one whose text is not (written again), on a folder, on the
    # tree's own folder, and a secret in an attribute's name.
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    harmless, secret_too = home / "xattr.txt", home / "notes.txt"
    harmless.write_text("harmless\n")
    secret_too.write_text(f"{TOKEN}\n")
    for path in (harmless, secret_too, home / "sub", home):
        os.setxattr(path, "user.token", TOKEN.encode())
        os.setxattr(path, "user.mime_type", b"text/plain")
    os.setxattr(harmless, f"user.{TOKEN}", b"1")
    os.setxattr(home / "sub", "user.escaped", json.dumps({"p": PASSWORD}).encode())

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) == 4

    for path in (harmless, secret_too, home / "sub", home):
        assert os.listxattr(path) == ["user.mime_type"], path
        assert os.getxattr(path, "user.mime_type") == b"text/plain"
    assert harmless.read_text() == "harmless\n"
    assert secret_too.read_text() == f"{MARK}\n"


# Claude Code's own files, from the real binary


def claude(
    home: Path, work: Path, fake_api: FakeAnthropic, *arguments: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": fake_api.base_url,
        "ANTHROPIC_API_KEY": fake_api.api_key or "sk-ant-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **SECRETS,
    }
    command = [str(bubblewrap.claude_binary(None)), "--output-format", "stream-json", "--verbose"]
    return subprocess.run(
        [*command, "--dangerously-skip-permissions", *arguments],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,  # Claude Code would wait for piped input
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_claude_codes_transcript_is_redacted_and_a_follow_up_resumes_it(
    tmp_path: Path, fake_api: FakeAnthropic
) -> None:
    marker = f"redaction-{secrets.token_hex(4)}"
    # Each command's first 2 KB end inside a value, so the preview keeps a piece.
    printing = [
        "python3 -c \"import os, sys; sys.stdout.write('x' * "
        f"{2000 - offset} + os.environ['{name}'] + '\\n' + 'y' * 40000)\""
        for name, offset in [("GITHUB_TOKEN", 5), ("GITHUB_TOKEN", 23), ("DB_PASSWORD", 7)]
    ]
    fake_api.script(
        marker,
        [
            *[[bash(command)] for command in printing],
            [bash('printenv DEPLOY_KEY; echo "$DB_PASSWORD"')],
            [text(f"Done: the token is {TOKEN}")],
        ],
    )
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    said = claude(home, work, fake_api, "-p", f"{marker}: print the secrets")
    session_id = json.loads(said.stdout.splitlines()[-1])["session_id"]
    [transcript] = (home / ".claude" / "projects").glob(f"*/{session_id}.jsonl")
    before = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert any(
        "<persisted-output>" in line and TOKEN[:10] in line
        for line in transcript.read_text().splitlines()
    ), "Claude Code no longer keeps a preview this test can cut inside a value"

    assert tree_redaction.redact_tree(home, Redactor(SECRETS)) >= 2  # the transcript, saved outputs

    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert leaks(path.read_bytes().decode("utf-8", "surrogateescape")) == [], path
    after = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [shape(entry) for entry in after] == [shape(entry) for entry in before]
    for entry in after:
        for value in strings(entry):
            assert leaks(value) == [], value[-200:]

    follow_up = f"{marker}-follow-up"
    claude(home, work, fake_api, "-p", f"{follow_up}: go on", "--resume", session_id)
    [request, *_] = [r for r in fake_api.conversations(follow_up) if r.body.get("tools")]
    sent = json.dumps(request.body, ensure_ascii=False)
    assert f"{marker}: print the secrets" in sent  # the earlier conversation came back
    assert "[redacted:GITHUB_TOKEN]" in sent and leaks(sent) == []
