"""The management API's shapes: what its routes take and answer.

Pydantic models without the web framework, so that what reads or writes them (the
CLI answering from the store here, `routined.cli.local`) need not load the server.
The routes are in `routined.http.management`.
"""

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class _Out(BaseModel):
    # Answers may grow fields; clients must ignore the ones they do not know.
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorOut(BaseModel):
    type: Literal["error"]
    error: ErrorDetail


class AccountOut(_Out):
    id: str
    name: str
    plan: str
    extra_usage: bool
    disabled: bool
    created_at: str


def _no_nul(value: str) -> str:
    # PostgreSQL's text cannot hold one, and no name or text needs one.
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


class AccountIn(BaseModel):
    name: Text = Field(description="Letters, digits, '.', '_' and '-'.")
    plan: Text = Field("unlimited", description="One of the server's ROUTINED_PLANS.")


class AccountPatch(BaseModel):
    plan: Text | None = None
    extra_usage: bool | None = Field(None, description="Runs go on past the daily limit.")
    disabled: bool | None = Field(
        None, description="A disabled account's routines start nothing, whatever the trigger."
    )


class RoutineUsageOut(_Out):
    routine: str
    manual_and_api_this_hour: int
    remaining_this_hour: int


class UsageOut(_Out):
    account: str
    plan: str
    extra_usage: bool
    disabled: bool
    runs_today: int
    runs_per_day: int | None
    remaining_today: int | None
    day_resets_at: str
    api_runs_this_hour: int
    api_runs_per_hour: int
    hour_resets_at: str
    routines: list[RoutineUsageOut]


class KeyOut(_Out):
    id: str
    account: str
    name: str
    scope: str
    created_at: str
    revoked_at: str | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself: shown in this answer only.")


class KeyIn(BaseModel):
    name: Text
    scope: Literal["read", "write", "admin"] = "read"
    account: Text | None = Field(None, description="Operator only: the account to issue it for.")


class TriggerOut(_Out):
    id: str
    type: str
    routine: str | None = None


class NextRunOut(_Out):
    at: str
    local: str
    trigger: str


class LastRunOut(_Out):
    id: str
    status: str


class RoutineOut(_Out):
    id: str
    name: str
    model: str | None
    paused: bool
    paused_at: str | None
    repositories: list[str]
    # "public": applied with an account's key, its runs reach public addresses only.
    reach: Literal["public", "any"]
    catch_up: str
    catch_up_window: str
    overlap: str
    stagger: str
    triggers: list[TriggerOut]
    next_run: NextRunOut | None
    last_run: LastRunOut | None


class ChangeOut(_Out):
    name: str
    action: Literal["created", "updated", "unchanged"]
    details: list[str]
    warnings: list[str]
    description: str


class PausedOut(_Out):
    name: str
    paused: bool
    changed: bool


class FireIn(BaseModel):
    text: Text | None = Field(None, description="Passed to the run as its payload.")


class FiredOut(_Out):
    run_id: str
    session_id: str
    session_url: str


class TokenOut(_Out):
    trigger_id: str
    routine: str
    token: str = Field(description="Shown in this answer only; the one before stops working.")
    url: str


class RevokedOut(_Out):
    trigger_id: str
    revoked: bool


class DiffStatOut(_Out):
    files: int
    insertions: int
    deletions: int


class TokenUsageOut(_Out):
    """As the agent reports it; an agent may report more, or fewer, kinds of token."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class RunOut(_Out):
    id: str
    session_id: str
    session_url: str
    routine: str
    status: str
    trigger: str
    trigger_id: str | None
    branches: list[Any] = Field(
        description="Pushed branches: repository, branch, sha, source, and what each "
        "changes (files, insertions, deletions) when known."
    )
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: str | None
    summary: str | None = Field(description="The agent's final message, secrets redacted.")
    diff_stat: DiffStatOut | None = Field(
        description="What the pushed branches change against the default branches, together."
    )
    usage: TokenUsageOut | None = Field(description="Tokens the agent used.")
    cost_usd: float | None = Field(description="What the agent's model requests cost, in USD.")


class CancelOut(_Out):
    run_id: str
    cancel: Literal["cancelled", "requested"]


class RunEventOut(_Out):
    seq: int
    at: str
    kind: str
    from_status: str | None
    to_status: str | None
    reason: str | None
    data: dict[str, Any] | None


class RunEventsOut(_Out):
    run_id: str
    status: str
    events: list[RunEventOut]


class SecretOut(_Out):
    name: str
    account: str
    created_at: str
    updated_at: str


class SecretSetOut(SecretOut):
    created: bool = Field(description="False when an existing value was replaced.")


class SecretName(_Out):
    account: str
    name: str


class RotationOut(_Out):
    rotated: int = Field(description="Secrets now encrypted under the first key.")
    unreadable: list[SecretName] = Field(
        description="Secrets none of the keys decrypts, left as they are: store them again."
    )


class SecretIn(BaseModel):
    value: Text = Field(description="The value: 1 to 65,536 characters, never shown again.")


class CacheClearedOut(_Out):
    routine: str
    cleared: int = Field(description="How many cached setup results were removed.")


class DecisionOut(_Out):
    routine: str
    trigger_id: str | None
    trigger_type: str
    scheduled_at: str | None
    decided_at: str
    outcome: str
    reason: str
    run_id: str | None
    delivery_id: str | None = None


class DeliveryOut(_Out):
    id: str
    event: str
    action: str | None
    repository: str | None
    installation_id: int | None
    headers: dict[str, str]
    received_at: str
    attempts: int
    processed_at: str | None
    outcome: str | None
    decisions: list[DecisionOut]


class WouldOut(_Out):
    routine: str
    trigger_id: str
    outcome: str
    reason: str


class ReplayOut(DeliveryOut):
    replayed_at: str
    would: list[WouldOut]
