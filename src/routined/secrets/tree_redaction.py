"""Redacting the files a run leaves, in place: Claude Code's transcript and saved tool
outputs among them, with their data, their names, their links' targets and their
extended attributes (`redact_tree`). The tree is the agent's: nothing in it is
trusted, no link is followed, and no file is read or written but through its
folder's descriptor.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from routined.errors import OutsideFailure
from routined.secrets.redaction import Redactor

# Files are read in chunks of this many bytes.
_CHUNK = 1 << 20
# The longest name a Linux filesystem takes is 255 bytes; a redacted name keeps room
# for the "-N" that keeps it from taking another entry's name.
_NAME_ROOM = 240
_MARK = re.compile(r"\[redacted:[^\]]*\]")
# The one namespace of extended attributes a process without privilege on the host
# writes: trusted.* needs CAP_SYS_ADMIN on the host, security.* is the kernel's and
# its security modules', system.* holds ACLs (ids and permission bits, no text).
_USER_ATTRIBUTES = "user."


class RedactionError(OutsideFailure, OSError):
    """Files under a tree could not be redacted; `failed` says which and why."""

    def __init__(self, message: str, failed: list[str]) -> None:
        super().__init__(message)
        self.failed = failed


def redact_tree(root: Path, redactor: Redactor) -> int:
    """Redact everything under `root` that holds a secret; how many entries changed.

    What can hold one, and what becomes of it:

    - A regular file's data. The file is written again redacted, beside it, with its
      owner, mode (set-id bits dropped: they never survive outside the sandbox), times
      and the attributes that hold no secret, and the new file takes its name: a crash
      leaves the old file or the new, never half of each, and another name of the same
      file (a hard link) keeps the old. Only its data is read, never its holes: a hole
      reads as zero bytes, which no secret holds (an environment's values cannot), so
      a huge sparse file costs what it holds, and its holes stay holes. A filesystem
      that cannot say where its holes are has the whole file read.
    - An entry's name (a file's, a folder's, a link's, a FIFO's): the entry is renamed
      to its name redacted, never taking another entry's name (a suffix "-2", "-3"…
      keeps it apart); a mark's "/" (none in a variable's name) would become "_".
    - A link's target: the link is made anew, pointing at its target redacted, with the
      link's owner and times. Removing it would lose what it said (where the agent
      pointed), as removing a file would lose its text.
    - A `user.*` extended attribute of a file or folder, root's own among them: one that
      holds a secret in its name or value is removed (its value is the agent's opaque
      bytes, which a mark would not make useful); the others stay, as a file without a
      secret is left as it is.

    The tree is the agent's, so nothing in it is trusted: the walk (`os.fwalk`) never
    goes through a link and stays on root's filesystem; a file is opened relative to
    its folder's descriptor with O_NOFOLLOW and O_NONBLOCK, and only if it is a regular
    file (a FIFO, a socket or a device is left alone, but for its name). A file is read
    in chunks of any size, as text where it is UTF-8 and byte for byte where it is not;
    inside a JSON string a mark keeps the document valid. Whoever wrote the tree has
    stopped by then (the agent's sandbox is gone, or the tree is routined's own copy),
    so a name found free stays free for the rename.

    Raises RedactionError, after redacting all it could, naming what it could not
    read or replace; a caller that must keep no secret removes the tree then.
    """
    if not redactor:
        return 0
    try:
        device = root.stat(follow_symlinks=False).st_dev
    except FileNotFoundError:
        return 0
    changed, failed = 0, []

    def note(error: OSError) -> None:
        failed.append(f"{error.filename}: {error.strerror or error}")

    try:
        for number, (folder, folders, files, descriptor) in enumerate(os.fwalk(root, onerror=note)):
            if number == 0:  # root: its name is routined's, its attributes the agent's
                try:
                    changed += _drop_attributes(descriptor, redactor)
                except OSError as error:
                    failed.append(f"{folder}: {error.strerror or error}")
            # fwalk lists a link to a folder among folders (and opens what it points to
            # before finding it is a link): each entry is taken for what it is itself,
            # and only real folders on root's filesystem are walked, by their new names.
            below = []
            for name in [*folders, *files]:
                entry_changed, walk = _redact_entry(
                    folder, name, descriptor, device, redactor, failed
                )
                changed += entry_changed
                if walk is not None:
                    below.append(walk)
            folders[:] = below
    except RecursionError:  # fwalk recurses: folders nested deeper than Python's stack
        failed.append(f"{root}: folders nested too deep to walk")
    if failed:
        raise RedactionError(
            f"{root}: {len(failed)} could not be redacted and may still hold a secret "
            f"(first: {failed[0]}); remove the folder",
            failed,
        )
    return changed


def _redact_entry(
    path: str, name: str, folder: int, device: int, redactor: Redactor, failed: list[str]
) -> tuple[bool, str | None]:
    """Redact one entry of the folder open as `folder` (named `path`): what it holds,
    then its name. Whether it changed, and its name now if it is a folder to walk;
    what could not be done is added to `failed`."""
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False, None
    except OSError as error:
        failed.append(f"{path}/{name}: {error.strerror or error}")
        return False, None
    changed, here = False, found.st_dev == device
    try:
        if stat.S_ISLNK(found.st_mode):
            changed = _redact_link(name, folder, found, redactor)
        elif here and stat.S_ISREG(found.st_mode):
            changed = _redact_file(name, folder, device, redactor)
        elif here and stat.S_ISDIR(found.st_mode):
            changed = _redact_folder(name, folder, found, redactor)
    except OSError as error:
        failed.append(f"{path}/{name}: {error.strerror or error}")
    try:
        renamed = _redact_name(name, folder, redactor)
    except OSError as error:
        failed.append(f"{path}/{name}: could not be renamed: {error.strerror or error}")
        renamed = None
    walk = (renamed or name) if here and stat.S_ISDIR(found.st_mode) else None
    return changed or renamed is not None, walk


def _redact_file(name: str, folder: int, device: int, redactor: Redactor) -> bool:
    """Redact one regular file named in the folder open as `folder`, its data and its
    attributes; whether it changed."""
    # O_NONBLOCK: a name swapped for a FIFO after it was found a file must not hang.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    source = os.open(name, flags, dir_fd=folder)
    try:
        opened = os.fstat(source)
        if not stat.S_ISREG(opened.st_mode) or opened.st_dev != device:
            return False
        secret, clean = _attributes(source, redactor)
        if any(changed for _, changed in _redacted(source, opened.st_size, redactor)):
            _replace(name, folder, source, opened, redactor, clean)
            return True
        for attribute in secret:
            os.removexattr(source, attribute)
        return bool(secret)
    finally:
        os.close(source)


def _redact_folder(name: str, folder: int, found: os.stat_result, redactor: Redactor) -> bool:
    """Remove the attributes of the folder `name` that hold a secret; whether any did."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    opened = os.open(name, flags, dir_fd=folder)
    try:
        if not os.path.samestat(found, os.fstat(opened)):
            raise OSError(f"{name}: replaced while it was being redacted")
        return _drop_attributes(opened, redactor)
    finally:
        os.close(opened)


