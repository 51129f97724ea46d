"""Redaction: secret values kept out of everything a run records and leaves behind.

A `Redactor` replaces the values of a run's secrets with `[redacted:NAME]` in text
and JSON-like data (every event, reason, error and summary a run stores), in every
spelling a value takes there (each line of it, JSON-escaped as Python and as
JavaScript write it, twice escaped), and catches the piece of a value a cut leaves
(a preview's end, a kept tail's start). `routined.secrets.tree_redaction` does the same,
in place, for the files a run leaves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Shorter values are not redacted: "1", "yes" or "dev" would wreck ordinary text.
MIN_REDACTED = 4
# A cut (a preview's end, a kept tail's start) leaves a piece of a value: its start
# at the end of what was kept, or its end at the start. A piece counts from this many
# letters and digits, the characters that carry a value's secrecy: fewer tell no
# more than a whole value MIN_REDACTED leaves alone, and lines ending in separators
# ("-----", "====") or indentation are not taken for the start of a key file. It
# counts only where a cut leaves it, next to the end or start of the text, a line
# break or a cut mark, never before or after other text ("sk-ant-api03-" ahead of
# another key is left alone), so ordinary text matches only when a line ends with the
# first characters of a value, or starts with its last: by chance, for a random token,
# one line end in 16**4 even for hex; for a word-like value ("postgres://…" after a
# line ending "postgres"), a few characters of ordinary text marked.
MIN_PIECE = 4
# What a cut leaves next to the piece: a line break (Claude Code's previews end the
# first 2,000 characters with "\n...\n", at any character if no line ends in the
# second half; a long command's output loses its middle as "\n\n... [N characters
# truncated] ...\n\n" and its start-and-end preview says "[… N omitted …]\n"), an
# ellipsis ("…", "...[truncated]"), U+FFFD (bytes cut inside a character and decoded),
# the quote ending or starting a JSON string that holds a cut text, and in JSON text
# the escaped ones.
_CUT_MARKS = ("\n", "\r", '"', "…", "...", "\ufffd", "\\n", "\\r", "\\u2026", "\\ufffd")
_MARK_FIRST = re.compile(r'[\n\r"….\ufffd\\]')  # a character a mark can start with
_MARK_LAST = re.compile(r'[\n\r"….\ufffdnr6d]')  # or end with
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPED = tuple('"\\/bfnrt')  # what a backslash escapes in JSON, \u aside
# What is kept of the text before a chunk: enough for any cut mark and JSON escape.
_REACH = 16


class Redactor:
    """Replaces secret values in text and JSON-like data with `[redacted:NAME]`.

    A value counts however it is written: whole, each of its lines, JSON-escaped.
    So does a piece of one that a cut left (see MIN_PIECE): its start just before
    the end of the text, a line break or a cut mark, or its end just after the
    start of the text or one of those.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        # Longest first, so a value that contains another is replaced whole; one name
        # per value (the first by name) when several secrets hold the same. What a run
        # records is often cut into lines (a key file printed) or JSON-escaped (an
        # event's preview), so each line of a value, and each form escaped, counts too.
        spelled = {
            (form, name)
            for name, value in values.items()
            for part in (value, *value.splitlines())
            for text in (part, part.strip())
            for form in _spellings(text)
            if len(form.strip()) >= MIN_REDACTED
        }
        ordered = sorted(spelled, key=lambda pair: (-len(pair[0]), pair[1]))
        self._names: dict[str, str] = {}
        for value, name in ordered:
            self._names.setdefault(value, name)
        # One pass over the text: a replacement is never searched again, so a value
        # such as "redacted" cannot eat into the marks already made.
        self._pattern = re.compile("|".join(re.escape(value) for value in self._names))
        # A piece is looked for where the shortest piece that counts is found.
        self._heads: dict[str, list[_Form]] = {}
        self._tails: dict[str, list[_Form]] = {}
        for text, name in self._names.items():
            form = _Form(text, name, head=_piece(text), tail=_piece(text[::-1]))
            if form.head:
                self._heads.setdefault(text[: form.head], []).append(form)
            if form.tail:
                self._tails.setdefault(text[-form.tail :], []).append(form)
        # Any text with a secret in it holds one of these: the shortest piece of each
        # end that counts, or a whole spelling too short to have one.
        short = [text for text in self._names if not _piece(text)]
        self._probes = tuple(dict.fromkeys([*self._heads, *self._tails, *short]))
        self._longest = max(map(len, self._names), default=0)

    def __bool__(self) -> bool:
        return bool(self._names)

    def text(self, s: str) -> str:
        # Called on every event a run records: substring tests (in C) rule out the
        # usual case of no secret at all before anything else runs.
        if not any(probe in s for probe in self._probes):
            return s
        spans = self._spans(s, starts=True, ends=True, json_safe=False)
        return _marked(s, spans, 0, len(s)) if spans else s

    def data(self, obj: Any) -> Any:
        """`obj` with every string in it redacted, dict keys too; other values as they are."""
        if not self._names:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {
                (self.text(key) if isinstance(key, str) else key): self.data(value)
                for key, value in obj.items()
            }
        if isinstance(obj, list | tuple):
            return [self.data(item) for item in obj]
        return obj

    def _spans(
        self, s: str, *, starts: bool, ends: bool, json_safe: bool
    ) -> list[tuple[int, int, str]]:
        """What to replace in `s`: (start, end, name), sorted, none overlapping.

        `starts` and `ends` say whether the start and the end of `s` are those of the
        whole text (a file read in chunks has one of each). With `json_safe`, JSON in
        `s` stays valid once the spans are replaced (see `_json_safe`).
        """
        found = [(m.start(), m.end(), self._names[m[0]]) for m in self._pattern.finditer(s)]
        # Wherever the shortest piece of a start (or an end) that counts stands, the
        # longest piece of any form found there counts.
        for anchors, piece, edge in (
            (self._heads, _head_piece, ends),
            (self._tails, _tail_piece, starts),
        ):
            for anchor, forms in anchors.items():
                for at in _places(s, anchor):
                    pieces = [
                        (*span, form.name)
                        for form in forms
                        if (span := piece(s, at, form, edge)) is not None
                    ]
                    if pieces:
                        found.append(max(pieces, key=lambda span: span[1] - span[0]))
        if json_safe:
            found = [_json_safe(s, a, b, name) for a, b, name in found]
        return _merged(found)

    def stream(
        self, chunks: Iterable[str], *, starts: bool = True, ends: bool = True
    ) -> Iterator[tuple[str, bool]]:
        """The redacted text of `chunks` joined, in pieces, each with whether anything
        in it was replaced; JSON in it stays valid. `starts` and `ends` say whether
        the chunks start and end the whole text (a file's data between holes may not).

        1. Gather text until there is more than twice `window`, the most a span found
           later could reach back (one span may overlap another).
        2. Redact all but the last `window` characters, stopping before a span that
           crosses that point, and put out what is done.
        3. Keep the last few characters put out: a piece of a value after a cut is
           known by the cut mark before it.
        """
        window = 2 * (self._longest + _REACH)
        behind, pending, done = "", "", 0
        pieces = iter(chunks)
        ended = False
        while not ended:
            chunk = next(pieces, None)
            ended = chunk is None
            pending += chunk or ""
            if not ended and len(pending) < 2 * window:
                continue
            text = behind + pending
            stop = len(text) if ended else len(text) - window
            spans: list[tuple[int, int, str]] = []
            if any(probe in text for probe in self._probes):
                spans = self._spans(
                    text, starts=starts and done == 0, ends=ends and ended, json_safe=True
                )
            for start, end, _ in spans:
                if start < stop < end:
                    stop = start if start > len(behind) else end
                    break
            taken = [span for span in spans if span[1] > len(behind) and span[0] < stop]
            yield _marked(text, taken, len(behind), stop), bool(taken)
            done += stop - len(behind)
            behind, pending = text[max(0, stop - _REACH) : stop], text[stop:]


