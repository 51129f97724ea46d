"""The store's tables. Migrations in `routined/migrations` create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps no zone, so values are stored as naive UTC and given their zone
    back when read; a naive value handed in is a bug and is refused.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


DEFAULT_ACCOUNT_ID = "acct_default"


class Account(Base):
    """Who owns routines, with the plan that bounds how many runs they may start."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    plan: Mapped[str] = mapped_column(String(40))
    # Runs may go on past the plan's daily limit (metered elsewhere).
    extra_usage: Mapped[bool] = mapped_column(default=False)
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Routine(Base):
    __tablename__ = "routines"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id"),
        default=DEFAULT_ACCOUNT_ID,
        server_default=DEFAULT_ACCOUNT_ID,
        index=True,
    )
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prompt: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    paused_at: Mapped[datetime | None]
    # Applied with an account's key (not the operator's): every connection made for
    # its runs reaches public addresses only, judged again when made (see
    # `routined.reach`). Routines stored before this was recorded keep false.
    public_only: Mapped[bool] = mapped_column(default=False, server_default=false())
    # What the schedule does after downtime and while a run is active; see
    # `routined.fires.Policy`.
    catch_up: Mapped[str] = mapped_column(String(10), default="latest", server_default="latest")
    catch_up_window: Mapped[int] = mapped_column(default=604_800, server_default="604800")
    overlap: Mapped[str] = mapped_column(String(20), default="skip", server_default="skip")
    stagger: Mapped[int] = mapped_column(default=0, server_default="0")
    # What routined does with a run's pushed branches; see `routined.routines.spec.RoutineSpec`.
    pull_requests: Mapped[bool] = mapped_column(default=False, server_default=false())
    comment: Mapped[bool] = mapped_column(default=False, server_default=false())
    # What a run starts in and may spend, and which agent works: the routine file's
    # `environment:`, `limits:`, `agent:` and `connectors:` as checked by
    # `routined.routines.spec.RoutineSpec` (secret values are never here, only names).
    environment: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    agent: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    connectors: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")

    repositories: Mapped[list[Repository]] = relationship(
        back_populates="routine", order_by="Repository.position", cascade="all, delete-orphan"
    )
    triggers: Mapped[list[Trigger]] = relationship(
        back_populates="routine", order_by="Trigger.position", cascade="all, delete-orphan"
    )


