"""What recorded GitHub deliveries start, and why not: filters on real payloads and
variants of them, the app's installations, hourly caps, concurrency policies,
replay; on SQLite and PostgreSQL. The receiver and the matcher run in process; the
CLI reads the same store."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from routined import runs
from routined.cli import app as cli_app
from routined.db import Store
from routined.github import matcher
from routined.models import Routine, Run, WebhookDelivery
from routined.runs import Claim
from tests.github_support import (
    PR_TRIGGER,
    REPOSITORY,
    Hub,
    apply,
    encode,
    hubs,
    payload,
    raw,
    write_routines,
)

OPENED = "pull_request/opened.payload.json"
SYNCHRONIZE = "pull_request/synchronize.payload.json"
NOT_INSTALLED = f"app not installed on {REPOSITORY}"
# The trigger, and two filters more so that merged and forked pull requests
# have a filter to miss (the issue's own three let them through).
STRICT_TRIGGER = PR_TRIGGER + (
    "          - {field: from_fork, op: equals, value: false}\n"
    "          - {field: is_merged, op: equals, value: false}\n"
)
runner = CliRunner()


@pytest.fixture
def make_hub(store: Store, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    yield from hubs(store, tmp_path)


@pytest.fixture
def make_sqlite_hub(sqlite_store: Store, tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    yield from hubs(sqlite_store, tmp_path)


def cli(hub: Hub, *args: str) -> Result:
    """`routined ARGS` on the hub's store, as an operator at the machine runs it."""
    result = runner.invoke(
        cli_app,
        list(args),
        env={
            "ROUTINED_HOME": str(hub.settings.home),
            "ROUTINED_DATABASE_URL": hub.store.url.render_as_string(hide_password=False),
            "ROUTINED_URL": None,  # CliRunner unsets it
            "ROUTINED_GITHUB_WEBHOOK_SECRET": hub.settings.github_webhook_secret.reveal(),
        },
    )
    assert result.exit_code == 0, result.output
    return result


def cli_json(hub: Hub, *args: str) -> Any:
    return json.loads(cli(hub, *args, "--json").stdout)


def pull_request(number: int = 2, *, action: str = "opened", **changes: Any) -> bytes:
    """The opened payload as another pull request (or action) of the same repository;
    `changes` set fields of its `pull_request`."""
    varied = payload(OPENED)
    varied["action"] = action
    varied["number"] = number
    pull = varied["pull_request"]
    pull["number"] = number
    pull["html_url"] = f"https://github.com/{REPOSITORY}/pull/{number}"
    pull.update(changes)
    return encode(varied)


def variant(build: Callable[[dict[str, Any]], None]) -> bytes:
    varied = payload(OPENED)
    build(varied["pull_request"])
    return encode(varied)


def merged(pull: dict[str, Any]) -> None:
    pull.update(
        merged=True,
        merged_at="2019-05-15T15:22:00Z",
        merged_by=pull["user"],
        state="closed",
        closed_at="2019-05-15T15:22:00Z",
    )


def from_fork(pull: dict[str, Any]) -> None:
    head = pull["head"]
    head["label"] = "octocat:changes"
    head["repo"]["full_name"] = "octocat/Hello-World"
    head["repo"]["fork"] = True
    head["repo"]["owner"]["login"] = "octocat"


def draft(pull: dict[str, Any]) -> None:
    pull["draft"] = True


def other_labels(pull: dict[str, Any]) -> None:
    [bug] = pull["labels"]
    pull["labels"] = [{**bug, "id": 208045947, "name": "documentation"}]


def no_labels(pull: dict[str, Any]) -> None:
    pull["labels"] = []


def other_base(pull: dict[str, Any]) -> None:
    pull["base"]["ref"] = "develop"
    pull["base"]["label"] = "Codertocat:develop"