@dataclass(frozen=True)
class _Form:
    """One spelling of a value: its text, its secret's name, and the lengths of the
    shortest start (`head`) and end (`tail`) of it that count as a piece (0: none)."""

    text: str
    name: str
    head: int
    tail: int


def _spellings(text: str) -> set[str]:
    """`text` as printed and JSON-escaped: as Python writes JSON (ASCII only) and as
    JavaScript does (Claude Code's transcript: other characters as they are), once or
    twice (a tool's JSON output quoted in a transcript's JSON)."""
    once = {text, _escaped(text, ascii_only=True), _escaped(text, ascii_only=False)}
    return once | {_escaped(form, ascii_only=flag) for form in once for flag in (True, False)}


def _escaped(text: str, *, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)[1:-1]


def _piece(text: str) -> int:
    """The length of the shortest start of `text` with MIN_PIECE letters and digits, or
    0 if only the whole has them."""
    count = 0
    for length, char in enumerate(text, 1):
        count += char.isalnum()
        if count == MIN_PIECE:
            return length if length < len(text) else 0
    return 0


def _places(s: str, anchor: str) -> Iterator[int]:
    """Where `anchor` stands in `s`, overlaps too."""
    at = s.find(anchor)
    while at >= 0:
        yield at
        at = s.find(anchor, at + 1)


def _head_piece(s: str, at: int, form: _Form, ends: bool) -> tuple[int, int] | None:
    """The longest start of `form` found at `at` that counts and ends at a cut; `ends`:
    the end of `s` is that of the whole text."""
    matched = _common_start(s, at, form.text)
    if matched == len(form.text):
        return None  # the whole value: the pattern has it
    first, last = at + form.head, at + matched
    if last < first:
        return None
    if last == len(s):
        if ends:
            return at, last
        last -= 1
    for found in reversed(list(_MARK_FIRST.finditer(s, first, last + 1))):
        if _cut_mark_at(s, found.start()):
            return at, found.start()
    return None


