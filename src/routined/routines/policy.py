"""What a routine does with fires that come late or together (catch-up and overlap),
apart from the spec so that deciding fires does not load the spec's validators."""

from __future__ import annotations

import enum


class CatchUp(enum.StrEnum):
    """What a schedule fires for the slots it missed while routined was down."""

    LATEST = "latest"  # after downtime, fire the most recent missed slot once
    SKIP = "skip"  # after downtime, fire nothing missed
    ALL = "all"  # after downtime, fire every missed slot within the window


class Overlap(enum.StrEnum):
    """What a fire does while another run of the routine (or of its concurrency key) is
    queued or in flight."""

    SKIP = "skip"  # do not start while a run of the routine is queued or active
    QUEUE_ONE = "queue_one"  # let one run wait for the active one; merge the rest into it
    CANCEL_PREVIOUS = "cancel_previous"  # cancel the runs in flight, then start
    ALLOW = "allow"  # start regardless
