"""Admission: every rule through every door that starts runs, on real stores.

Each case sets one rule up, then fires the routine `rt` once through one kind of
trigger, by its real entry point: the fire endpoint (TestClient), the scheduler's
decision step with the clock at the slot, the GitHub receiver and matcher with a
payload GitHub sends, and `operations.runs.fire_by_hand` (what `routined fire`
calls). What it recorded (the `fires` row, the answer, the run) is compared with the
table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import runs, trigger_tokens
from routined.api_keys import Principal
from routined.db import Store
from routined.errors import Refused
from routined.http.problem import problem_of
from routined.models import Account, Fire, Routine, Run, Trigger
from routined.operations.access import perform
from routined.operations.accounts import create_account, update_account
from routined.operations.runs import fire_by_hand
from routined.routines.apply import apply
from routined.routines.load import load
from routined.schedules.scheduler import decide_due
from tests.conftest import T0
from tests.github_support import Clock, Hub, HubFactory, raw
from tests.test_api import HEADERS

# 2026-11-29 09:00Z: the slot of `rt`'s schedule, and when every kind fires.
NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
OPENED = "pull_request/opened.payload.json"  # on Codertocat/Hello-World, with the app installed

ROUTINES = """\
routines:
  - name: rt
    account: acme
    prompt: Go.
    repositories: [{{url: {origin}}}]
    triggers:
      - {{type: api}}
      - {{type: schedule, schedule: daily at 09:00, timezone: UTC}}
      - {{type: github, repository: Codertocat/Hello-World, events: [pull_request.opened]}}
  - name: sibling
    account: acme
    prompt: Go.
    repositories: [{{url: {origin}}}]
    triggers: [{{type: api}}]
  - name: elsewhere
    prompt: Go.
    repositories: [{{url: {origin}}}]
    triggers: [{{type: api}}]