def test_a_pr_routine_fires_on_a_match_and_says_why_it_skips_each_variant(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin, STRICT_TRIGGER))
    fired = hub.accepted("pull_request", raw(OPENED))
    skipped = {
        "merged": hub.accepted("pull_request", variant(merged)),
        "from a fork": hub.accepted("pull_request", variant(from_fork)),
        "draft": hub.accepted("pull_request", variant(draft)),
        "other labels": hub.accepted("pull_request", variant(other_labels)),
        "no labels": hub.accepted("pull_request", variant(no_labels)),
        "other base": hub.accepted("pull_request", variant(other_base)),
        "closed": hub.accepted("pull_request", raw("pull_request/closed.payload.json")),
        "other repository": hub.accepted(
            "merge_group", raw("merge_group/checks_requested.payload.json")
        ),
    }
    synchronized = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 2

    decision = hub.decision(fired)
    assert decision["outcome"] == "fired"
    first = hub.run(decision["run_id"])
    [second] = [run for run in hub.runs() if run.id != first.id]
    assert decision["trigger_type"] == "github" and decision["delivery_id"] == fired
    assert decision["reason"] == (
        f"fired run {first.id}: pull_request.opened on {REPOSITORY}; filters matched: "
        f"base_branch, labels, is_draft, from_fork, is_merged; delivery {fired}"
    )
    assert hub.decision(synchronized)["run_id"] == second.id
    assert f"pull_request.synchronize on {REPOSITORY}" in hub.decision(synchronized)["reason"]
    reasons = {
        what: hub.decision(delivery_id)
        for what, delivery_id in skipped.items()
        if what != "other repository"
    }
    assert {what: (d["outcome"], d["run_id"]) for what, d in reasons.items()} == {
        what: ("skipped", None) for what in reasons
    }
    assert {what: d["reason"] for what, d in reasons.items()} == {
        "merged": "filter is_merged equals false: got true",
        "from a fork": "filter from_fork equals false: got true",
        "draft": "filter is_draft equals false: got true",
        "other labels": 'filter labels one_of [bug, security]: got ["documentation"]',
        "no labels": "filter labels one_of [bug, security]: got []",
        "other base": 'filter base_branch equals master: got "develop"',
        "closed": "event pull_request.closed is not one of pull_request.opened, "
        "pull_request.synchronize",
    }
    # An event on another repository reaches no routine: no decision, a line saying so.
    elsewhere = hub.delivery(skipped["other repository"])
    assert elsewhere["decisions"] == []
    assert elsewhere["outcome"] == "no routine listens to octo-org/octo-repo"
    assert hub.delivery(fired)["outcome"] == (
        f"pull_request.opened on {REPOSITORY}: pr-review: fired"
    )

    # `routined events --json` tells the same, each GitHub decision with its delivery.
    listed = cli_json(hub, "events", "pr-review")
    by_delivery = {row["delivery_id"]: row for row in listed}
    assert set(by_delivery) == {fired, synchronized} | {
        d for what, d in skipped.items() if what != "other repository"
    }
    assert by_delivery[skipped["draft"]]["reason"] == "filter is_draft equals false: got true"
    assert by_delivery[fired]["run_id"] == first.id

    # The run carries what its workspace and the session need of the event.
    sent = payload(OPENED)
    assert first.trigger_type == "github" and first.status == "queued"
    assert first.context == {
        "delivery_id": fired,
        "event": "pull_request",
        "repository": REPOSITORY,
        "installation_id": sent["installation"]["id"],
        "pull_request": {
            "number": 2,
            "head_ref": "changes",
            "head_sha": sent["pull_request"]["head"]["sha"],
            "from_fork": False,
        },
        "comment_on": {"kind": "pull_request", "number": 2},
    }
    assert first.text is not None
    summary, _, dumped = first.text.partition("\n\nPayload (JSON):\n")
    assert summary.splitlines() == [
        f"repository: {REPOSITORY}",
        "event: pull_request.opened",
        "number: 2",
        "title: Update the README with new information.",
        "author: Codertocat",
        "base_branch: master",
        "head_branch: changes",
        "url: https://github.com/Codertocat/Hello-World/pull/2",
    ]
    assert json.loads(dumped) == sent