class Repository(Base):
    __tablename__ = "repositories"
    __table_args__ = (UniqueConstraint("routine_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    routine_id: Mapped[str] = mapped_column(ForeignKey("routines.id", ondelete="CASCADE"))
    position: Mapped[int]
    url: Mapped[str] = mapped_column(Text)
    # Where the agent's work may land; see `routined.runs.push.PushRules`.
    branch_prefix: Mapped[str] = mapped_column(
        String(100), default="claude/", server_default="claude/"
    )
    allow_unrestricted_push: Mapped[bool] = mapped_column(default=False, server_default=false())
    allow_force_push: Mapped[bool] = mapped_column(default=False, server_default=false())
    allow_default_branch_push: Mapped[bool] = mapped_column(default=False, server_default=false())

    routine: Mapped[Routine] = relationship(back_populates="repositories")


class Trigger(Base):
    __tablename__ = "triggers"
    __table_args__ = (UniqueConstraint("routine_id", "position"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    routine_id: Mapped[str] = mapped_column(ForeignKey("routines.id", ondelete="CASCADE"))
    position: Mapped[int]
    type: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    # Schedule triggers only: the next instant to decide, and when to decide it
    # (the instant plus the routine's stagger). Both empty once a schedule is done.
    next_at: Mapped[datetime | None]
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    # GitHub triggers only: the repository they listen to, lower case (GitHub's names
    # are case-insensitive), so a delivery finds its triggers by index.
    repository: Mapped[str | None] = mapped_column(String(200), index=True)

    routine: Mapped[Routine] = relationship(back_populates="triggers")


class _Credential:
    """How a secret handed out is kept (`routined.trigger_tokens`): its lookup part as it is,
    the whole only as a SHA-256 digest; when it was issued, and revoked."""

    lookup: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Token(_Credential, Base):
    """A trigger's bearer token."""

    __tablename__ = "tokens"
    __table_args__ = (Index(None, "trigger_id", "lookup"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger_id: Mapped[str] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"))


class ApiKey(_Credential, Base):
    """A key to the management API: one account's, with one scope."""

    __tablename__ = "api_keys"
    __table_args__ = (Index(None, "lookup"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    scope: Mapped[str] = mapped_column(String(10))


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index(None, "status", "created_at"), Index(None, "routine_id", "created_at"))

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(48), unique=True)
    routine_id: Mapped[str] = mapped_column(ForeignKey("routines.id", ondelete="CASCADE"))
    trigger_id: Mapped[str | None] = mapped_column(ForeignKey("triggers.id", ondelete="SET NULL"))
    trigger_type: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    text: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    branches: Mapped[list[Any]] = mapped_column(default=list)
    # Fencing: a worker's claim bumps `lease`; its later updates name the lease
    # they hold, so a worker presumed dead cannot overwrite what another did.
    lease: Mapped[int] = mapped_column(default=0)
    worker_id: Mapped[str | None] = mapped_column(String(80))
    heartbeat_at: Mapped[datetime | None]
    agent_session_id: Mapped[str | None] = mapped_column(String(64))
    cost_usd: Mapped[float | None]
    # The results: the agent's final message, what its pushed branches change
    # against the default branches ({files, insertions, deletions}), and the
    # tokens it used ({input_tokens, output_tokens, …}, as the agent reports them).
    summary: Mapped[str | None] = mapped_column(Text)
    diff_stat: Mapped[dict[str, Any] | None]
    usage: Mapped[dict[str, Any] | None]
    event_seq: Mapped[int] = mapped_column(default=0)
    # A serial run starts only when no other run of its routine is active.
    serial: Mapped[bool] = mapped_column(default=False, server_default=false())
    cancel_requested_at: Mapped[datetime | None]
    # What the run's workspace and delivery need of the event that started it (the pull
    # request to fetch, the issue to comment on); see `routined.github.matcher`.
    context: Mapped[dict[str, Any] | None]
    # Runs of one routine with the same key follow its trigger's concurrency policy
    # among themselves (a burst of pushes to one pull request), not the routine's.
    concurrency_key: Mapped[str | None] = mapped_column(String(200))


class Secret(Base):
    """A value a routine's runs may use, encrypted at rest (see `routined.secrets.vault`);
    routines name the secrets they use, never their values."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IdempotencyKey(Base):
    """A fire's `Idempotency-Key`: the same key on the same trigger within a day is
    answered with the first fire's session instead of a new run."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("trigger_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trigger_id: Mapped[str] = mapped_column(ForeignKey("triggers.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime]


class RunEvent(Base):
    """One thing that happened to a run, numbered per run so readers can resume."""

    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int]
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]


class Fire(Base):
    """One decision about one firing of a trigger: fired, caught up, skipped, missed….

    A scheduled slot is decided once: (trigger, scheduled instant) is unique, so
    schedulers racing on one database cannot both fire it.
    """

    __tablename__ = "fires"
    __table_args__ = (
        UniqueConstraint("trigger_id", "scheduled_at"),
        # One decision per trigger per GitHub delivery: a redelivery starts nothing twice.
        UniqueConstraint("delivery_id", "trigger_id"),
        Index(None, "routine_id", "decided_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    routine_id: Mapped[str] = mapped_column(ForeignKey("routines.id", ondelete="CASCADE"))
    # History outlives a trigger removed from the routine.
    trigger_id: Mapped[str | None] = mapped_column(ForeignKey("triggers.id", ondelete="SET NULL"))
    trigger_type: Mapped[str] = mapped_column(String(20))
    scheduled_at: Mapped[datetime | None]
    decided_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    delivery_id: Mapped[str | None] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))


class WebhookDelivery(Base):
    """A GitHub webhook delivery as received, and what became of it as a whole.

    Its id is GitHub's `X-GitHub-Delivery`: a redelivery finds the row it made the
    first time and starts nothing. What each routine decided is in `fires`.
    """

    __tablename__ = "deliveries"
    # The matcher's queue: the undecided deliveries in the order they came, found
    # without a sort of all that wait (a backlog grows under load).
    __table_args__ = (
        Index(
            "ix_deliveries_undecided",
            "received_at",
            "id",
            sqlite_where=text("processed_at IS NULL"),
            postgresql_where=text("processed_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(60))
    action: Mapped[str | None] = mapped_column(String(60))
    repository: Mapped[str | None] = mapped_column(String(200))
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    # The headers of record (event, delivery, hook and installation target, user agent).
    headers: Mapped[dict[str, Any]]
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=1)
    last_received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(Text)


class Installation(Base):
    """Where the GitHub App is installed, as its `installation` events tell."""

    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account_login: Mapped[str] = mapped_column(String(200))
    # `all`: every repository of the account, also ones made later; `selected`: those listed.
    repository_selection: Mapped[str] = mapped_column(String(20))
    suspended_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class InstallationRepository(Base):
    __tablename__ = "installation_repositories"

    installation_id: Mapped[int] = mapped_column(
        ForeignKey("installations.id", ondelete="CASCADE"), primary_key=True
    )
    # Lower case, as `Trigger.repository`.
    repository: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)


class Counter(Base):
    """A number kept where nothing else may be: refused webhook signatures, say."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