"""


def _routine(session: Session, name: str) -> Routine:
    found = session.scalar(select(Routine).where(Routine.name == name))
    assert found is not None
    return found


def _acme(session: Session) -> Account:
    found = session.scalar(select(Account).where(Account.name == "acme"))
    assert found is not None
    return found


def _run(
    session: Session, routine: str, kind: str, *, at: datetime = NOW, status: str = "succeeded"
) -> None:
    """A run `routine` started through `kind` at `at`, now `status`."""
    made = runs.create(
        session,
        _routine(session, routine),
        trigger_type=kind,
        trigger_id=None,
        text=None,
        now=at,
        reason="made by the test",
    )
    made.status = status


def _nothing(session: Session) -> None:
    pass


def _disabled(session: Session) -> None:
    _acme(session).disabled_at = NOW - timedelta(hours=1)


def _paused(session: Session) -> None:
    _routine(session, "rt").paused_at = NOW - timedelta(hours=1)


def _disabled_and_paused(session: Session) -> None:
    _disabled(session)
    _paused(session)


def _queue_full(session: Session) -> None:  # with ROUTINED_MAX_QUEUED_RUNS=1
    _run(session, "elsewhere", "api", at=NOW - timedelta(hours=2), status="queued")


def _plan_used(session: Session) -> None:  # plan tiny: one run a day
    _acme(session).plan = "tiny"
    _run(session, "sibling", "schedule", at=NOW - timedelta(hours=2))


def _plan_used_extra_usage(session: Session) -> None:
    _plan_used(session)
    _acme(session).extra_usage = True


def _in_flight(session: Session) -> None:
    _run(session, "rt", "api", at=NOW - timedelta(hours=2), status="queued")


@dataclass(frozen=True)
class Rule:
    setup: Callable[[Session], None]
    env: dict[str, str] = field(default_factory=dict)


RULES = {
    "nothing refuses": Rule(_nothing),
    "account disabled": Rule(_disabled),
    # The account is asked first: what to do about it is the first thing to say.
    "account disabled, routine paused": Rule(_disabled_and_paused),
    "routine paused": Rule(_paused),
    "queue full": Rule(_queue_full, {"ROUTINED_MAX_QUEUED_RUNS": "1"}),
    "plan's runs a day used": Rule(_plan_used),
    "plan's runs a day used, extra usage on": Rule(_plan_used_extra_usage),
    "routine hourly cap": Rule(
        lambda s: _run(s, "rt", "manual"), {"ROUTINED_ROUTINE_HOURLY_CAP": "1"}
    ),
    "account API hourly cap": Rule(
        lambda s: _run(s, "sibling", "api"), {"ROUTINED_ACCOUNT_API_HOURLY_CAP": "1"}
    ),
    "GitHub routine hourly cap": Rule(
        lambda s: _run(s, "rt", "github"), {"ROUTINED_GITHUB_ROUTINE_HOURLY_CAP": "1"}
    ),
    "GitHub account hourly cap": Rule(
        lambda s: _run(s, "sibling", "github"), {"ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP": "1"}
    ),
    "a run of the routine in flight": Rule(_in_flight),
}

DISABLED = "account acme is disabled; its routines cannot be fired until it is enabled"
FIRED = {
    "api": "fired over the API",
    "schedule": "scheduled for 2026-11-29 09:00 UTC",
    "github": "fired run run_",
    "manual": "fired by hand",
}
DAILY = "account acme has started 1 runs today, plan tiny's limit of 1 a day"
EXTRA = "extra usage is on"

# rule, kind → outcome recorded, status answered (the fire endpoint's HTTP status; a
# fire by hand's refusal as the API answers it, None when it started), what the reason
# says.
TABLE: list[tuple[str, str, str, int | None, str]] = [
    ("nothing refuses", "api", "fired", 200, FIRED["api"]),
    ("nothing refuses", "schedule", "fired", None, FIRED["schedule"]),
    ("nothing refuses", "github", "fired", None, FIRED["github"]),
    ("nothing refuses", "manual", "fired", None, FIRED["manual"]),
    # A disabled account's routines start nothing, whatever the trigger.
    ("account disabled", "api", "refused", 403, f"403: {DISABLED}"),
    ("account disabled", "schedule", "skipped", None, f"not started: {DISABLED}"),
    ("account disabled", "github", "skipped", None, DISABLED),
    ("account disabled", "manual", "refused", 403, f"was refused: {DISABLED}"),
    ("account disabled, routine paused", "api", "refused", 403, DISABLED),
    ("account disabled, routine paused", "schedule", "skipped", None, DISABLED),
    ("account disabled, routine paused", "github", "skipped", None, DISABLED),
    ("account disabled, routine paused", "manual", "refused", 403, DISABLED),
    # Pausing stops a routine's triggers, not a person's "run now".
    ("routine paused", "api", "refused", 400, "400: routine rt is paused; resume it"),
    ("routine paused", "schedule", "skipped", None, "while the routine was paused"),
    ("routine paused", "github", "skipped", None, "; the routine is paused"),
    ("routine paused", "manual", "fired", None, "the routine is paused, which stops only"),
    # The queue's depth bounds API fires only: a caller that can try again.
    ("queue full", "api", "refused", 503, "503: the server's run queue is full"),
    ("queue full", "schedule", "fired", None, FIRED["schedule"]),
    ("queue full", "github", "fired", None, FIRED["github"]),
    ("queue full", "manual", "fired", None, FIRED["manual"]),
    # The plan's daily limit: refused, or waiting (a slot), or dropped (an event).
    ("plan's runs a day used", "api", "refused", 429, f"429: {DAILY}"),
    ("plan's runs a day used", "schedule", "waiting", None, f"waited for the daily limit: {DAILY}"),
    ("plan's runs a day used", "github", "dropped", None, f"dropped: {DAILY}"),
    ("plan's runs a day used", "manual", "refused", 429, f"was refused: {DAILY}"),
    ("plan's runs a day used, extra usage on", "api", "fired", 200, EXTRA),
    ("plan's runs a day used, extra usage on", "schedule", "fired", None, EXTRA),
    ("plan's runs a day used, extra usage on", "github", "fired", None, FIRED["github"]),
    ("plan's runs a day used, extra usage on", "manual", "fired", None, EXTRA),
    # The hourly caps: by hand and over the API per routine, over the API per account.
    ("routine hourly cap", "api", "refused", 429, "(ROUTINED_ROUTINE_HOURLY_CAP)"),
    ("routine hourly cap", "schedule", "fired", None, FIRED["schedule"]),
    ("routine hourly cap", "github", "fired", None, FIRED["github"]),
    ("routine hourly cap", "manual", "refused", 429, "(ROUTINED_ROUTINE_HOURLY_CAP)"),
    ("account API hourly cap", "api", "refused", 429, "(ROUTINED_ACCOUNT_API_HOURLY_CAP)"),
    ("account API hourly cap", "schedule", "fired", None, FIRED["schedule"]),
    ("account API hourly cap", "github", "fired", None, FIRED["github"]),
    ("account API hourly cap", "manual", "fired", None, FIRED["manual"]),
    # GitHub's own hourly caps drop events; nothing else counts them.
    ("GitHub routine hourly cap", "api", "fired", 200, FIRED["api"]),
    ("GitHub routine hourly cap", "schedule", "fired", None, FIRED["schedule"]),
    (
        "GitHub routine hourly cap",
        "github",
        "dropped",
        None,
        "dropped: cap: rt started 1 runs from GitHub events this hour",
    ),
    ("GitHub routine hourly cap", "manual", "fired", None, FIRED["manual"]),
    ("GitHub account hourly cap", "api", "fired", 200, FIRED["api"]),
    ("GitHub account hourly cap", "schedule", "fired", None, FIRED["schedule"]),
    (
        "GitHub account hourly cap",
        "github",
        "dropped",
        None,
        "dropped: cap: its account started 1 runs from GitHub events this hour",
    ),
    ("GitHub account hourly cap", "manual", "fired", None, FIRED["manual"]),
    # Overlap is a schedule's policy (a GitHub trigger's, with a concurrency key).
    ("a run of the routine in flight", "api", "fired", 200, FIRED["api"]),
    ("a run of the routine in flight", "schedule", "skipped", None, "(overlap: skip)"),
    ("a run of the routine in flight", "github", "fired", None, FIRED["github"]),
    ("a run of the routine in flight", "manual", "fired", None, FIRED["manual"]),
]
KINDS = ("api", "schedule", "github", "manual")


def test_the_table_has_every_rule_for_every_kind() -> None:
    assert sorted((rule, kind) for rule, kind, *_ in TABLE) == sorted(
        (rule, kind) for rule in RULES for kind in KINDS
    )


@dataclass
class Door:
    """The routines above on a store, with the server's app and matcher at NOW."""

    hub: Hub
    token: str
    api_trigger: str

    @property
    def store(self) -> Store:
        return self.hub.store

    def fire(self, kind: str) -> int | None:
        """Fire `rt` through `kind`; the status answered (see TABLE)."""
        if kind == "api":
            response = self.hub.client.post(
                f"/v1/claude_code/routines/{self.api_trigger}/fire",
                headers={**HEADERS, "authorization": f"Bearer {self.token}"},
            )
            assert response.headers["content-type"] == "application/json"
            return response.status_code
        if kind == "schedule":
            with self.store.transaction() as session:
                decide_due(session, now=NOW, settings=self.hub.settings)
            return None
        if kind == "github":
            self.hub.accepted("pull_request", raw(OPENED))
            self.hub.decide()
            return None
        try:
            perform(
                self.store,
                lambda session: fire_by_hand(
                    session,
                    Principal.local(),
                    "rt",
                    text=None,
                    by="the test",
                    settings=self.hub.settings,
                    now=NOW,
                ),
            )
        except Refused as refused:
            return problem_of(refused).status
        return None

    def decisions(self, kind: str) -> list[Fire]:
        with self.store.transaction() as session:
            rt = _routine(session, "rt").id
            return list(
                session.scalars(
                    select(Fire).where(Fire.routine_id == rt, Fire.trigger_type == kind)
                )
            )

    def runs(self, kind: str) -> set[str]:
        """Ids of the runs of `rt` started through `kind`."""
        with self.store.transaction() as session:
            return set(
                session.scalars(
                    select(Run.id).where(
                        Run.routine_id == _routine(session, "rt").id, Run.trigger_type == kind
                    )
                )
            )