def test_a_paused_routine_and_a_delivery_without_the_app_are_skipped_with_why(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_sqlite_hub()
    trigger = PR_TRIGGER.replace(
        "pull_request.synchronize]", "pull_request.synchronize, pull_request.ready_for_review]"
    )
    apply(hub.store, write_routines(tmp_path, origin, trigger))
    # A repository webhook's delivery (no installation): runs could not clone or push.
    without_app = hub.accepted("pull_request", raw("pull_request/ready_for_review.payload.json"))
    assert hub.decide() == 0
    reason = hub.decision(without_app)["reason"]
    assert hub.decision(without_app)["outcome"] == "skipped"
    assert reason.startswith(f"app not installed: the delivery names no installation of the "
                             f"GitHub App on {REPOSITORY}")  # fmt: skip
    paused = hub.client.post("/api/v1/routines/pr-review/pause")
    assert paused.status_code == 200, paused.text
    while_paused = hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 0
    assert hub.decision(while_paused)["outcome"] == "skipped"
    assert hub.decision(while_paused)["reason"].endswith("; the routine is paused")
    assert hub.runs() == []


def test_a_routine_cap_of_one_drops_the_next_matching_delivery_until_the_hour_turns(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub(ROUTINED_GITHUB_ROUTINE_HOURLY_CAP="1")
    apply(hub.store, write_routines(tmp_path, origin))
    # Two in one batch: the run the first started counts against the second.
    first = hub.accepted("pull_request", raw(OPENED))
    hub.clock.advance(seconds=1)
    second = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    assert hub.decision(first)["outcome"] == "fired"
    dropped = hub.decision(second)
    assert (dropped["outcome"], dropped["run_id"]) == ("dropped", None)
    assert dropped["reason"] == (
        "dropped: cap: pr-review started 1 runs from GitHub events this hour "
        "(ROUTINED_GITHUB_ROUTINE_HOURLY_CAP)"
    )
    # In a later batch of the same hour too; a dropped event is never decided again.
    hub.clock.advance(minutes=58)  # 12:58:01
    third = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 0
    assert hub.decision(third)["outcome"] == "dropped"
    hub.clock.advance(minutes=2)  # 13:00:01
    fourth = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    assert hub.decision(fourth)["outcome"] == "fired"
    assert hub.decision(second)["outcome"] == "dropped"
    assert len(hub.runs()) == 2


def test_an_account_cap_counts_the_runs_of_all_its_routines(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_sqlite_hub(ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP="1")
    second_routine = (
        "  - name: pr-second\n"
        "    prompt: Look again.\n"
        "    repositories:\n"
        f"      - url: {origin}\n"
        "    triggers:\n" + PR_TRIGGER
    )
    apply(hub.store, write_routines(tmp_path, origin, more=second_routine))
    delivery = hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 1
    # Routines are decided in name order: pr-review first.
    assert hub.decision(delivery, "pr-review")["outcome"] == "fired"
    capped = hub.decision(delivery, "pr-second")
    assert capped["outcome"] == "dropped"
    assert capped["reason"] == (
        "dropped: cap: its account started 1 runs from GitHub events this hour "
        "(ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP)"
    )


def concurrency(policy: str) -> str:
    return (
        PR_TRIGGER
        + f'        concurrency: {{key: "pr-{{{{pull_request.number}}}}", policy: {policy}}}\n'
    )


def claim(hub: Hub, run_id: str) -> Claim | None:
    with hub.store.transaction() as session:
        return runs.claim(session, "worker-test", now=hub.clock(), run_id=run_id)


def end(hub: Hub, held: Claim) -> None:
    with hub.store.transaction() as session:
        assert runs.fail(session, held, now=hub.clock(), error="test: ended")


def test_concurrency_skip_starts_nothing_while_the_keys_run_is_in_flight(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin, concurrency("skip")))
    first = hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 1
    [run] = hub.runs()
    assert run.concurrency_key == "pr-2"
    assert hub.decision(first)["reason"].endswith(f"; delivery {first}; key pr-2")
    hub.clock.advance(seconds=1)
    while_queued = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 0
    skipped = hub.decision(while_queued)
    assert skipped["outcome"] == "skipped" and skipped["run_id"] is None
    assert skipped["reason"].endswith(f"not started: run {run.id} is still queued (overlap: skip)")
    held = claim(hub, run.id)
    assert held is not None
    hub.clock.advance(seconds=1)
    while_active = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 0
    assert hub.decision(while_active)["reason"].endswith(
        f"not started: run {run.id} is still preparing (overlap: skip)"
    )
    # Another pull request has a key of its own.
    other = hub.accepted("pull_request", pull_request(3))
    assert hub.decide() == 1
    assert hub.decision(other)["outcome"] == "fired"
    end(hub, held)
    hub.clock.advance(seconds=1)
    after = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    assert hub.decision(after)["outcome"] == "fired"
    assert sorted(r.concurrency_key or "" for r in hub.runs()) == ["pr-2", "pr-2", "pr-3"]


def test_concurrency_cancel_previous_cancels_the_queued_run_of_the_key(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin, concurrency("cancel_previous")))
    opened = hub.accepted("pull_request", raw(OPENED))
    other = hub.accepted("pull_request", pull_request(3))
    assert hub.decide() == 2
    earlier = hub.run(hub.decision(opened)["run_id"])
    of_three = hub.run(hub.decision(other)["run_id"])
    hub.clock.advance(seconds=1)
    later = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    decision = hub.decision(later)
    assert decision["outcome"] == "fired"
    assert (
        f"; supersedes {earlier.id} (concurrency: cancel_previous); {earlier.id} cancelled"
        in decision["reason"]
    )
    cancelled = hub.run(earlier.id)
    assert cancelled.status == "cancelled"
    assert cancelled.error == f"cancelled: superseded by delivery {later}"
    assert hub.run(of_three.id).status == "queued"  # another key's run is left alone
    assert hub.decision(other)["outcome"] == "fired"
    newest = hub.run(decision["run_id"])
    assert (newest.status, newest.concurrency_key) == ("queued", "pr-2")
    # An active run of the key is asked to stop.
    held = claim(hub, newest.id)
    assert held is not None
    hub.clock.advance(seconds=1)
    again = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    assert f"{newest.id} requested" in hub.decision(again)["reason"]
    assert hub.run(newest.id).cancel_requested_at is not None


def test_concurrency_queue_one_lets_one_run_wait_and_merges_the_rest(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin, concurrency("queue_one")))
    hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 1
    [active] = hub.runs()
    held = claim(hub, active.id)
    assert held is not None
    hub.clock.advance(seconds=1)
    waits = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 1
    waiting = hub.decision(waits)
    assert waiting["outcome"] == "fired"
    assert waiting["reason"].endswith(f"; key pr-2; waits for run {active.id}")
    hub.clock.advance(seconds=1)
    merges = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 0
    merged_into = hub.decision(merges)
    assert (merged_into["outcome"], merged_into["run_id"]) == ("coalesced", None)
    assert merged_into["reason"].endswith(
        f"merged into {waiting['run_id']}, already waiting for run {active.id} (overlap: queue_one)"
    )
    # The waiting run starts only once the active one has ended.
    assert claim(hub, waiting["run_id"]) is None
    end(hub, held)
    assert claim(hub, waiting["run_id"]) is not None
    assert len(hub.runs()) == 2


