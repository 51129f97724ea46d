"""GitHub events: whether a webhook delivery matches a trigger, and why. Pure: no store, no clock.

A GitHub trigger names a repository, the events it listens to and filters that
must all match::

    - type: github
      repository: acme/webapp
      events: [pull_request.opened, pull_request.synchronize]
      filters:
        - {field: base_branch, op: equals, value: main}
        - {field: labels, op: one_of, value: [needs-review, security]}
        - {field: is_draft, op: equals, value: false}
        - {field: path, path: pull_request.head.repo.full_name, op: equals, value: acme/webapp}
      concurrency: {key: "pr-{{pull_request.number}}", policy: cancel_previous}

An event is written `name` (every action) or `name.action`; the repository is
compared with `repository.full_name` ignoring case. Named fields (`FIELD_EVENTS`
says which events each applies to):

- author: who wrote the subject (pull request, issue, discussion, release); for
  comments and reviews the comment's or review's author; a workflow run's actor;
  the sender for push, check runs and suites, and merge groups.
- title, body: the subject's; for comments and reviews `body` is the comment's or
  review's and `title` the issue's, pull request's or discussion's. A workflow
  run's title is its display title. An empty (null) body is "".
- base_branch, head_branch: a pull request's (also on reviews and review
  comments), a merge group's; head_branch of check runs, check suites and
  workflow runs.
- branch, tag: what a push updated (`refs/heads/`, `refs/tags/` removed); `tag`
  is also a release's tag.
- labels: the subject's label names.
- is_draft (pull requests, releases), is_merged (pull requests), from_fork (pull
  requests: the head repository is not the base repository, or was deleted;
  workflow runs: the head repository is not the repository).

A field that does not apply to the event, or that the payload lacks, is absent,
and a filter on an absent field does not match (`not_one_of` included).

Path filters read any payload value: `{field: path, path: a.b.0.c, op, value}`;
a number segment indexes a list, and a name after a list reads it from every
element (`pull_request.requested_reviewers.login`). Path values compare as text
(`true`, `false`, `null`, `12`), so `value: 2` and `value: "2"` are the same; a
list of values is treated like labels; an object cannot be compared.

Comparing:

- author and labels ignore case, as GitHub logins and label names do; everything
  else (branches, tags, titles, bodies, paths) is case-sensitive.
- Lists: a filter matches when any element satisfies it, except `not_one_of`,
  which matches when no element is one of its values (an empty list matches it).
- Values of named text fields must be YAML strings: `1.10` or `0010` are numbers
  to YAML and would lose digits, so the error says to quote them. true and false
  are only for is_draft, is_merged and from_fork, which take op `equals`.
- `matches` is a regular expression (the `regex` package) that must match the
  whole value. Each filter gets `MATCH_TIMEOUT` in all (shared among a list's
  elements), after which it does not match: a hostile pattern or body cannot
  stall the server. Values longer than `MATCH_MAX_CHARS` (GitHub's own limit on
  a body or comment) are not matched at all rather than read in part, since a
  prefix could match where the whole would not; patterns are at most
  `PATTERN_MAX_CHARS` long.

Concurrency keys are templates with dotted paths in `{{ }}` (the policy defaults
to queue_one, as GitHub Actions' concurrency groups behave). `render_key` raises
`KeyTemplateError` when a path is missing, null or not a single value, rather
than returning an empty or made-up key that would silently group unrelated
events; keys longer than `KEY_MAX_CHARS` are refused too.

`summary` gives a session the facts of a delivery; `summary_text` writes them one
`key: value` per line, each value folded onto its line, since titles come from
whoever opened the pull request.

Over 500 lines and still one concept: every field, filter and operator of a GitHub
trigger, each beside the events it applies to, as the docs list them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import regex  # type: ignore[import-untyped]  # no stubs installed; used through _Pattern

from routined.errors import BadInput

MATCH_TIMEOUT = 0.05  # seconds a `matches` filter may run, over all its values
MATCH_MAX_CHARS = 65_536  # GitHub's limit on a body or comment
PATTERN_MAX_CHARS = 1_000
KEY_MAX_CHARS = 256
_SHOW_CHARS = 80  # how much of a value a reason quotes

# Actions as GitHub documents them for each event; push has none.
ACTIONS: dict[str, tuple[str, ...]] = {
    "pull_request": (
        "assigned", "auto_merge_disabled", "auto_merge_enabled", "closed",
        "converted_to_draft", "demilestoned", "dequeued", "edited", "enqueued", "labeled",
        "locked", "milestoned", "opened", "ready_for_review", "reopened",
        "review_request_removed", "review_requested", "synchronize", "unassigned",
        "unlabeled", "unlocked",
    ),
    "release": (
        "created", "deleted", "edited", "prereleased", "published", "released", "unpublished",
    ),
    "push": (),
    "issues": (
        "assigned", "closed", "deleted", "demilestoned", "edited", "labeled", "locked",
        "milestoned", "opened", "pinned", "reopened", "transferred", "typed", "unassigned",
        "unlabeled", "unlocked", "unpinned", "untyped",
    ),
    "issue_comment": ("created", "deleted", "edited"),
    "pull_request_review": ("dismissed", "edited", "submitted"),
    "pull_request_review_comment": ("created", "deleted", "edited"),
    "check_run": ("completed", "created", "requested_action", "rerequested"),
    "check_suite": ("completed", "requested", "rerequested"),
    "workflow_run": ("completed", "in_progress", "requested"),
    "discussion": (
        "answered", "category_changed", "closed", "created", "deleted", "edited", "labeled",
        "locked", "pinned", "reopened", "transferred", "unanswered", "unlabeled", "unlocked",
        "unpinned",
    ),
    "discussion_comment": ("created", "deleted", "edited"),
    "merge_group": ("checks_requested", "destroyed"),
}  # fmt: skip
EVENTS = tuple(ACTIONS)
FIELDS = (
    "author", "title", "body", "base_branch", "head_branch", "branch", "tag", "labels",
    "is_draft", "is_merged", "from_fork",
)  # fmt: skip
BOOL_FIELDS = frozenset({"is_draft", "is_merged", "from_fork"})
FOLDED_FIELDS = frozenset({"author", "labels"})  # compared ignoring case, as GitHub does
SUMMARY_KEYS = (
    "repository", "event", "action", "number", "title", "author", "branch", "base_branch",
    "head_branch", "tag", "url",
)  # fmt: skip

_ABSENT: Any = object()
_T = TypeVar("_T")
_PATH = re.compile(r"[^.\s{}]+(?:\.[^.\s{}]+)*")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class KeyTemplateError(BadInput, ValueError):
    """A concurrency key that cannot be rendered; the message names the path."""


class _Pattern(Protocol):
    def fullmatch(self, string: str, *, timeout: float) -> object | None: ...


@dataclass(frozen=True)
class Verdict:
    matched: bool
    reason: str


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class EventSelector:
    event: str
    action: str | None = None  # None: every action

    @classmethod
    def parse(cls, text: object) -> EventSelector:
        if not isinstance(text, str):
            raise ValueError(f"event {text!r} is not text; write one such as pull_request.opened")
        event, _, action = text.strip().partition(".")
        if event not in ACTIONS:
            raise ValueError(
                f"event {text!r} is not supported; use one of {', '.join(EVENTS)}, "
                "alone for every action or with one, such as pull_request.opened"
            )
        if action and action not in ACTIONS[event]:
            if not ACTIONS[event]:
                raise ValueError(f"event {text!r}: {event} has no actions; write {event}")
            raise ValueError(
                f"event {text!r}: {action!r} is not a {event} action; "
                f"use one of {', '.join(ACTIONS[event])}"
            )
        return cls(event, action or None)

    def selects(self, event: str, action: str | None) -> bool:
        return event == self.event and self.action in (None, action)

    def __str__(self) -> str:
        return f"{self.event}.{self.action}" if self.action else self.event


def parse_events(raw: object) -> tuple[EventSelector, ...]:
    """A trigger's `events` list; the error names the bad entry's index."""
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValueError("events: write a non-empty list such as [pull_request.opened, release]")
    return tuple(dict.fromkeys(_each("events", raw, EventSelector.parse)))


def _each(name: str, items: Sequence[Any], parse: Callable[[Any], _T]) -> list[_T]:
    """Each item of the list `name` parsed; the error names the bad item's index."""
    parsed = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse(item))
        except ValueError as error:
            raise ValueError(f"{name}[{index}]: {error}") from None
    return parsed


