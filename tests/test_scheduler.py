"""The scheduler against real stores: due slots become runs once, with every decision kept.

The clock is passed in, so each case states the instants it decides at.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from routined import fires, runs
from routined.config import Settings
from routined.db import Store
from routined.fires import Outcome
from routined.models import Fire, Routine, Run, RunEvent, Trigger
from routined.routines.apply import apply as apply_routines
from routined.routines.load import load
from routined.routines.spec import SpecError
from routined.schedules.scheduler import decide_due
from tests.conftest import T0

# T0 is 2026-11-28 12:00Z, a Saturday.
HOUR = timedelta(hours=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def apply(
    store: Store,
    tmp_path: Path,
    origin: Path,
    trigger: str,
    *,
    now: datetime = T0,
    policy: str = "",
    name: str = "nightly",
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "routines:\n"
        f"  - name: {name}\n"
        "    prompt: Tidy up.\n"
        f"    repositories: [{{url: {origin}}}]\n"
        f"    triggers: [{trigger}]\n"
        + "".join(f"    {line}\n" for line in policy.split(";") if line)
    )
    spec = load(path, now=now)
    with store.transaction() as session:
        apply_routines(session, spec, now=now)


def decide(store: Store, settings: Settings, now: datetime) -> int:
    with store.transaction() as session:
        return decide_due(session, now=now, settings=settings)[1]


def decisions(store: Store) -> list[tuple[str | None, str, str]]:
    """(instant, outcome, reason) of every schedule decision, oldest instant first."""
    with store.transaction() as session:
        return [
            (f.scheduled_at.strftime("%d %H:%M") if f.scheduled_at else None, f.outcome, f.reason)
            for f in session.scalars(
                select(Fire).where(Fire.trigger_type == "schedule").order_by(Fire.scheduled_at)
            )
        ]


def schedule_trigger(store: Store) -> Trigger:
    with store.transaction() as session:
        trigger = session.scalar(select(Trigger).where(Trigger.type == "schedule"))
        assert trigger is not None
        return trigger


def all_runs(store: Store) -> list[Run]:
    with store.transaction() as session:
        return list(session.scalars(select(Run).order_by(Run.created_at, Run.id)))


def test_a_slot_fires_once_at_its_instant_and_the_cursor_moves_on(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: daily at 09:00, timezone: Europe/Berlin}",
    )
    assert schedule_trigger(store).next_at == at("2026-11-29T08:00:00Z")  # 09:00 CET

    assert decide(store, settings, at("2026-11-29T07:59:59Z")) == 0
    assert decide(store, settings, at("2026-11-29T08:00:00.200Z")) == 1
    assert decide(store, settings, at("2026-11-29T08:00:01Z")) == 0  # decided already

    [run] = all_runs(store)
    assert (run.trigger_type, run.status, run.serial) == ("schedule", "queued", True)
    [(instant, outcome, reason)] = decisions(store)
    assert (instant, outcome) == ("29 08:00", "fired")
    assert "2026-11-29 09:00 Europe/Berlin" in reason
    with store.transaction() as session:
        assert session.scalar(select(Fire.run_id)) == run.id
        queued = session.scalar(select(RunEvent.reason).where(RunEvent.run_id == run.id))
    assert queued is not None and queued.startswith("fired: scheduled for")
    assert schedule_trigger(store).next_at == at("2026-11-30T08:00:00Z")


@pytest.mark.parametrize(
    ("catch_up", "expected_runs", "expected"),
    [
        # Down from 12:30 to 17:30: the 13:00 … 17:00 slots were missed.
        ("latest", 1, ["missed", "missed", "missed", "missed", "caught_up"]),
        ("skip", 0, ["missed"] * 5),
        ("all", 5, ["caught_up"] * 5),
    ],
)
def test_after_downtime_catch_up_decides_what_the_missed_slots_do(
    store: Store,
    settings: Settings,
    tmp_path: Path,
    origin: Path,
    catch_up: str,
    expected_runs: int,
    expected: list[str],
) -> None:
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: hourly}",
        policy=f"catch_up: {catch_up}",
    )
    assert decide(store, settings, at("2026-11-28T17:30:00Z")) == expected_runs
    found = decisions(store)
    assert [instant for instant, _, _ in found] == [
        "28 13:00",
        "28 14:00",
        "28 15:00",
        "28 16:00",
        "28 17:00",
    ]
    assert [outcome for _, outcome, _ in found] == expected
    assert all("while routined was not running" in reason for _, _, reason in found)
    assert len(all_runs(store)) == expected_runs
    assert schedule_trigger(store).next_at == at("2026-11-28T18:00:00Z")


def test_catch_up_latest_names_the_slot_it_fired_instead(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}")
    decide(store, settings, at("2026-11-28T15:10:00Z"))
    missed = [reason for _, outcome, reason in decisions(store) if outcome == "missed"]
    assert missed and all("most recent slot (2026-11-28 15:00 UTC" in r for r in missed)


def test_slots_older_than_the_window_are_summarised_not_fired(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(
        store, tmp_path, origin, "{type: schedule, schedule: hourly}",
        policy="catch_up: all;catch_up_window: 2h",
    )  # fmt: skip
    # Thirty days down: 720 hourly slots, of which the last two hours' are in the window.
    assert decide(store, settings, at("2026-12-28T12:30:00Z")) == 2
    found = decisions(store)
    summary, *recent = found
    assert summary[1] == "missed" and summary[2].startswith("718 slots from 2026-11-28 13:00Z")
    assert "catch_up_window (2 hours)" in summary[2]
    assert [(i, o) for i, o, _ in recent] == [("28 11:00", "caught_up"), ("28 12:00", "caught_up")]


def test_a_paused_routine_skips_its_slots_and_resumes_without_catching_up(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}")
    with store.transaction() as session:
        routine = session.scalar(select(Routine))
        assert routine is not None
        routine.paused_at = T0
    assert decide(store, settings, at("2026-11-28T13:00:01Z")) == 0
    with store.transaction() as session:
        routine = session.scalar(select(Routine))
        assert routine is not None
        routine.paused_at = None
    assert decide(store, settings, at("2026-11-28T14:00:01Z")) == 1
    assert [(i, o) for i, o, _ in decisions(store)] == [
        ("28 13:00", "skipped"),
        ("28 14:00", "fired"),
    ]
    assert "paused" in decisions(store)[0][2]


def test_a_once_trigger_fires_once_then_shows_as_done(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    trigger = "{type: schedule, once: '2026-12-01T09:00', timezone: Asia/Kolkata}"
    apply(store, tmp_path, origin, trigger)
    assert schedule_trigger(store).next_at == at("2026-12-01T03:30:00Z")
    assert decide(store, settings, at("2026-12-01T03:30:00Z")) == 1
    assert decide(store, settings, at("2026-12-02T03:30:00Z")) == 0
    done = schedule_trigger(store)
    assert (done.next_at, done.due_at) == (None, None)
    # Applying the same file again the next day keeps it done instead of refusing a past time.
    apply(store, tmp_path, origin, trigger, now=at("2026-12-02T00:00:00Z"))
    assert schedule_trigger(store).next_at is None
    assert [(i, o) for i, o, _ in decisions(store)] == [("01 03:30", "fired")]


def test_a_once_in_the_past_is_refused_at_apply(store: Store, tmp_path: Path, origin: Path) -> None:
    with pytest.raises(
        SpecError, match=r"triggers\[0\].*'once 2026-11-01T09:00' \(UTC\) is in the past"
    ):
        apply(store, tmp_path, origin, "{type: schedule, once: '2026-11-01T09:00'}")
    with store.transaction() as session:
        assert session.scalar(select(Routine)) is None  # nothing half-applied


def test_overlap_skip_records_the_run_still_in_flight(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}")
    assert decide(store, settings, at("2026-11-28T13:00:00Z")) == 1
    [first] = all_runs(store)
    assert decide(store, settings, at("2026-11-28T14:00:00Z")) == 0
    _, outcome, reason = decisions(store)[-1]
    assert outcome == "skipped" and f"run {first.id} is still queued (overlap: skip)" in reason


def test_overlap_queue_one_waits_for_the_active_run_and_merges_the_rest(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(
        store, tmp_path, origin, "{type: schedule, schedule: hourly}", policy="overlap: queue_one"
    )
    decide(store, settings, at("2026-11-28T13:00:00Z"))
    with store.transaction() as session:
        first = runs.claim(session, "worker-a", now=at("2026-11-28T13:00:01Z"))
    assert first is not None
    assert decide(store, settings, at("2026-11-28T14:00:00Z")) == 1
    assert decide(store, settings, at("2026-11-28T15:00:00Z")) == 0
    assert [o for _, o, _ in decisions(store)] == ["fired", "fired", "coalesced"]
    waiting = all_runs(store)[-1]
    assert waiting.serial and waiting.status == "queued"
    # The waiting run is not taken while the first is active, and is once it ends.
    with store.transaction() as session:
        assert runs.claim(session, "worker-b", now=at("2026-11-28T15:00:01Z")) is None
        runs.fail(session, first, now=at("2026-11-28T15:00:02Z"), error="test: ended")
        taken = runs.claim(session, "worker-b", now=at("2026-11-28T15:00:03Z"))
    assert taken is not None and taken.run_id == waiting.id


def test_overlap_cancel_previous_cancels_queued_and_asks_active_runs_to_stop(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: hourly}",
        policy="overlap: cancel_previous",
    )
    decide(store, settings, at("2026-11-28T13:00:00Z"))
    with store.transaction() as session:
        active = runs.claim(session, "worker-a", now=at("2026-11-28T13:00:01Z"))
    assert active is not None
    decide(store, settings, at("2026-11-28T14:00:00Z"))
    decide(store, settings, at("2026-11-28T15:00:00Z"))
    first, second, third = all_runs(store)
    assert (first.status, second.status, third.status) == ("preparing", "cancelled", "queued")
    reasons = [reason for _, _, reason in decisions(store)]
    assert f"asked run {first.id} to stop" in reasons[1]
    assert f"cancelled run {second.id}" in reasons[2] and f"asked run {first.id}" not in reasons[2]
    assert first.cancel_requested_at == at("2026-11-28T14:00:00Z")
    with store.transaction() as session:
        asked = runs.cancel_requests(session, [active])
        assert asked == {first.id: "superseded by a newer scheduled fire"}
        assert runs.end_cancelled(
            session, active, now=at("2026-11-28T15:00:05Z"), reason="superseded"
        )
    assert all_runs(store)[0].status == "cancelled"


def test_stagger_delays_the_decision_but_keeps_the_instant(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}", policy="stagger: 10m")
    trigger = schedule_trigger(store)
    assert trigger.next_at == at("2026-11-28T13:00:00Z") and trigger.due_at is not None
    offset = trigger.due_at - trigger.next_at
    assert timedelta(0) <= offset < timedelta(minutes=10)
    assert decide(store, settings, trigger.due_at - timedelta(seconds=1)) == 0
    assert decide(store, settings, trigger.due_at) == 1
    assert decisions(store)[0][:2] == ("28 13:00", "fired")
    # Changing the stagger keeps the instant and moves only the decision.
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}", policy="stagger: 0")
    moved = schedule_trigger(store)
    assert (moved.next_at, moved.due_at) == (at("2026-11-28T14:00:00Z"), at("2026-11-28T14:00:00Z"))


def test_a_changed_schedule_is_armed_again_and_an_unchanged_one_keeps_its_place(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: daily at 09:00}")
    first = schedule_trigger(store)
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: daily at 09:00}",
        now=at("2026-11-28T20:00:00Z"),
    )
    assert schedule_trigger(store).next_at == first.next_at == at("2026-11-29T09:00:00Z")
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: daily at 10:00}",
        now=at("2026-11-28T20:00:00Z"),
    )
    changed = schedule_trigger(store)
    assert changed.id == first.id and changed.next_at == at("2026-11-29T10:00:00Z")


def test_a_slot_is_recorded_once_whoever_records_it(
    store: Store, tmp_path: Path, origin: Path
) -> None:
    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}")
    trigger = schedule_trigger(store)
    slot = at("2026-11-28T13:00:00Z")
    recorded = []
    for _ in range(2):
        with store.transaction() as session:
            recorded.append(
                fires.record(
                    session,
                    routine_id=trigger.routine_id,
                    trigger_id=trigger.id,
                    trigger_type="schedule",
                    outcome=Outcome.FIRED,
                    reason="test",
                    now=slot,
                    scheduled_at=slot,
                )
            )
    assert recorded[0] is not None and recorded[1] is None


def test_resuming_after_downtime_fires_nothing_that_fell_due_while_paused(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    from routined.schedules.scheduler import resume

    apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}")
    routine_id = schedule_trigger(store).routine_id
    with store.transaction() as session:
        session.get_one(Routine, routine_id).paused_at = T0
    # Paused, then down from 12:00 to 15:30, then resumed before any scheduler ran.
    with store.transaction() as session:
        routine = session.get_one(Routine, routine_id)
        resume(session, routine, now=at("2026-11-28T15:30:00Z"), settings=settings)
    assert decide(store, settings, at("2026-11-28T15:30:01Z")) == 0
    assert [(i, o) for i, o, _ in decisions(store)] == [
        ("28 13:00", "skipped"), ("28 14:00", "skipped"), ("28 15:00", "skipped"),
    ]  # fmt: skip
    assert decide(store, settings, at("2026-11-28T16:00:00Z")) == 1


def test_reordering_triggers_keeps_each_one_and_a_once_that_ran_stays_done(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    once = "{type: schedule, once: '2026-12-01T09:00'}"
    daily = "{type: schedule, schedule: daily at 07:00}"
    apply(store, tmp_path, origin, once)
    ran = schedule_trigger(store).id
    assert decide(store, settings, at("2026-12-01T09:00:00Z")) == 1
    # A day later a trigger is added above it: the once keeps its id and stays done.
    apply(store, tmp_path, origin, f"{daily}, {once}", now=at("2026-12-02T00:00:00Z"))
    with store.transaction() as session:
        triggers = {t.config["spec"]: t for t in session.scalars(select(Trigger))}
    assert triggers["once 2026-12-01T09:00"].id == ran
    assert triggers["once 2026-12-01T09:00"].next_at is None
    assert triggers["daily at 07:00"].next_at == at("2026-12-02T07:00:00Z")


def test_catch_up_latest_fires_the_newest_slot_however_many_were_missed(
    store: Store, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    apply(
        store, tmp_path, origin, "{type: schedule, schedule: hourly}", policy="catch_up_window: 60d"
    )
    # Down 59 days: 1,416 hourly slots in the window, more than are decided one by one.
    assert decide(store, settings, at("2027-01-26T12:30:00Z")) == 1
    found = decisions(store)
    caught_up = [(i, o) for i, o, _ in found if o == "caught_up"]
    assert caught_up == [("26 12:00", "caught_up")]
    assert found[0][2].startswith("416 slots from 2026-11-28 13:00Z")
    assert "only the latest 1000 slots are decided one by one" in found[0][2]
    assert len(found) == 1001


def test_on_postgresql_two_claims_never_start_two_serial_runs_of_one_routine(
    postgres_url: str, settings: Settings, tmp_path: Path, origin: Path
) -> None:
    store = Store(postgres_url)
    store.migrate()
    try:
        apply(store, tmp_path, origin, "{type: schedule, schedule: hourly}", policy="catch_up: all")
        assert decide(store, settings, at("2026-11-28T15:00:01Z")) == 3  # three serial runs
        with store.transaction() as first:
            taken = runs.claim(first, "worker-a", now=at("2026-11-28T15:00:02Z"))
            assert taken is not None
            # Another worker, while the first claim is not committed yet.
            with store.transaction() as second:
                assert runs.claim(second, "worker-b", now=at("2026-11-28T15:00:02Z")) is None
        with store.transaction() as second:
            assert runs.claim(second, "worker-b", now=at("2026-11-28T15:00:03Z")) is None
        assert [r.status for r in all_runs(store)] == ["preparing", "queued", "queued"]
    finally:
        store.dispose()


def test_on_sqlite_a_transaction_that_read_first_can_still_write(sqlite_store: Store) -> None:
    """A write committed by another connection between this transaction's read and its
    write would make SQLite refuse the write at once; transactions take the lock first,
    so no other writer can get in between, and a read-only one takes none."""
    import sqlite3

    from routined.ids import new_id

    database = sqlite_store.url.database
    assert database is not None
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        with sqlite_store.transaction() as session:
            assert session.scalar(select(Routine)) is None
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # another writer cannot start now
            session.add(
                Routine(id=new_id("rtn"), name="mine", prompt="p", created_at=T0, updated_at=T0)
            )
        with sqlite_store.transaction(readonly=True) as session:
            other.execute("BEGIN IMMEDIATE")  # …while a read-only transaction is open
            other.execute("ROLLBACK")
            assert list(session.scalars(select(Routine.name))) == ["mine"]
    finally:
        other.close()


def test_a_scheduled_fire_over_the_daily_limit_waits_for_the_next_day(
    store: Store, tmp_path: Path, origin: Path, settings: Settings
) -> None:
    from dataclasses import replace

    from routined.models import Account

    limited = replace(settings, plans="tiny:1,unlimited:none")
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: daily at 21:00}",
        policy="catch_up: skip;overlap: allow",
    )
    with store.transaction() as session:
        session.get_one(Account, "acct_default").plan = "tiny"
        routine = session.scalar(select(Routine))
        assert routine is not None
        runs.create(
            session,
            routine,
            trigger_type="manual",
            trigger_id=None,
            text=None,
            now=at("2026-11-28T12:30:00Z"),
            reason="test",
        )

    with store.transaction() as session:
        assert decide_due(session, now=at("2026-11-28T21:00:00Z"), settings=limited) == (1, 0)
    waiting = schedule_trigger(store)
    # Held at its instant until the (UTC) day resets; catch_up: skip does not drop it then.
    assert (waiting.next_at, waiting.due_at) == (
        at("2026-11-28T21:00:00Z"),
        at("2026-11-29T00:00:00Z"),
    )
    [(instant, outcome, reason)] = decisions(store)
    assert (instant, outcome) == (
        "28 21:00",
        "waiting",
    ) and "plan tiny's limit of 1 a day" in reason
    assert decide(store, limited, at("2026-11-28T23:59:59Z")) == 0

    assert decide(store, limited, at("2026-11-29T00:00:00Z")) == 1
    [(instant, outcome, reason)] = decisions(store)
    assert (instant, outcome) == ("28 21:00", "fired")
    assert reason.startswith("waited for the daily limit") and "; then scheduled for" in reason
    assert schedule_trigger(store).next_at == at("2026-11-29T21:00:00Z")
    # The new day's limit is used by it: the next slot waits again.
    assert decide(store, limited, at("2026-11-29T21:00:00Z")) == 0
    assert decisions(store)[-1][:2] == ("29 21:00", "waiting")


def test_a_waiting_slot_fires_at_the_reset_even_past_the_catch_up_window(
    store: Store, tmp_path: Path, origin: Path, settings: Settings
) -> None:
    from dataclasses import replace

    from routined.models import Account

    limited = replace(settings, plans="tiny:0,unlimited:none")
    apply(
        store,
        tmp_path,
        origin,
        "{type: schedule, schedule: daily at 21:00}",
        policy="catch_up_window: 1h",
    )
    with store.transaction() as session:
        session.get_one(Account, "acct_default").plan = "tiny"
    assert decide(store, limited, at("2026-11-28T21:00:00Z")) == 0
    with store.transaction() as session:
        session.get_one(Account, "acct_default").plan = "unlimited"
    assert decide(store, limited, at("2026-11-29T00:00:00Z")) == 1
    assert [(i, o) for i, o, _ in decisions(store)] == [("28 21:00", "fired")]
