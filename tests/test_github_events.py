"""GitHub event matching on real webhook payloads (octokit/webhooks examples, unchanged).

Facts asserted about a fixture come from the fixture README's table (base
`master`, head `changes`, label `bug`, author `Codertocat`, tag `0.0.1`, …) or
are read from the payload itself; variants (merged, from a fork, draft, other
labels) are built here from copies, never stored beside the originals.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from routined.github.events import (
    BOOL_FIELDS,
    EVENTS,
    FIELD_EVENTS,
    FIELDS,
    MATCH_MAX_CHARS,
    MATCH_TIMEOUT,
    SUMMARY_KEYS,
    Concurrency,
    EventSelector,
    Filter,
    KeyPolicy,
    KeyTemplateError,
    Op,
    Verdict,
    check,
    check_filters,
    fields,
    match,
    parse_events,
    parse_filters,
    render_key,
    summary,
    summary_text,
)

# Real payloads from octokit/webhooks, bytes unchanged (see its README).
FIXTURES = Path(__file__).parent / "fixtures" / "github-webhooks"
ALL = sorted(FIXTURES.glob("*/*.payload.json"))
OPENED = "pull_request/opened.payload.json"
PUSH = "push/with-new-branch.payload.json"
# A bound for "returned promptly": the regex budget plus slack for a loaded machine.
PROMPTLY = 1.0


def load(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return payload


def variant(name: str, **changes: Any) -> dict[str, Any]:
    """A copy of a fixture with dotted paths set: variant(..., **{"pull_request.draft": True})."""
    payload = copy.deepcopy(load(name))
    for path, value in changes.items():
        *parents, last = path.split(".")
        here: Any = payload
        for part in parents:
            here = here[int(part)] if isinstance(here, list) else here[part]
        here[last] = value
    return payload


def flt(field: str, op: str, value: object, path: str | None = None) -> Filter:
    raw: dict[str, Any] = {"field": field, "op": op, "value": value}
    if path is not None:
        raw["path"] = path
    return Filter.parse(raw)


def verdict_of(one: Filter, payload: Mapping[str, Any], event: str = "pull_request") -> Verdict:
    return check(one, event, payload, fields(event, payload))


def test_the_fixture_set_is_complete() -> None:
    assert len(ALL) == 20, f"expected the 20 payloads the README lists under {FIXTURES}"


# ------------------------------------------------------------------ every payload


@pytest.mark.parametrize("file", ALL, ids=lambda file: f"{file.parent.name}/{file.name}")
def test_every_payload_gives_fields_and_a_summary(file: Path) -> None:
    event = file.parent.name
    payload = json.loads(file.read_bytes())
    found = fields(event, payload)
    assert bool(found) is (event in EVENTS)  # installation and ping are not trigger events
    for name, value in found.items():
        assert event in FIELD_EVENTS[name], (name, event)
        if name in BOOL_FIELDS:
            assert isinstance(value, bool)
        elif name == "labels":
            assert isinstance(value, list) and all(isinstance(x, str) for x in value)
        else:
            assert isinstance(value, str)
    facts = summary(event, payload)
    assert list(facts) == list(SUMMARY_KEYS)
    assert (facts["event"], facts["action"]) == (event, payload.get("action"))
    assert facts["repository"] == payload.get("repository", {}).get("full_name")
    assert facts["author"] == found.get("author", payload["sender"]["login"])
    lines = summary_text(facts).splitlines()
    shown = f"{event}.{payload['action']}" if "action" in payload else event
    assert f"event: {shown}" in lines
    assert all(line.split(": ", 1)[0] in SUMMARY_KEYS for line in lines)


def test_pull_request_fields_are_the_fixture_facts() -> None:
    payload = load(OPENED)
    assert fields("pull_request", payload) == {
        "author": "Codertocat",
        "title": payload["pull_request"]["title"],
        "body": payload["pull_request"]["body"],
        "base_branch": "master",
        "head_branch": "changes",
        "labels": ["bug"],
        "is_draft": False,
        "is_merged": False,
        "from_fork": False,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("push/with-new-branch.payload.json", {"branch": "master", "tag": None}),
        ("release/published.payload.json", {"tag": "0.0.1", "is_draft": False}),
        ("workflow_run/completed.payload.json", {"head_branch": "master", "from_fork": False}),
        ("merge_group/checks_requested.payload.json", {"base_branch": "main"}),
        ("issues/labeled.payload.json", {"labels": ["bug"], "base_branch": None}),
    ],
)
def test_fields_of_other_events(name: str, expected: dict[str, Any]) -> None:
    found = fields(name.split("/")[0], load(name))
    assert {key: found.get(key) for key in expected} == expected


def test_comment_fields_are_the_comment_on_the_issue() -> None:
    payload = load("issue_comment/created.payload.json")
    found = fields("issue_comment", payload)
    assert found["body"] == payload["comment"]["body"]
    assert found["title"] == payload["issue"]["title"]
    assert found["author"] == payload["comment"]["user"]["login"]
    assert "tag" not in found and "base_branch" not in found


def test_push_of_a_tag_has_a_tag_and_no_branch() -> None:
    found = fields("push", variant("push/with-new-branch.payload.json", ref="refs/tags/v1.2"))
    assert found["tag"] == "v1.2" and "branch" not in found


def test_a_pull_request_from_a_fork_and_one_whose_fork_was_deleted() -> None:
    forked = variant(
        OPENED,
        **{
            "pull_request.head.repo.full_name": "forker/Hello-World",
            "pull_request.head.repo.fork": True,
        },
    )
    assert fields("pull_request", forked)["from_fork"] is True
    deleted = variant(OPENED, **{"pull_request.head.repo": None})
    assert fields("pull_request", deleted)["from_fork"] is True
    same_but_case = variant(
        OPENED, **{"pull_request.head.repo.full_name": "codertocat/hello-world"}
    )
    assert fields("pull_request", same_but_case)["from_fork"] is False


def test_a_null_body_is_empty_text() -> None:
    assert fields("pull_request", variant(OPENED, **{"pull_request.body": None}))["body"] == ""


# ------------------------------------------------------------------ the issue's example trigger

REPOSITORY = "codertocat/hello-world"  # the fixture says Codertocat/Hello-World: case is ignored
SELECTORS = parse_events(["pull_request.opened", "pull_request.synchronize"])
EXAMPLE = parse_filters(
    [
        {"field": "base_branch", "op": "equals", "value": "master"},
        {"field": "labels", "op": "one_of", "value": ["needs-review", "bug"]},
        {"field": "is_draft", "op": "equals", "value": False},
        {
            "field": "path",
            "path": "pull_request.head.repo.full_name",
            "op": "equals",
            "value": "Codertocat/Hello-World",
        },
    ]
)


@pytest.mark.parametrize("name", ["opened", "synchronize"])
def test_the_example_trigger_fires(name: str) -> None:
    check_filters(SELECTORS, EXAMPLE)
    verdict = match(
        REPOSITORY, SELECTORS, EXAMPLE, "pull_request", load(f"pull_request/{name}.payload.json")
    )
    assert (verdict.matched, verdict.reason) == (
        True,
        f"pull_request.{name} on Codertocat/Hello-World; filters matched: "
        "base_branch, labels, is_draft, path pull_request.head.repo.full_name",
    )


MISSES = [
    pytest.param("acme/webapp", OPENED, {}, "repository Codertocat/Hello-World is not acme/webapp", id="other-repository"),
    pytest.param(REPOSITORY, "pull_request/closed.payload.json", {}, "event pull_request.closed is not one of pull_request.opened, pull_request.synchronize", id="other-action"),
    pytest.param(REPOSITORY, OPENED, {"pull_request.base.ref": "main"}, 'filter base_branch equals master: got "main"', id="other-base"),
    pytest.param(REPOSITORY, OPENED, {"pull_request.labels.0.name": "docs"}, 'filter labels one_of [needs-review, bug]: got ["docs"]', id="other-label"),
    pytest.param(REPOSITORY, OPENED, {"pull_request.labels": []}, "filter labels one_of [needs-review, bug]: got []", id="no-labels"),
    pytest.param(REPOSITORY, OPENED, {"pull_request.draft": True}, "filter is_draft equals false: got true", id="draft"),
    pytest.param(REPOSITORY, OPENED, {"pull_request.head.repo.full_name": "forker/Hello-World"}, 'filter path pull_request.head.repo.full_name equals Codertocat/Hello-World: got "forker/Hello-World"', id="from-fork"),
]  # fmt: skip


@pytest.mark.parametrize(("repository", "name", "changes", "reason"), MISSES)
def test_the_example_trigger_misses_with_a_reason(
    repository: str, name: str, changes: dict[str, Any], reason: str
) -> None:
    verdict = match(repository, SELECTORS, EXAMPLE, "pull_request", variant(name, **changes))
    assert (verdict.matched, verdict.reason) == (False, reason)


def test_a_merged_pull_request() -> None:
    selectors = parse_events(["pull_request.closed"])
    merged_only = parse_filters([{"field": "is_merged", "op": "equals", "value": True}])
    closed = load("pull_request/closed.payload.json")
    verdict = match(REPOSITORY, selectors, merged_only, "pull_request", closed)
    assert (verdict.matched, verdict.reason) == (False, "filter is_merged equals true: got false")
    merged = variant(
        "pull_request/closed.payload.json",
        **{
            "pull_request.merged": True,
            "pull_request.merged_at": closed["pull_request"]["closed_at"],
            "pull_request.merged_by": closed["sender"],
        },
    )
    assert match(REPOSITORY, selectors, merged_only, "pull_request", merged).matched


def test_a_review_s_short_pull_request_is_merged_by_merged_at() -> None:
    short = load(OPENED)
    del short["pull_request"]["merged"]
    assert fields("pull_request_review", short)["is_merged"] is False
    short["pull_request"]["merged_at"] = short["pull_request"]["created_at"]
    assert fields("pull_request_review", short)["is_merged"] is True


def test_an_edited_pull_request_built_from_opened() -> None:
    edited = variant(OPENED, action="edited")
    edited["changes"] = {"title": {"from": "Old title"}}
    selectors = parse_events(["pull_request.edited"])
    changed = parse_filters(
        [{"field": "path", "path": "changes.title.from", "op": "equals", "value": "Old title"}]
    )
    assert match(REPOSITORY, selectors, changed, "pull_request", edited).matched
    verdict = match(REPOSITORY, selectors, changed, "pull_request", load(OPENED))
    assert verdict.reason == "event pull_request.opened is not one of pull_request.edited"


def test_a_payload_without_installation_is_matched() -> None:
    payload = load("pull_request/ready_for_review.payload.json")
    assert "installation" not in payload
    assert match(
        REPOSITORY, parse_events(["pull_request"]), EXAMPLE, "pull_request", payload
    ).matched


def test_a_field_that_does_not_apply_does_not_match() -> None:
    selectors = parse_events(["push", "pull_request"])
    on_tag = parse_filters([{"field": "tag", "op": "starts_with", "value": "v"}])
    check_filters(selectors, on_tag)  # it applies to push
    verdict = match(REPOSITORY, selectors, on_tag, "pull_request", load(OPENED))
    assert verdict.reason == "filter tag starts_with v: tag does not apply to pull_request events"
    verdict = match(REPOSITORY, selectors, on_tag, "push", load(PUSH))
    assert verdict.reason == "filter tag starts_with v: this push payload has no tag"
    not_one = parse_filters([{"field": "tag", "op": "not_one_of", "value": ["v0"]}])
    assert not match(REPOSITORY, selectors, not_one, "pull_request", load(OPENED)).matched


def test_check_filters_refuses_a_field_for_none_of_the_events() -> None:
    tag = parse_filters([{"field": "tag", "op": "equals", "value": "v1"}])
    with pytest.raises(
        ValueError,
        match=r"^filter tag does not apply to pull_request events; it applies to push, release",
    ):
        check_filters(SELECTORS, tag)
    check_filters(parse_events(["pull_request", "release"]), tag)
    check_filters(
        SELECTORS,
        parse_filters(
            [{"field": "path", "path": "release.tag_name", "op": "equals", "value": "v1"}]
        ),
    )


def test_a_delivery_without_a_repository() -> None:
    verdict = match(
        REPOSITORY, SELECTORS, (), "installation", load("installation/created.payload.json")
    )
    assert (
        verdict.reason
        == f"the installation event names no repository; the trigger is for {REPOSITORY}"
    )


def test_an_event_with_every_action_and_no_filters() -> None:
    verdict = match(REPOSITORY, parse_events(["push"]), (), "push", load(PUSH))
    assert (verdict.matched, verdict.reason) == (True, "push on Codertocat/Hello-World")


# ------------------------------------------------------------------ operators

TITLE = "Update the README with new information."  # pull_request/opened's title
OPERATORS = [
    ("title", "equals", TITLE, True),
    ("title", "equals", TITLE.upper(), False),  # text is case-sensitive
    ("title", "contains", "README", True),
    ("title", "contains", "readme", False),
    ("title", "starts_with", "Update", True),
    ("title", "starts_with", "README", False),
    ("title", "one_of", ["Other", TITLE], True),
    ("title", "one_of", ["Other"], False),
    ("title", "not_one_of", ["Other"], True),
    ("title", "not_one_of", [TITLE], False),
    ("title", "matches", r"Update .* information\.", True),
    ("title", "matches", "README", False),  # the whole value, not a part
    ("author", "equals", "codertocat", True),  # logins ignore case
    ("author", "matches", "CODER.*", True),
    ("author", "one_of", ["dependabot[bot]"], False),
    ("labels", "equals", "BUG", True),  # label names ignore case
    ("labels", "contains", "ug", True),
    ("labels", "starts_with", "x", False),
    ("labels", "not_one_of", ["wip", "Bug"], False),
    ("labels", "not_one_of", ["wip"], True),
    ("labels", "matches", "b.g", True),
    ("head_branch", "equals", "Changes", False),  # branch names are case-sensitive
    ("head_branch", "equals", "changes", True),
    ("is_merged", "equals", False, True),
    ("from_fork", "equals", True, False),
]


@pytest.mark.parametrize(("field", "op", "value", "expected"), OPERATORS)
def test_operators(field: str, op: str, value: object, expected: bool) -> None:
    verdict = verdict_of(flt(field, op, value), load(OPENED))
    assert verdict.matched is expected, verdict.reason


def test_every_operator_is_in_the_table() -> None:
    assert {op for _, op, _, _ in OPERATORS} == {str(op) for op in Op}


def test_empty_labels() -> None:
    payload = variant(OPENED, **{"pull_request.labels": []})
    assert verdict_of(flt("labels", "not_one_of", ["wip"]), payload).matched
    assert not verdict_of(flt("labels", "one_of", ["wip"]), payload).matched


PATHS = [
    ("pull_request.number", "equals", 2, True),
    ("pull_request.number", "equals", "2", True),
    ("pull_request.number", "one_of", [1, 3], False),
    ("pull_request.draft", "equals", False, True),
    ("pull_request.merged_at", "equals", None, True),
    ("pull_request.labels.0.name", "equals", "bug", True),
    ("pull_request.labels.0.name", "equals", "Bug", False),  # paths are case-sensitive
    ("pull_request.labels.name", "contains", "bu", True),  # a name after a list: every element
    ("pull_request.requested_reviewers.login", "one_of", ["octocat"], True),
    ("pull_request.requested_reviewers.login", "not_one_of", ["octocat"], False),
    ("pull_request.assignees.login", "equals", "Codertocat", True),
    ("sender.login", "matches", "Coder.*", True),
]


@pytest.mark.parametrize(("path", "op", "value", "expected"), PATHS)
def test_path_filters(path: str, op: str, value: object, expected: bool) -> None:
    verdict = verdict_of(flt("path", op, value, path), load(OPENED))
    assert verdict.matched is expected, verdict.reason


def test_a_path_to_a_list_of_values_is_like_labels() -> None:
    ping = load("ping/with-app_id.payload.json")
    assert verdict_of(flt("path", "one_of", ["*", "push"], "hook.events"), ping, "ping").matched
    assert not verdict_of(flt("path", "not_one_of", ["*"], "hook.events"), ping, "ping").matched


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("pull_request.nope", "filter path pull_request.nope equals x: pull_request.nope is not in the payload"),
        ("pull_request.labels.5.name", "filter path pull_request.labels.5.name equals x: pull_request.labels.5.name is not in the payload"),
        ("pull_request.head", "filter path pull_request.head equals x: pull_request.head is not a value; point at a value inside it"),
        ("pull_request.requested_reviewers", "filter path pull_request.requested_reviewers equals x: pull_request.requested_reviewers is not a value; point at a value inside it"),
    ],
)  # fmt: skip
def test_path_filters_that_cannot_be_compared(path: str, reason: str) -> None:
    verdict = verdict_of(flt("path", "equals", "x", path), load(OPENED))
    assert (verdict.matched, verdict.reason) == (False, reason)


# ------------------------------------------------------------------ the regex bound


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|aa)+$", "(a|a)+$"])
def test_a_catastrophic_pattern_returns_within_the_bound(pattern: str) -> None:
    payload = variant(OPENED, **{"pull_request.title": "a" * 5_000 + "b"})
    started = time.monotonic()
    verdict = verdict_of(flt("title", "matches", pattern), payload)
    elapsed = time.monotonic() - started
    assert not verdict.matched
    assert elapsed < PROMPTLY, elapsed
    assert verdict.reason in (
        f"filter title matches {pattern}: timed out after {MATCH_TIMEOUT * 1000:g} ms",
        f'filter title matches {pattern}: got "{"a" * 77}…',  # the engine saw through it
    )


def test_a_pattern_that_backtracks_times_out_with_its_reason() -> None:
    verdict = verdict_of(
        flt("body", "matches", "(a|aa)+$"), variant(OPENED, **{"pull_request.body": "a" * 60 + "b"})
    )
    assert verdict.reason == "filter body matches (a|aa)+$: timed out after 50 ms"


def test_the_bound_is_shared_by_a_list() -> None:
    labels = [{"name": "a" * 60 + f"b{n}"} for n in range(40)]
    payload = variant(OPENED, **{"pull_request.labels": labels})
    started = time.monotonic()
    verdict = verdict_of(flt("labels", "matches", "(a|aa)+$"), payload)
    assert time.monotonic() - started < PROMPTLY
    assert verdict.reason.endswith("timed out after 50 ms")

    # Each element gets its share, so slow but not timed-out elements add up to the bound.
    given: list[float] = []

    class Recording:
        def fullmatch(self, string: str, *, timeout: float) -> object | None:
            given.append(timeout)
            return None

    recording = dataclasses.replace(flt("labels", "matches", "x"), pattern=Recording())
    assert not verdict_of(recording, payload).matched
    assert len(given) == len(labels) and sum(given) == pytest.approx(MATCH_TIMEOUT)


def test_a_value_over_the_limit_is_not_read() -> None:
    over = variant(OPENED, **{"pull_request.body": "x" * (MATCH_MAX_CHARS + 1)})
    verdict = verdict_of(flt("body", "matches", "x*"), over)
    assert (
        verdict.reason
        == f"filter body matches x*: the value has {MATCH_MAX_CHARS + 1} characters, over {MATCH_MAX_CHARS}"
    )
    assert verdict_of(
        flt("body", "matches", "x*"),
        variant(OPENED, **{"pull_request.body": "x" * MATCH_MAX_CHARS}),
    ).matched


# ------------------------------------------------------------------ parse errors

FILTER_ERRORS = [
    ("base_branch", 'filter "base_branch" is not a mapping'),
    ({"field": "base_branch", "op": "equals", "vaule": "x"}, "filter: unknown key 'vaule'; a filter has field, op and value"),
    ({"field": "auther", "op": "equals", "value": "x"}, "filter field 'auther' is not a field; use one of author, title,"),
    ({"op": "equals", "value": "x"}, "filter field None is not a field"),
    ({"field": "title", "op": "is", "value": "x"}, "filter title: op 'is' is not an operator; use one of equals, contains, starts_with, one_of, not_one_of, matches"),
    ({"field": "title", "op": "equals"}, "filter title equals: value is missing"),
    ({"field": "labels", "op": "one_of", "value": "bug"}, "filter labels one_of: value must be a non-empty list, such as [a, b]"),
    ({"field": "labels", "op": "not_one_of", "value": []}, "filter labels not_one_of: value must be a non-empty list"),
    ({"field": "title", "op": "matches", "value": "(unclosed"}, "filter title matches: '(unclosed' is not a regular expression: missing )"),
    ({"field": "title", "op": "matches", "value": "a" * 1001}, "filter title matches: the pattern is longer than 1000 characters"),
    ({"field": "title", "op": "equals", "value": True}, "filter title equals: true is a boolean; true and false are only for from_fork, is_draft, is_merged"),
    ({"field": "labels", "op": "one_of", "value": ["bug", False]}, "filter labels one_of: false is a boolean"),
    ({"field": "is_draft", "op": "equals", "value": "false"}, "filter is_draft equals: is_draft takes op equals with value true or false"),
    ({"field": "from_fork", "op": "one_of", "value": [True]}, "filter from_fork one_of: from_fork takes op equals with value true or false"),
    ({"field": "tag", "op": "equals", "value": 1.1}, "filter tag equals: 1.1 is a number to YAML, which drops digits (1.10 becomes 1.1, 0010 becomes 8); quote the value"),
    ({"field": "title", "op": "contains", "value": {"a": 1}}, 'filter title contains: {"a": 1} is not a value; write text'),
    ({"field": "path", "op": "equals", "value": "x"}, "filter path: None is not a dotted payload path; write one such as pull_request.head.repo.full_name"),
    ({"field": "path", "path": "a..b", "op": "equals", "value": "x"}, "filter path: 'a..b' is not a dotted payload path"),
    ({"field": "title", "path": "a.b", "op": "equals", "value": "x"}, "filter title: path is only for field: path; remove it"),
    ({"field": "path", "path": "a.b", "op": "matches", "value": 5}, "filter path a.b matches: value must be a regular expression in quotes"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), FILTER_ERRORS)
def test_filter_parse_errors(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Filter.parse(raw)
    assert str(caught.value).startswith(message), str(caught.value)


def test_filter_parse_keeps_what_was_written() -> None:
    parsed = flt("labels", "one_of", ["bug", "docs"])
    assert (parsed.field, parsed.op, parsed.value, parsed.path) == (
        "labels",
        Op.ONE_OF,
        ("bug", "docs"),
        None,
    )
    assert str(parsed) == "filter labels one_of [bug, docs]"
    assert flt("path", "equals", 2, "pull_request.number").value == "2"
    assert flt("title", "matches", "x.*") == flt("title", "matches", "x.*")


def test_parse_filters_names_the_index() -> None:
    with pytest.raises(ValueError, match=r"^filters\[1\]: filter field 'nope' is not a field"):
        parse_filters([{"field": "title", "op": "equals", "value": "x"}, {"field": "nope"}])
    assert parse_filters(None) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pull_requests", "event 'pull_requests' is not supported; use one of pull_request, release, push,"),
        ("pull_request.open", "event 'pull_request.open': 'open' is not a pull_request action; use one of assigned,"),
        ("push.created", "event 'push.created': push has no actions; write push"),
        (7, "event 7 is not text; write one such as pull_request.opened"),
        ("installation", "event 'installation' is not supported"),
    ],
)  # fmt: skip
def test_event_selector_errors(text: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        EventSelector.parse(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_event_selectors() -> None:
    assert EventSelector.parse("pull_request.opened") == EventSelector("pull_request", "opened")
    assert EventSelector.parse("release") == EventSelector("release", None)
    assert EventSelector.parse("release").selects("release", "deleted")
    assert not EventSelector.parse("pull_request.opened").selects("pull_request", "closed")
    assert not EventSelector.parse("issues").selects("issue_comment", "created")
    assert set(EVENTS) == {
        "pull_request", "release", "push", "issues", "issue_comment", "pull_request_review",
        "pull_request_review_comment", "check_run", "check_suite", "workflow_run", "discussion",
        "discussion_comment", "merge_group",
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"^events\[1\]: event 'nope'"):
        parse_events(["push", "nope"])
    with pytest.raises(ValueError, match=r"^events: write a non-empty list"):
        parse_events("push")


def test_where_fields_apply() -> None:
    assert all(FIELD_EVENTS[name] for name in FIELDS)
    assert FIELD_EVENTS["tag"] == {"push", "release"}
    assert FIELD_EVENTS["is_merged"] == {
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
    }


# ------------------------------------------------------------------ concurrency keys


def test_render_key() -> None:
    payload = load(OPENED)
    assert render_key("{{pull_request.number}}", payload) == "2"
    assert (
        render_key("pr-{{ pull_request.number }}-{{pull_request.base.ref}}", payload)
        == "pr-2-master"
    )
    assert render_key("{{pull_request.draft}}", payload) == "false"
    assert render_key("one-at-a-time", payload) == "one-at-a-time"


@pytest.mark.parametrize(
    ("template", "name", "message"),
    [
        ("{{pull_request.number}}", PUSH, "concurrency key '{{pull_request.number}}': pull_request.number is not in this payload; use a path every listed event carries"),
        ("{{pull_request.merged_at}}", OPENED, "concurrency key '{{pull_request.merged_at}}': pull_request.merged_at is not in this payload"),
        ("{{pull_request.head}}", OPENED, "concurrency key '{{pull_request.head}}': pull_request.head is not a value; point at a value inside it"),
        ("{{pull_request.body}}" * 5, OPENED, "concurrency key '{{pull_request.body}}"),
    ],
)  # fmt: skip
def test_render_key_errors(template: str, name: str, message: str) -> None:
    with pytest.raises(KeyTemplateError) as caught:
        render_key(template, load(name))
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{pull_request.number", "concurrency key '{{pull_request.number': a placeholder is not closed"),
        ("{{}}", "concurrency key '{{}}': '' is not a dotted payload path"),
        ("", "concurrency key: write text such as"),
    ],
)  # fmt: skip
def test_key_template_errors(template: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Concurrency.parse({"key": template, "policy": "skip"})
    assert str(caught.value).startswith(message), str(caught.value)


def test_concurrency_parse() -> None:
    parsed = Concurrency.parse({"key": "{{pull_request.number}}", "policy": "cancel_previous"})
    assert parsed == Concurrency("{{pull_request.number}}", KeyPolicy.CANCEL_PREVIOUS)
    assert Concurrency.parse({"key": "k"}).policy is KeyPolicy.QUEUE_ONE
    with pytest.raises(
        ValueError,
        match=r"^concurrency policy 'later' is not a policy; use one of cancel_previous, skip, queue_one",
    ):
        Concurrency.parse({"key": "k", "policy": "later"})
    with pytest.raises(
        ValueError, match=r"^concurrency: unknown key 'polcy'; write key and policy"
    ):
        Concurrency.parse({"key": "k", "polcy": "skip"})
    with pytest.raises(ValueError, match=r"^concurrency: write"):
        Concurrency.parse({"policy": "skip"})


# ------------------------------------------------------------------ summaries


def at(payload: Mapping[str, Any], path: str) -> Any:
    here: Any = payload
    for part in path.split("."):
        here = here[part]
    return here


SUBJECTS = [
    (OPENED, {"number": "pull_request.number", "title": "pull_request.title", "url": "pull_request.html_url"}),
    ("issue_comment/created.payload.json", {"number": "issue.number", "title": "issue.title", "url": "comment.html_url", "author": "comment.user.login"}),
    ("discussion/created.payload.json", {"number": "discussion.number", "title": "discussion.title", "url": "discussion.html_url"}),
    ("release/published.payload.json", {"tag": "release.tag_name", "title": "release.tag_name", "url": "release.html_url"}),  # it has no name
    ("workflow_run/completed.payload.json", {"title": "workflow_run.display_title", "head_branch": "workflow_run.head_branch", "url": "workflow_run.html_url"}),
    ("check_run/completed.payload.json", {"title": "check_run.name", "url": "check_run.html_url", "number": "check_run.pull_requests"}),
    (PUSH, {"title": "head_commit.message", "url": "compare"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "expected"), SUBJECTS)
def test_summary_reads_the_subject(name: str, expected: dict[str, str]) -> None:
    payload = load(name)
    facts = summary(name.split("/")[0], payload)
    for key, path in expected.items():
        want = at(payload, path)
        if isinstance(want, list):  # the pull requests of a check run: its one number
            want = want[0]["number"]
        assert facts[key] == (want.splitlines()[0] if isinstance(want, str) else want), key


def test_summary_of_a_pull_request() -> None:
    facts = summary("pull_request", load(OPENED))
    assert {
        key: facts[key]
        for key in ("repository", "action", "author", "base_branch", "head_branch", "branch", "tag")
    } == {
        "repository": "Codertocat/Hello-World",
        "action": "opened",
        "author": "Codertocat",
        "base_branch": "master",
        "head_branch": "changes",
        "branch": None,
        "tag": None,
    }
    lines = summary_text(facts).splitlines()
    assert "event: pull_request.opened" in lines and "head_branch: changes" in lines
    assert not any(line.startswith(("tag:", "action:")) for line in lines)


def test_summary_text_keeps_github_text_on_one_line() -> None:
    payload = variant(
        OPENED, **{"pull_request.title": "Fix\nurl: https://evil.example\n" + "x" * 300}
    )
    facts = summary("pull_request", payload)
    assert facts["title"] == "Fix"  # the first line of a title
    facts["title"] = payload["pull_request"]["title"]
    lines = summary_text(facts).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "repository",
        "event",
        "number",
        "title",
        "author",
        "base_branch",
        "head_branch",
        "url",
    ]
    title = next(line for line in lines if line.startswith("title: "))
    assert title.endswith("…") and len(title) == len("title: ") + 201