@pytest.fixture
def door(store: Store, tmp_path: Path, origin: Path) -> Iterator[Callable[[Rule], Door]]:
    factory = HubFactory(store, tmp_path)

    def make(rule: Rule) -> Door:
        hub = factory(Clock(NOW), ROUTINED_PLANS="tiny:1,unlimited:none", **rule.env)
        with store.transaction() as session:
            create_account(
                session,
                Principal.local(),
                name="acme",
                plan="unlimited",
                settings=hub.settings,
                now=T0,
            )
        path = tmp_path / "routines.yaml"
        path.write_text(ROUTINES.format(origin=origin))
        with store.transaction() as session:
            apply(session, load(path, now=T0), now=T0)
        with store.transaction() as session:
            api_trigger = session.scalars(
                select(Trigger.id).where(
                    Trigger.routine_id == _routine(session, "rt").id, Trigger.type == "api"
                )
            ).one()
            token = trigger_tokens.issue(session, api_trigger, now=T0)
            rule.setup(session)
        return Door(hub, token, api_trigger)

    try:
        yield make
    finally:
        factory.close()


@pytest.mark.parametrize(
    ("rule", "kind", "outcome", "status", "says"),
    TABLE,
    ids=[f"{rule}-{kind}" for rule, kind, *_ in TABLE],
)
def test_every_rule_through_every_kind_of_trigger(
    door: Callable[[Rule], Door], rule: str, kind: str, outcome: str, status: int | None, says: str
) -> None:
    opened = door(RULES[rule])
    before = opened.runs(kind)
    assert opened.fire(kind) == status
    [decision] = opened.decisions(kind)
    assert (decision.outcome, says in decision.reason) == (outcome, True), decision.reason
    started = opened.runs(kind) - before
    assert started == ({decision.run_id} if outcome == "fired" else set())