# ------------------------------------------------------------------ fields

_Getter = Callable[[Mapping[str, Any]], Any]


def _resolve(data: Any, path: str) -> Any:
    """The value at a dotted path, `_ABSENT` if there is none.

    Digits index a list; a name after a list reads it from each element.
    """
    parts = path.split(".")
    for at, part in enumerate(parts):
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isascii() and part.isdigit():
            if int(part) >= len(data):
                return _ABSENT
            data = data[int(part)]
        elif isinstance(data, list):
            each = (_resolve(item, ".".join(parts[at:])) for item in data)
            return [found for found in each if found is not _ABSENT]
        else:
            return _ABSENT
    return data


def _text(path: str, *, null: str | None = None) -> _Getter:
    def get(payload: Mapping[str, Any]) -> str | None:
        value = _resolve(payload, path)
        if value is None:
            return null
        return value if isinstance(value, str) else None

    return get


def _flag(path: str) -> _Getter:
    return lambda payload: v if isinstance(v := _resolve(payload, path), bool) else None


def _labels(path: str) -> _Getter:
    def get(payload: Mapping[str, Any]) -> list[str] | None:
        found = _resolve(payload, path)
        if not isinstance(found, list):
            return None
        return [
            x["name"] for x in found if isinstance(x, Mapping) and isinstance(x.get("name"), str)
        ]

    return get