def _tail_piece(s: str, at: int, form: _Form, starts: bool) -> tuple[int, int] | None:
    """The longest end of `form` whose shortest piece that counts stands at `at`, if
    it begins after a cut; `starts`: the start of `s` is that of the whole text."""
    end = at + form.tail
    matched = _common_end(s, end, form.text)
    if matched == len(form.text):
        return None
    first, last = end - matched, end - form.tail
    if first > last:
        return None
    if first == 0:
        if starts:
            return 0, end
        first = 1
    for found in _MARK_LAST.finditer(s, first - 1, last):
        if _cut_mark_before(s, found.start() + 1):
            return found.start() + 1, end
    return None


def _common_start(s: str, at: int, text: str) -> int:
    """How many characters of `text` `s` has from `at`."""
    return _agreeing(
        min(len(text), len(s) - at),
        lambda good, upto: s.startswith(text[good:upto], at + good),
    )


def _common_end(s: str, end: int, text: str) -> int:
    """How many of the last characters of `text` `s` has just before `end`."""
    size = len(text)
    return _agreeing(
        min(len(text), end),
        lambda good, upto: s.endswith(text[size - upto : size - good], 0, end - good),
    )


def _agreeing(limit: int, agree: Callable[[int, int], bool]) -> int:
    """How many characters, up to `limit`, two texts have in common, `agree(good, upto)`
    saying whether they have those from `good` to `upto`: longer and longer steps,
    then halving, so a long value costs few comparisons (each in C)."""
    good, step = 0, 16
    while good < limit:
        upto = min(good + step, limit)
        if not agree(good, upto):
            while good + 1 < upto:
                middle = (good + upto) // 2
                if agree(good, middle):
                    good = middle
                else:
                    upto = middle
            return good
        good, step = upto, step * 2
    return good


def _cut_mark_at(s: str, at: int) -> bool:
    return (
        s.startswith(_CUT_MARKS, at)
        and _escape_around(s, at) is None
        and (s[at] != "\\" or _starts_escape(s, at))
    )


def _cut_mark_before(s: str, at: int) -> bool:
    if _escape_around(s, at) is not None:
        return False
    for mark in _CUT_MARKS:
        start = at - len(mark)
        if start >= 0 and s.startswith(mark, start):
            if mark[0] == "\\" and not _starts_escape(s, start):
                continue
            if mark == '"' and _escape_around(s, start) is not None:
                continue
            return True
    return False


def _starts_escape(s: str, at: int) -> bool:
    """Whether the character at `at` is a backslash that begins a JSON escape (one not
    itself escaped: an even number of backslashes before it)."""
    if s[at] != "\\":
        return False
    before = at
    while before > 0 and s[before - 1] == "\\":
        before -= 1
    return (at - before) % 2 == 0


def _escape_around(s: str, at: int) -> tuple[int, int] | None:
    """The JSON escape (`\\n`, `\\u00e9`) that position `at` falls strictly inside."""
    for start in range(at - 1, max(at - 6, -1), -1):
        if _starts_escape(s, start):
            if _HEX4.fullmatch(s, start + 2, start + 6) and s.startswith("u", start + 1):
                end = start + 6
            elif s.startswith(_ESCAPED, start + 1):
                end = start + 2
            else:
                return None  # not an escape, a backslash in plain text
            return (start, end) if end > at else None
    return None


def _json_safe(s: str, start: int, end: int, name: str) -> tuple[int, int, str]:
    """A span widened to whole JSON escapes and narrowed to leave out a quote at either
    end that is not escaped: in JSON it ends or starts a string (a value spelled with
    a quote at its end matches `"pass"` up to the closing quote), and taking it out
    would break the document."""
    if (around := _escape_around(s, start)) is not None:
        start = around[0]
    if (around := _escape_around(s, end)) is not None:
        end = around[1]
    if s.startswith('"', start) and _escape_around(s, start) is None:
        start += 1
    if s.startswith('"', end - 1) and _escape_around(s, end - 1) is None:
        end -= 1
    return start, end, name


def _merged(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Spans sorted, those that overlap joined (under the first one's name)."""
    spans: list[tuple[int, int, str]] = []
    for start, end, name in sorted(found, key=lambda span: (span[0], -span[1])):
        if spans and start < spans[-1][1]:
            if end > spans[-1][1]:
                spans[-1] = (spans[-1][0], end, spans[-1][2])
        else:
            spans.append((start, end, name))
    return spans


def _marked(s: str, spans: list[tuple[int, int, str]], start: int, stop: int) -> str:
    """`s[start:stop]` with each span replaced by its mark."""
    out, at = [], start
    for first, end, name in spans:
        out.append(f"{s[at:first]}[redacted:{name}]")
        at = end
    out.append(s[at:stop])
    return "".join(out)