def test_a_disabled_accounts_slot_is_not_caught_up_when_it_is_enabled_again(
    door: Callable[[Rule], Door],
) -> None:
    opened = door(RULES["account disabled"])
    opened.fire("schedule")
    with opened.store.transaction() as session:
        _acme(session).disabled_at = None
        schedule = session.scalars(select(Trigger).where(Trigger.type == "schedule")).one()
        assert schedule.next_at == NOW + timedelta(days=1)
    with opened.store.transaction() as session:
        assert decide_due(
            session, now=NOW + timedelta(minutes=5), settings=opened.hub.settings
        ) == (
            0,
            0,
        )
        assert decide_due(session, now=NOW + timedelta(days=1), settings=opened.hub.settings) == (
            1,
            1,
        )
    assert [d.outcome for d in opened.decisions("schedule")] == ["skipped", "fired"]


def test_a_slot_waiting_for_the_daily_limit_is_skipped_if_the_account_is_disabled_meanwhile(
    door: Callable[[Rule], Door],
) -> None:
    opened = door(RULES["plan's runs a day used"])
    opened.fire("schedule")
    with opened.store.transaction() as session:
        _disabled(session)
    tomorrow = NOW.replace(hour=0) + timedelta(days=1)
    with opened.store.transaction() as session:
        assert decide_due(session, now=tomorrow, settings=opened.hub.settings) == (1, 0)
    [decision] = opened.decisions("schedule")
    assert decision.outcome == "skipped"
    assert decision.reason.startswith(f"waited for the daily limit: {DAILY}")
    assert f"; then due at 2026-11-29 09:00 UTC (09:00Z); not started: {DISABLED}" in (
        decision.reason
    )


def test_slots_missed_while_down_and_disabled_are_not_caught_up_when_it_is_enabled(
    door: Callable[[Rule], Door],
) -> None:
    # routined was down at the slot; the account is enabled an hour later, before the
    # scheduler looks again: catch_up (latest) would fire the slot late, but it fell
    # due while the account was disabled.
    opened = door(RULES["account disabled"])
    later = NOW + timedelta(hours=1)
    with opened.store.transaction() as session:
        update_account(
            session,
            Principal.local(),
            "acme",
            disabled=False,
            settings=opened.hub.settings,
            now=later,
        )
    with opened.store.transaction() as session:
        assert decide_due(session, now=later, settings=opened.hub.settings) == (0, 0)
    [decision] = opened.decisions("schedule")
    assert (decision.outcome, decision.scheduled_at) == ("skipped", NOW)
    assert f"not started: {DISABLED}" in decision.reason
    assert opened.runs("schedule") == set()