def _ref(path: str, prefix: str) -> _Getter:
    def get(payload: Mapping[str, Any]) -> str | None:
        ref = _resolve(payload, path)
        return ref.removeprefix(prefix) if isinstance(ref, str) and ref.startswith(prefix) else None

    return get


def _merged(payload: Mapping[str, Any]) -> bool | None:
    pull = payload.get("pull_request")
    if not isinstance(pull, Mapping):
        return None
    if isinstance(pull.get("merged"), bool):
        return bool(pull["merged"])
    # Reviews and review comments carry a shorter pull request without `merged`.
    return pull["merged_at"] is not None if "merged_at" in pull else None


def _other_repository(head_path: str, base_path: str) -> _Getter:
    def get(payload: Mapping[str, Any]) -> bool | None:
        head, base = _resolve(payload, head_path), _resolve(payload, base_path)
        if not isinstance(base, Mapping) or not isinstance(base.get("full_name"), str):
            return None
        if head is None:
            return True  # the head repository was deleted: only a fork can be
        if not isinstance(head, Mapping) or not isinstance(head.get("full_name"), str):
            return None
        return bool(head["full_name"].casefold() != base["full_name"].casefold())

    return get


def _on_pull(author: str, body: str) -> dict[str, _Getter]:
    return {
        "author": _text(author),
        "title": _text("pull_request.title"),
        "body": _text(body, null=""),
        "base_branch": _text("pull_request.base.ref"),
        "head_branch": _text("pull_request.head.ref"),
        "labels": _labels("pull_request.labels"),
        "is_draft": _flag("pull_request.draft"),
        "is_merged": _merged,
        "from_fork": _other_repository("pull_request.head.repo", "pull_request.base.repo"),
    }


def _on_thread(subject: str, author: str, body: str) -> dict[str, _Getter]:
    return {
        "author": _text(author),
        "title": _text(f"{subject}.title"),
        "body": _text(body, null=""),
        "labels": _labels(f"{subject}.labels"),
    }