def _redact_link(name: str, folder: int, found: os.stat_result, redactor: Redactor) -> bool:
    """Make the link `name` anew, pointing at its target redacted, if its target holds
    a secret; whether it did."""
    target = os.readlink(name, dir_fd=folder)
    redacted = redactor.text(target)
    if redacted == target:
        return False
    draft = _draft_name()
    os.symlink(redacted, draft, dir_fd=folder)
    with _taking_place(draft, name, folder, found):
        made = os.stat(draft, dir_fd=folder, follow_symlinks=False)
        if (made.st_uid, made.st_gid) != (found.st_uid, found.st_gid):
            os.chown(draft, found.st_uid, found.st_gid, dir_fd=folder, follow_symlinks=False)
        ns = (found.st_atime_ns, found.st_mtime_ns)
        os.utime(draft, ns=ns, dir_fd=folder, follow_symlinks=False)
    return True


def _redact_name(name: str, folder: int, redactor: Redactor) -> str | None:
    """Rename the entry `name` of the folder open as `folder` if its name holds a
    secret, to a name no other entry has; its new name, or None."""
    wanted = _redacted_name(name, redactor)
    if wanted is None:
        return None
    renamed, number = wanted, 2
    while _exists(renamed, folder):
        renamed, number = f"{wanted}-{number}", number + 1
    os.rename(name, renamed, src_dir_fd=folder, dst_dir_fd=folder)
    return renamed


def _redacted_name(name: str, redactor: Redactor) -> str | None:
    """`name` redacted, as a file name may be; None if it holds no secret."""
    redacted = redactor.text(name)
    if redacted == name:
        return None
    # A name has no "/": only a mark could bring one, in the secret's name.
    redacted = redacted.replace("/", "_")
    if len(os.fsencode(redacted)) > _NAME_ROOM:
        # Too long once marked (a short value under a long name): the marks alone
        # say what the name held.
        marks = "".join(_MARK.findall(redacted)).replace("/", "_")
        redacted = os.fsdecode(os.fsencode(marks)[:_NAME_ROOM])
    # Cut, the name could end with the start of a value: then it says no more.
    return redacted if redacted and redactor.text(redacted) == redacted else "[redacted]"


def _exists(name: str, folder: int) -> bool:
    try:
        os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _attributes(descriptor: int, redactor: Redactor) -> tuple[list[str], dict[str, bytes]]:
    """The `user.*` extended attributes of the file open as `descriptor`: the names of
    those that hold a secret (in their name or their value), and the others' values."""
    try:
        names = os.listxattr(descriptor)
    except OSError as error:
        if error.errno == errno.EOPNOTSUPP:  # a filesystem without them
            return [], {}
        raise
    secret, clean = [], {}
    for name in names:
        if not name.startswith(_USER_ATTRIBUTES):
            continue
        try:
            value = os.getxattr(descriptor, name)
        except OSError as error:
            if error.errno == errno.ENODATA:  # removed meanwhile
                continue
            raise
        text = value.decode("utf-8", "surrogateescape")
        if redactor.text(name) != name or redactor.text(text) != text:
            secret.append(name)
        else:
            clean[name] = value
    return secret, clean