def test_runs_of_different_concurrency_keys_do_not_wait_for_each_other(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    # Regression: a keyed run was serial for the whole routine, so one pull request's
    # run held up another's.
    hub = make_sqlite_hub()
    apply(hub.store, write_routines(tmp_path, origin, concurrency("queue_one")))
    hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 1
    [of_two] = hub.runs()
    assert claim(hub, of_two.id) is not None
    of_three = hub.accepted("pull_request", pull_request(3))
    assert hub.decide() == 1
    decision = hub.decision(of_three)
    assert decision["outcome"] == "fired"
    # Its key has nothing in flight: it may start now, beside pull request 2's run.
    assert claim(hub, decision["run_id"]) is not None


def trigger_state(hub: Hub, routine: str = "pr-review") -> list[tuple[str, bool, str]]:
    shown = cli_json(hub, "show", routine)
    return [(t["repository"], t["installed"], t["state"]) for t in shown["triggers"]]


def installation(name: str, **changes: Any) -> bytes:
    """An installation payload with its installation id, action or lists changed."""
    varied = payload(name)
    installation_id = changes.pop("installation_id", None)
    if installation_id is not None:
        varied["installation"]["id"] = installation_id
    varied.update(changes)
    return encode(varied)


def test_installation_events_decide_what_show_and_apply_report(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    space = PR_TRIGGER.replace(REPOSITORY, "Codertocat/Space")
    octocat = PR_TRIGGER.replace(REPOSITORY, "octocat/Hello-World")
    path = write_routines(tmp_path, origin, PR_TRIGGER + space + octocat)
    applied = cli(hub, "apply", "-f", str(path)).stdout
    for repository in (REPOSITORY, "Codertocat/Space", "octocat/Hello-World"):
        assert (
            f"warning: the GitHub App is not installed on {repository}: its events reach no "
            "routine until it is" in applied
        )
    assert trigger_state(hub) == [
        (REPOSITORY, False, NOT_INSTALLED),
        ("Codertocat/Space", False, "app not installed on Codertocat/Space"),
        ("octocat/Hello-World", False, "app not installed on octocat/Hello-World"),
    ]
    human = cli(hub, "show", "pr-review").stdout
    assert f"(pull_request.opened, pull_request.synchronize) {NOT_INSTALLED}" in human

    # Installed on Codertocat/Hello-World (957387), then on Codertocat/Space as well.
    created = hub.accepted("installation", raw("installation/created.payload.json"))
    hub.decide()
    assert hub.delivery(created)["outcome"] == (
        "installation 957387 (Codertocat) created: 1 repositories added"
    )
    hub.accepted("installation_repositories", raw("installation_repositories/added.payload.json"))
    # octocat's installation 2: created with a repository, which it then removes.
    hub.accepted(
        "installation",
        installation(
            "installation/created.payload.json",
            installation_id=2,
            repositories=payload("installation/deleted.payload.json")["repositories"],
        ),
    )
    assert hub.decide() == 0
    assert trigger_state(hub) == [
        (REPOSITORY, True, "listening"),
        ("Codertocat/Space", True, "listening"),
        ("octocat/Hello-World", True, "listening"),
    ]
    assert "(pull_request.opened, pull_request.synchronize) listening" in (
        cli(hub, "show", "pr-review").stdout
    )
    again = cli(hub, "apply", "-f", str(path)).stdout
    assert "warning" not in again and "pr-review unchanged" in again

    removed = hub.accepted(
        "installation_repositories", raw("installation_repositories/removed.payload.json")
    )
    hub.decide()
    assert hub.delivery(removed)["outcome"].endswith(": 1 removed")
    assert trigger_state(hub)[2] == (
        "octocat/Hello-World",
        False,
        "app not installed on octocat/Hello-World",
    )

    # Suspended, it hears nothing; unsuspended, it does again; deleted, it is gone.
    for action, installed in (("suspend", False), ("unsuspend", True)):
        hub.accepted(
            "installation", installation("installation/created.payload.json", action=action)
        )
        hub.decide()
        assert trigger_state(hub)[0][1] is installed, action
    hub.accepted(
        "installation",
        installation("installation/deleted.payload.json", installation_id=957387),
    )
    hub.decide()
    assert trigger_state(hub)[:2] == [
        (REPOSITORY, False, NOT_INSTALLED),
        ("Codertocat/Space", False, "app not installed on Codertocat/Space"),
    ]
    assert "warning: the GitHub App is not installed on Codertocat/Hello-World" in (
        cli(hub, "apply", "-f", str(path)).stdout
    )
    # The fixture's own deletion (of installation 2) is decided without harm.
    hub.accepted("installation", raw("installation/deleted.payload.json"))
    hub.decide()
    assert trigger_state(hub)[2][1] is False


def test_an_event_from_an_installation_tells_where_the_app_is(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_sqlite_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    assert trigger_state(hub) == [(REPOSITORY, False, NOT_INSTALLED)]
    hub.accepted("push", raw("push/with-new-branch.payload.json"))
    hub.decide()
    assert trigger_state(hub) == [(REPOSITORY, True, "listening")]


def test_replay_shows_what_a_stored_delivery_would_do_now(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    narrow = PR_TRIGGER.replace("[bug, security]", "[security]")
    apply(hub.store, write_routines(tmp_path, origin, narrow))
    delivery = hub.accepted("pull_request", raw(OPENED))
    assert hub.decide() == 0
    assert hub.decision(delivery)["reason"] == 'filter labels one_of [security]: got ["bug"]'
    before = cli_json(hub, "events", "replay", delivery)
    assert before["id"] == delivery and before["event"] == "pull_request"
    [would] = before["would"]
    assert (would["routine"], would["outcome"], would["reason"]) == (
        "pr-review",
        "skipped",
        'filter labels one_of [security]: got ["bug"]',
    )
    # The filters change: the same delivery would now fire. Replaying starts nothing.
    apply(hub.store, write_routines(tmp_path, origin))
    after = cli_json(hub, "events", "replay", delivery)
    [would] = after["would"]
    assert would["outcome"] == "fired"
    assert would["reason"] == (
        f"pull_request.opened on {REPOSITORY}; filters matched: base_branch, labels, "
        f"is_draft; delivery {delivery}"
    )
    human = cli(hub, "events", "replay", delivery).stdout
    assert f"delivery {delivery} pull_request.opened {REPOSITORY}" in human
    assert "pr-review would be fired" in human
    assert hub.runs() == []
    assert [d["outcome"] for d in hub.delivery(delivery)["decisions"]] == ["skipped"]
    # Deliveries no routine hears replay to nothing, and say so.
    ping = hub.accepted("ping", raw("ping/with-app_id.payload.json"))
    hub.decide()
    assert cli_json(hub, "events", "replay", ping)["would"] == []
    assert "no routine listens to Octocoders/Hello-World" in (
        cli(hub, "events", "replay", ping).stdout
    )


def test_deliveries_list_with_their_decisions(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_sqlite_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    ping = hub.accepted("ping", raw("ping/with-app_id.payload.json"))
    hub.clock.advance(seconds=1)
    opened = hub.accepted("pull_request", raw(OPENED))
    hub.deliver("pull_request", raw(OPENED), delivery=opened)
    hub.decide()
    newest, oldest = cli_json(hub, "events", "deliveries")
    assert (newest["id"], oldest["id"]) == (opened, ping)
    assert newest["attempts"] == 2
    assert [d["outcome"] for d in newest["decisions"]] == ["fired"]
    assert oldest["outcome"].startswith("ping from hook 109948940: ")
    human = cli(hub, "events", "deliveries").stdout
    assert f"delivery {opened} pull_request.opened {REPOSITORY}, delivered 2 times" in human
    with hub.store.transaction() as session:
        [run_id] = session.scalars(select(Run.id))
    assert f"pr-review github fired  → {run_id}" in human


def test_a_title_with_a_nul_character_does_not_hold_up_later_deliveries(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    # Regression: on PostgreSQL the run's text kept the NUL, its insert failed, and the
    # whole batch was rolled back and tried again for ever.
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    odd = hub.accepted("pull_request", pull_request(2, title="Fix \u0000 the README"))
    hub.clock.advance(seconds=1)
    plain = hub.accepted("pull_request", raw(SYNCHRONIZE))
    try:
        hub.decide()
    except Exception as error:  # noqa: BLE001 - what the matcher's loop would retry for ever
        pytest.fail(f"deciding failed: {error!r:.300}")
    assert hub.decision(plain)["outcome"] == "fired"
    fired = hub.decision(odd)
    assert fired["outcome"] == "fired"
    text = hub.run(fired["run_id"]).text or ""
    assert "title: Fix  the README" in text and "\x00" not in text


def test_a_delivery_that_cannot_be_decided_says_so_and_holds_up_no_other(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    context = matcher.context

    # It fails after its run was created: the run must go with it.
    def failing(delivery: WebhookDelivery, sent: dict[str, Any]) -> dict[str, Any]:
        if sent["pull_request"]["title"] == "boom":
            raise RuntimeError("cannot summarise this one")
        return context(delivery, sent)

    monkeypatch.setattr(matcher, "context", failing)
    before = hub.accepted("pull_request", raw(OPENED))
    broken = hub.accepted("pull_request", pull_request(3, title="boom"))
    after = hub.accepted("pull_request", raw(SYNCHRONIZE))
    assert hub.decide() == 2
    assert hub.delivery(broken)["outcome"] == (
        "not decided: RuntimeError: cannot summarise this one"
    )
    assert hub.delivery(broken)["decisions"] == []  # nothing of it is left half-written
    assert [hub.decision(d)["outcome"] for d in (before, after)] == ["fired", "fired"]
    assert len(hub.runs()) == 2
    assert hub.decide() == 0  # decided, if as a failure: not tried again for ever


def test_github_runs_stop_at_the_accounts_daily_plan_limit(
    make_sqlite_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    # Regression: the matcher did not count GitHub runs toward the account's plan.
    hub = make_sqlite_hub(ROUTINED_PLANS="pro:2,unlimited:none")
    created = hub.client.post("/api/v1/accounts", json={"name": "acme", "plan": "pro"})
    assert created.status_code == 201, created.text
    apply(hub.store, write_routines(tmp_path, origin, extra="    account: acme\n"))
    decided = []
    for _ in range(3):
        decided.append(hub.accepted("pull_request", raw(SYNCHRONIZE)))
        hub.clock.advance(seconds=1)
    hub.decide()
    outcomes = [hub.decision(delivery)["outcome"] for delivery in decided]
    assert outcomes == ["fired", "fired", "dropped"]
    assert len(hub.runs()) == 2
    reason = hub.decision(decided[2])["reason"]
    assert reason.startswith("dropped: ") and "plan pro" in reason


def test_a_huge_payload_reaches_the_session_cut_with_its_summary_whole() -> None:
    opened = payload(OPENED)
    opened["pull_request"]["body"] = "x" * (3 * matcher.MAX_PAYLOAD_TEXT)
    text = matcher.session_input("pull_request", opened)
    assert len(text) < matcher.MAX_PAYLOAD_TEXT + 5_000
    assert "… (cut: the payload has" in text
    assert f"number: {opened['pull_request']['number']}" in text
    small = matcher.session_input("pull_request", payload(OPENED))
    assert "(cut:" not in small and json.dumps(payload(OPENED), indent=1) in small


# -- deciding in two steps: prepared in a snapshot, written in a short transaction --


def prepared(hub: Hub) -> deque[matcher.Prepared]:
    with hub.store.transaction(readonly=True) as session:
        return deque(matcher.prepare(session))


def decide_prepared(
    hub: Hub, ready: deque[matcher.Prepared], enough: Callable[[], bool] = lambda: False
) -> tuple[int, int]:
    with hub.store.transaction() as session:
        return matcher.decide_prepared(
            session, ready, now=hub.clock(), settings=hub.settings, enough=enough
        )


def test_a_delivery_another_matcher_decided_meanwhile_is_left_alone(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    delivery = hub.accepted("pull_request", raw(OPENED))
    ready = prepared(hub)
    assert hub.decide() == 1  # the other matcher
    assert decide_prepared(hub, ready) == (0, 0)
    assert not ready
    assert [d["outcome"] for d in hub.delivery(delivery)["decisions"]] == ["fired"]
    assert len(hub.runs()) == 1


def test_a_routine_removed_after_its_delivery_was_prepared_is_decided_anew(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    skipping = (
        "  - name: zz-releases\n"
        "    prompt: Write the notes.\n"
        "    repositories:\n"
        f"      - url: {origin}\n"
        "    triggers:\n"
        f"      - {{type: github, repository: {REPOSITORY}, events: [release]}}\n"
    )
    apply(hub.store, write_routines(tmp_path, origin, more=skipping))
    delivery = hub.accepted("pull_request", raw(OPENED))
    ready = prepared(hub)
    assert {listener.routine_name for listener in ready[0].listening} == {
        "pr-review",
        "zz-releases",
    }
    with hub.store.transaction() as session:
        session.delete(session.scalars(select(Routine).where(Routine.name == "zz-releases")).one())
    assert decide_prepared(hub, ready) == (1, 1)
    found = hub.delivery(delivery)
    # Its skip could no longer be written: decided again against the routines left.
    assert [(d["routine"], d["outcome"]) for d in found["decisions"]] == [("pr-review", "fired")]
    assert not found["outcome"].startswith("not decided")


def test_a_trigger_that_may_fire_is_decided_as_it_is_when_written(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    delivery = hub.accepted("pull_request", raw(OPENED))
    ready = prepared(hub)
    assert not ready[0].skipped  # it matched when prepared
    cli(hub, "pause", "pr-review")  # it checks its exit code
    assert decide_prepared(hub, ready) == (1, 0)
    decision = hub.decision(delivery)
    assert decision["outcome"] == "skipped"
    assert decision["reason"].endswith("the routine is paused")


def test_the_matcher_gives_the_store_back_when_its_budget_is_spent(
    make_hub: Callable[..., Hub], tmp_path: Path, origin: Path
) -> None:
    hub = make_hub()
    apply(hub.store, write_routines(tmp_path, origin))
    first = hub.accepted("pull_request", raw(OPENED))
    second = hub.accepted("pull_request", pull_request(3))
    ready = prepared(hub)
    assert decide_prepared(hub, ready, enough=lambda: True) == (1, 1)
    # The rest waits, prepared, for the next transaction, in order.
    assert [one.delivery.id for one in ready] == [second]
    assert hub.delivery(first)["processed_at"] is not None
    assert hub.delivery(second)["processed_at"] is None
    assert decide_prepared(hub, ready) == (1, 1)
    assert not ready