_EXTRACT: dict[str, dict[str, _Getter]] = {
    "pull_request": _on_pull("pull_request.user.login", "pull_request.body"),
    "pull_request_review": _on_pull("review.user.login", "review.body"),
    "pull_request_review_comment": _on_pull("comment.user.login", "comment.body"),
    "issues": _on_thread("issue", "issue.user.login", "issue.body"),
    "issue_comment": _on_thread("issue", "comment.user.login", "comment.body"),
    "discussion": _on_thread("discussion", "discussion.user.login", "discussion.body"),
    "discussion_comment": _on_thread("discussion", "comment.user.login", "comment.body"),
    "push": {
        "author": _text("sender.login"),
        "branch": _ref("ref", "refs/heads/"),
        "tag": _ref("ref", "refs/tags/"),
    },
    "release": {
        "author": _text("release.author.login"),
        "title": _text("release.name", null=""),
        "body": _text("release.body", null=""),
        "tag": _text("release.tag_name"),
        "is_draft": _flag("release.draft"),
    },
    "check_run": {
        "author": _text("sender.login"),
        "head_branch": _text("check_run.check_suite.head_branch"),
    },
    "check_suite": {
        "author": _text("sender.login"),
        "head_branch": _text("check_suite.head_branch"),
    },
    "workflow_run": {
        "author": _text("workflow_run.actor.login"),
        "title": _text("workflow_run.display_title"),
        "head_branch": _text("workflow_run.head_branch"),
        "from_fork": _other_repository("workflow_run.head_repository", "repository"),
    },
    "merge_group": {
        "author": _text("sender.login"),
        "base_branch": _ref("merge_group.base_ref", "refs/heads/"),
        "head_branch": _ref("merge_group.head_ref", "refs/heads/"),
    },
}
FIELD_EVENTS: dict[str, frozenset[str]] = {
    name: frozenset(event for event, getters in _EXTRACT.items() if name in getters)
    for name in FIELDS
}