def _drop_attributes(descriptor: int, redactor: Redactor) -> bool:
    """Remove the attributes that hold a secret of what is open as `descriptor`;
    whether any did."""
    secret, _ = _attributes(descriptor, redactor)
    for name in secret:
        os.removexattr(descriptor, name)
    return bool(secret)


def _replace(
    name: str,
    folder: int,
    source: int,
    opened: os.stat_result,
    redactor: Redactor,
    attributes: Mapping[str, bytes],
) -> None:
    """Write the file open as `source` again redacted, holes as holes, to a new file
    with `attributes` that then takes `name`."""
    draft = _draft_name()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    target = os.open(draft, flags, 0o600, dir_fd=folder)
    try:
        with _taking_place(draft, name, folder, opened):
            with os.fdopen(target, "wb", closefd=False) as sink:
                at = 0  # how far into the source the draft has come
                for start, end in _data_runs(source, opened.st_size):
                    sink.seek(start - at, os.SEEK_CUR)  # past a hole: the draft has one too
                    for piece, _ in _redacted_run(source, start, end, opened.st_size, redactor):
                        sink.write(piece.encode("utf-8", "surrogateescape"))
                    at = end
                sink.seek(opened.st_size - at, os.SEEK_CUR)
                sink.truncate()  # a hole at the end is the file's size alone
            for attribute, value in attributes.items():
                os.setxattr(target, attribute, value)
            made = os.fstat(target)
            if (made.st_uid, made.st_gid) != (opened.st_uid, opened.st_gid):
                os.fchown(target, opened.st_uid, opened.st_gid)
            os.fchmod(target, stat.S_IMODE(opened.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            os.utime(target, ns=(opened.st_atime_ns, opened.st_mtime_ns))
            os.fsync(target)
    finally:
        os.close(target)


def _draft_name() -> str:
    """A name for a redacted copy, beside what it is to replace: no other entry has it."""
    return f".routined-redacted-{secrets.token_hex(8)}"


@contextlib.contextmanager
def _taking_place(draft: str, name: str, folder: int, found: os.stat_result) -> Iterator[None]:
    """Around finishing `draft`, made already in the folder open as `folder`: then it
    takes `name`; if anything fails, it is removed and `name` left as it is."""
    try:
        yield
        # The name must still be what was read, not an entry put there meanwhile.
        if not os.path.samestat(found, os.stat(name, dir_fd=folder, follow_symlinks=False)):
            raise OSError(f"{name}: replaced while it was being redacted")
        os.replace(draft, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(draft, dir_fd=folder)
        raise


def _redacted(source: int, size: int, redactor: Redactor) -> Iterator[tuple[str, bool]]:
    """The redacted text of the file open as `source`, run of data after run of data."""
    for start, end in _data_runs(source, size):
        yield from _redacted_run(source, start, end, size, redactor)


def _redacted_run(
    source: int, start: int, end: int, size: int, redactor: Redactor
) -> Iterator[tuple[str, bool]]:
    """The redacted text of the file's bytes from `start` to `end`: a run of data, which
    starts or ends the text only where it starts or ends the file (a hole beside it
    reads as zero bytes, which are no cut mark)."""
    return redactor.stream(_decoded(source, start, end), starts=start == 0, ends=end >= size)


def _data_runs(descriptor: int, size: int) -> Iterator[tuple[int, int]]:
    """Where the file open as `descriptor` holds data, as (start, end) of each run of
    it, in order, up to `size`. SEEK_DATA finds where data starts and SEEK_HOLE where
    the next hole does, so data that touches other data is one run; a filesystem that
    cannot tell gives the rest of the file as one run."""
    at = 0
    while at < size:
        try:
            start = os.lseek(descriptor, at, os.SEEK_DATA)
            end = min(os.lseek(descriptor, start, os.SEEK_HOLE), size)
        except OSError as error:
            if error.errno == errno.ENXIO:  # a hole to the end
                return
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start, end = at, size
        if not at <= start < end:  # the file changed meanwhile: read all that is left
            start, end = at, size
        yield start, end
        at = end


def _decoded(descriptor: int, start: int, end: int) -> Iterator[str]:
    """A file's text from `start` to `end` in chunks; bytes that are not UTF-8 come
    through as surrogates (`surrogateescape`), so that writing the text back gives
    them back unchanged."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    at = start
    while at < end and (chunk := os.pread(descriptor, min(_CHUNK, end - at), at)):
        at += len(chunk)
        yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)