def fields(event: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The named fields of one delivery (text, bool, or a list of label names)."""
    found = {name: get(payload) for name, get in _EXTRACT.get(event, {}).items()}
    return {name: value for name, value in found.items() if value is not None}


# ------------------------------------------------------------------ filters


class Op(enum.StrEnum):
    EQUALS = "equals"  # the whole value
    CONTAINS = "contains"  # a part of the value
    STARTS_WITH = "starts_with"
    ONE_OF = "one_of"  # equals one of a list
    NOT_ONE_OF = "not_one_of"  # equals none of a list
    MATCHES = "matches"  # a regular expression that matches the whole value


@dataclass(frozen=True)
class Filter:
    field: str  # a name in FIELDS, or "path"
    op: Op
    value: str | bool | tuple[str, ...]  # path values are held as text
    path: str | None = None  # the dotted payload path when field is "path"
    pattern: _Pattern | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"path {self.path}" if self.path else self.field

    def __str__(self) -> str:
        return f"filter {self.name} {self.op} {_show_wanted(self.value)}"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Filter:
        if not isinstance(raw, Mapping):
            raise ValueError(
                f"filter {_show(raw)} is not a mapping; write one such as "
                "{field: base_branch, op: equals, value: main}"
            )
        unknown = sorted(str(key) for key in raw if key not in ("field", "op", "value", "path"))
        if unknown:
            raise ValueError(
                f"filter: unknown key {unknown[0]!r}; a filter has field, op and value "
                "(and path when field is path)"
            )
        name, path = raw.get("field"), raw.get("path")
        if name != "path" and name not in FIELDS:
            raise ValueError(
                f"filter field {name!r} is not a field; use one of {', '.join(FIELDS)}, "
                "or path with path: a.dotted.path"
            )
        if name == "path":
            path = _check_path(path, "filter path")
        elif path is not None:
            raise ValueError(f"filter {name}: path is only for field: path; remove it")
        label = f"filter {name if path is None else f'path {path}'}"
        try:
            op = Op(str(raw.get("op")))
        except ValueError:
            raise ValueError(
                f"{label}: op {raw.get('op')!r} is not an operator; use one of {', '.join(Op)}"
            ) from None
        if "value" not in raw:
            raise ValueError(f"{label} {op}: value is missing")
        value = _parse_value(f"{label} {op}", name, op, raw["value"])
        pattern = None
        if op is Op.MATCHES:
            assert isinstance(value, str)
            pattern = _compile(f"{label} {op}", value, fold=name in FOLDED_FIELDS)
        return cls(name, op, value, path, pattern)


def _parse_value(label: str, name: str, op: Op, raw: object) -> str | bool | tuple[str, ...]:
    if name in BOOL_FIELDS:
        if op is not Op.EQUALS or not isinstance(raw, bool):
            raise ValueError(f"{label}: {name} takes op equals with value true or false")
        return raw
    if op in (Op.ONE_OF, Op.NOT_ONE_OF):
        if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
            raise ValueError(f"{label}: value must be a non-empty list, such as [a, b]")
        return tuple(_scalar(label, name, item) for item in raw)
    if op is Op.MATCHES and not isinstance(raw, str):
        raise ValueError(f"{label}: value must be a regular expression in quotes")
    return _scalar(label, name, raw)


def _scalar(label: str, name: str, raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if name == "path" and (raw is None or isinstance(raw, bool | int | float)):
        return _as_text(raw)
    if isinstance(raw, bool):
        raise ValueError(
            f"{label}: {_show(raw)} is a boolean; true and false are only for "
            f"{', '.join(sorted(BOOL_FIELDS))}; quote it to compare text"
        )
    if isinstance(raw, int | float):
        raise ValueError(
            f"{label}: {raw!r} is a number to YAML, which drops digits (1.10 becomes 1.1, "
            "0010 becomes 8); quote the value as you mean it"
        )
    raise ValueError(f"{label}: {_show(raw)} is not a value; write text")


def _compile(label: str, pattern: str, *, fold: bool) -> _Pattern:
    if len(pattern) > PATTERN_MAX_CHARS:
        raise ValueError(f"{label}: the pattern is longer than {PATTERN_MAX_CHARS} characters")
    try:
        compiled: _Pattern = regex.compile(pattern, regex.IGNORECASE if fold else 0)
    except regex.error as error:
        raise ValueError(f"{label}: {pattern!r} is not a regular expression: {error}") from None
    return compiled


def _check_path(raw: object, what: str) -> str:
    if not isinstance(raw, str) or not _PATH.fullmatch(raw):
        raise ValueError(
            f"{what}: {raw!r} is not a dotted payload path; write one such as "
            "pull_request.head.repo.full_name"
        )
    return raw


def parse_filters(raw: object) -> tuple[Filter, ...]:
    """A trigger's `filters` list (absent or empty: none); the error names the index."""
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ValueError("filters: write a list of {field, op, value} mappings")
    return tuple(_each("filters", raw, Filter.parse))


def check_filters(selectors: Sequence[EventSelector], filters: Sequence[Filter]) -> None:
    """Refuse a named filter that applies to none of the trigger's events."""
    events = sorted({selector.event for selector in selectors})
    for flt in filters:
        if flt.path is None and not FIELD_EVENTS[flt.field] & set(events):
            raise ValueError(
                f"filter {flt.field} does not apply to {', '.join(events)} events; it applies "
                f"to {', '.join(sorted(FIELD_EVENTS[flt.field]))}: remove it or use path"
            )


def check(flt: Filter, event: str, payload: Mapping[str, Any], found: Mapping[str, Any]) -> Verdict:
    """One filter against one delivery; `found` is `fields(event, payload)`."""
    if flt.path is None:
        if flt.field not in found:
            missing = (
                f"{flt.field} does not apply to {event} events"
                if event not in FIELD_EVENTS[flt.field]
                else f"this {event} payload has no {flt.field}"
            )
            return Verdict(False, f"{flt}: {missing}")
        got = found[flt.field]
    else:
        got = _resolve(payload, flt.path)
        if got is _ABSENT:
            return Verdict(False, f"{flt}: {flt.path} is not in the payload")
        if isinstance(got, list) and all(not isinstance(x, Mapping | list) for x in got):
            got = [_as_text(x) for x in got]
        elif isinstance(got, Mapping | list):
            return Verdict(False, f"{flt}: {flt.path} is not a value; point at a value inside it")
        else:
            got = _as_text(got)
    values = got if isinstance(got, list) else [got]
    if flt.op is Op.MATCHES:
        longest = max((len(value) for value in values), default=0)
        if longest > MATCH_MAX_CHARS:
            return Verdict(
                False, f"{flt}: the value has {longest} characters, over {MATCH_MAX_CHARS}"
            )
    try:
        if flt.op is Op.NOT_ONE_OF:
            ok = not any(_test(flt, value, len(values)) for value in values)
        else:
            ok = any(_test(flt, value, len(values)) for value in values)
    except TimeoutError:
        return Verdict(False, f"{flt}: timed out after {MATCH_TIMEOUT * 1000:g} ms")
    return Verdict(ok, f"{flt}: got {_show(got)}")


def _test(flt: Filter, got: str | bool, shares: int) -> bool:
    if isinstance(got, bool) or isinstance(flt.value, bool):
        return got == flt.value
    if flt.pattern is not None:
        # The filter's time is shared, so a long list cannot multiply it.
        return flt.pattern.fullmatch(got, timeout=MATCH_TIMEOUT / shares) is not None
    fold = flt.field in FOLDED_FIELDS
    text = got.casefold() if fold else got
    if isinstance(flt.value, tuple):
        return text in {(want.casefold() if fold else want) for want in flt.value}
    want = flt.value.casefold() if fold else flt.value
    if flt.op is Op.CONTAINS:
        return want in text
    if flt.op is Op.STARTS_WITH:
        return text.startswith(want)
    return text == want


def match(
    repository: str,
    selectors: Sequence[EventSelector],
    filters: Sequence[Filter],
    event: str,
    payload: Mapping[str, Any],
) -> Verdict:
    """Whether a delivery of `event` fires the trigger; the reason names the first miss."""
    full_name = _resolve(payload, "repository.full_name")
    if not isinstance(full_name, str):
        return Verdict(
            False, f"the {event} event names no repository; the trigger is for {repository}"
        )
    if full_name.casefold() != repository.casefold():
        return Verdict(False, f"repository {full_name} is not {repository}")
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    name = f"{event}.{action}" if action else event
    if not any(selector.selects(event, action) for selector in selectors):
        listed = ", ".join(map(str, selectors)) or "nothing: the trigger lists no events"
        return Verdict(False, f"event {name} is not one of {listed}")
    found = fields(event, payload)
    for flt in filters:
        verdict = check(flt, event, payload, found)
        if not verdict.matched:
            return verdict
    matched = f"; filters matched: {', '.join(flt.name for flt in filters)}" if filters else ""
    return Verdict(True, f"{name} on {full_name}{matched}")


# ------------------------------------------------------------------ concurrency


class KeyPolicy(enum.StrEnum):
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the runs in flight with the same key, then start
    SKIP = "skip"  # do not start while a run with the same key is queued or active
    QUEUE_ONE = "queue_one"  # let one run per key wait for the active one; merge the rest


@dataclass(frozen=True)
class Concurrency:
    key: str  # a template, such as "pr-{{pull_request.number}}"
    policy: KeyPolicy

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Concurrency:
        """`{key, policy}`; the policy defaults to queue_one, as GitHub Actions' groups do."""
        if not isinstance(raw, Mapping) or "key" not in raw:
            raise ValueError(
                'concurrency: write {key: "{{pull_request.number}}", policy: cancel_previous}'
            )
        unknown = sorted(str(key) for key in raw if key not in ("key", "policy"))
        if unknown:
            raise ValueError(f"concurrency: unknown key {unknown[0]!r}; write key and policy")
        try:
            policy = KeyPolicy(raw.get("policy", KeyPolicy.QUEUE_ONE))
        except ValueError:
            raise ValueError(
                f"concurrency policy {raw['policy']!r} is not a policy; "
                f"use one of {', '.join(KeyPolicy)}"
            ) from None
        return cls(check_key(raw["key"]), policy)


def check_key(template: object) -> str:
    """A key template's syntax: text with `{{ dotted.path }}` placeholders."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError('concurrency key: write text such as "pr-{{pull_request.number}}"')
    for path in _PLACEHOLDER.findall(template):
        _check_path(path, f"concurrency key {template!r}")
    rest = _PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError(
            f"concurrency key {template!r}: a placeholder is not closed; "
            "write each one as {{dotted.path}}"
        )
    return template


def render_key(template: str, payload: Mapping[str, Any]) -> str:
    """A key from its template and a payload; `KeyTemplateError` names a missing path."""
    check_key(template)

    def value(placeholder: re.Match[str]) -> str:
        path = placeholder.group(1)
        found = _resolve(payload, path)
        if found is _ABSENT or found is None:
            raise KeyTemplateError(
                f"concurrency key {template!r}: {path} is not in this payload; "
                "use a path every listed event carries"
            )
        if isinstance(found, Mapping | list):
            raise KeyTemplateError(
                f"concurrency key {template!r}: {path} is not a value; "
                "point at a value inside it, such as pull_request.number"
            )
        return _as_text(found)

    key = _PLACEHOLDER.sub(value, template)
    if len(key) > KEY_MAX_CHARS:
        raise KeyTemplateError(
            f"concurrency key {template!r} is {len(key)} characters long, over "
            f"{KEY_MAX_CHARS}; use a short value such as a number"
        )
    return key


# ------------------------------------------------------------------ summary

# Where the subject's number and web address are, per event.
_SUBJECT: dict[str, tuple[str | None, str | None]] = {
    "pull_request": ("pull_request.number", "pull_request.html_url"),
    "pull_request_review": ("pull_request.number", "review.html_url"),
    "pull_request_review_comment": ("pull_request.number", "comment.html_url"),
    "issues": ("issue.number", "issue.html_url"),
    "issue_comment": ("issue.number", "comment.html_url"),
    "discussion": ("discussion.number", "discussion.html_url"),
    "discussion_comment": ("discussion.number", "comment.html_url"),
    "push": (None, "compare"),
    "release": (None, "release.html_url"),
    "check_run": ("check_run.pull_requests", "check_run.html_url"),
    "check_suite": ("check_suite.pull_requests", None),
    "workflow_run": ("workflow_run.pull_requests", "workflow_run.html_url"),
}
# A title for events whose fields have none: a name, or a commit message's first line.
_TITLE = {
    "push": "head_commit.message",
    "check_run": "check_run.name",
    "check_suite": "check_suite.head_commit.message",
    "merge_group": "merge_group.head_commit.message",
}


def summary(event: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a session needs to know about a delivery; every key of SUMMARY_KEYS, None if unknown.

    The number of a check run, check suite or workflow run is its pull request's
    when it has exactly one.
    """
    found = fields(event, payload)
    number_at, url_at = _SUBJECT.get(event, (None, None))
    number = _resolve(payload, number_at) if number_at else None
    if isinstance(number, list):
        number = _resolve(number, "0.number") if len(number) == 1 else None
    title = found.get("title") or (_text(_TITLE[event])(payload) if event in _TITLE else None)
    if event == "release":
        title = title or found.get("tag")
    if not isinstance(title, str) or not title.strip():
        title = None
    author = found.get("author") or _text("sender.login")(payload)
    action = payload.get("action")
    return {
        "repository": _text("repository.full_name")(payload),
        "event": event,
        "action": action if isinstance(action, str) else None,
        "number": number if isinstance(number, int) and not isinstance(number, bool) else None,
        "title": title.strip().splitlines()[0] if isinstance(title, str) else None,
        "author": author,
        "branch": found.get("branch"),
        "base_branch": found.get("base_branch"),
        "head_branch": found.get("head_branch"),
        "tag": found.get("tag"),
        "url": _text(url_at)(payload) if url_at else None,
    }


def summary_text(facts: Mapping[str, Any]) -> str:
    """`key: value` lines; each value on one line, so text from GitHub cannot add lines."""
    lines = []
    for key in SUMMARY_KEYS:
        value = facts.get(key)
        if key == "action" or value is None:
            continue
        if key == "event" and facts.get("action"):
            value = f"{value}.{facts['action']}"
        text = " ".join(str(value).split())
        lines.append(f"{key}: {text[:200] + '…' if len(text) > 200 else text}")
    return "\n".join(lines)


# ------------------------------------------------------------------ showing values


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true, false, null, 12, 1.5


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"


def _show_wanted(value: str | bool | tuple[str, ...]) -> str:
    if isinstance(value, bool):
        return _as_text(value)
    text = f"[{', '.join(value)}]" if isinstance(value, tuple) else value or '""'
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 1] + "…"
