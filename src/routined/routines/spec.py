"""The typed spec of a routines file, each field checked where it is declared, kept free
of the store and the web so that a routine can be validated anywhere before it is stored."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from routined import variables
from routined.config import parse_size
from routined.errors import BadInput
from routined.github import events as github_events
from routined.routines.policy import CatchUp, Overlap
from routined.sandbox import network
from routined.sandbox.network import Level as NetworkLevel
from routined.schedules import timing as schedule
from routined.schedules.timing import Schedule, parse_duration, zone
from routined.timeutil import format_duration

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class SpecError(BadInput, ValueError):
    """A routines file that cannot be applied; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)


_BRANCH_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*/")
_CONNECTOR_NAME = r"^[A-Za-z0-9_-]{1,64}$"


# A repository's push rules: fields of RepositorySpec and columns of Repository alike.
PUSH_RULES = (
    "branch_prefix",
    "allow_unrestricted_push",
    "allow_force_push",
    "allow_default_branch_push",
)


class RepositorySpec(_Strict):
    """A repository cloned into each run's workspace, and where the run's work may land
    on it (see `routined.runs.push.PushRules`)."""

    url: str = Field(min_length=1)
    branch_prefix: str = "claude/"
    # Push the agent's other branches under their own names (fast-forward only);
    # forcing and the default branch each need their own yes as well.
    allow_unrestricted_push: bool = False
    allow_force_push: bool = False
    allow_default_branch_push: bool = False

    @field_validator("branch_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if (
            not _BRANCH_PREFIX.fullmatch(value)
            or len(value) > 100
            or ".." in value
            or value.startswith("refs/")
            or any(part.endswith(".lock") or part.startswith(".") for part in value.split("/"))
        ):
            raise ValueError(
                "give a branch name prefix ending in '/', such as claude/ or bots/nightly/"
            )
        return value

    @model_validator(mode="after")
    def _unrestricted_first(self) -> RepositorySpec:
        for name in ("allow_force_push", "allow_default_branch_push"):
            if getattr(self, name) and not self.allow_unrestricted_push:
                raise ValueError(f"{name} applies only with allow_unrestricted_push: true")
        return self

    def push_rules(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PUSH_RULES}


class SecretUse(_Strict):
    """A stored secret a routine's runs get as an environment variable."""

    name: str = Field(pattern=variables.NAME_PATTERN)
    # Given to the setup script only, and gone before the agent starts.
    setup_only: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        variables.check_variable_name(value)
        return value


class EnvironmentSpec(_Strict):
    """What a run starts in: its network, a setup script, variables and secrets."""

    network: NetworkLevel = "trusted"
    allowed_hosts: list[str] = Field(default_factory=list)
    include_trusted: bool = False
    setup_script: str | None = Field(default=None, max_length=100_000)
    # Files (or folders) of the first repository the setup result depends on, such as
    # lock files: the cached result is used only while they are as they were.
    setup_cache_files: list[str] = Field(default_factory=list, max_length=50)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[SecretUse] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [network.check_host(host) for host in value]

    @field_validator("env", mode="before")
    @classmethod
    def _values_as_text(cls, value: Any) -> Any:
        # YAML reads `DEBUG: 1` and `VERBOSE: true` as a number and a boolean.
        if isinstance(value, dict):
            return {
                key: str(item).lower()
                if isinstance(item, bool)
                else str(item)
                if isinstance(item, int | float)
                else item
                for key, item in value.items()
            }
        return value

    @field_validator("env")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            variables.check_variable_name(name)
        return value

    @field_validator("secrets", mode="before")
    @classmethod
    def _names_alone(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("setup_script")
    @classmethod
    def _script(cls, value: str | None) -> str | None:
        return value if value and value.strip() else None

    @field_validator("setup_cache_files")
    @classmethod
    def _repository_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            parts = path.strip("/").split("/")
            if path.startswith("/") or {"", ".", ".."} & set(parts) or len(path) > 1000:
                raise ValueError(
                    f"{path!r}: give a path inside the first repository, such as uv.lock "
                    "or web/package-lock.json"
                )
            if any(char in "*?[" or not char.isprintable() for char in path):
                raise ValueError(
                    f"{path!r}: name each file or folder as it is; patterns are not matched"
                )
        return sorted({path.strip("/") for path in value})

    @model_validator(mode="after")
    def _custom_hosts(self) -> EnvironmentSpec:
        if self.network != "custom" and (self.allowed_hosts or self.include_trusted):
            raise ValueError("allowed_hosts and include_trusted apply only to network: custom")
        if self.setup_cache_files and self.setup_script is None:
            raise ValueError("setup_cache_files applies only with a setup_script")
        names = [secret.name for secret in self.secrets]
        twice = sorted(
            {name for name in names if names.count(name) > 1} | (set(names) & set(self.env))
        )
        if twice:
            raise ValueError(f"{', '.join(twice)}: named twice among env and secrets; keep one")
        return self


class LimitsSpec(_Strict):
    """What one run may spend; reaching a limit stops the agent and keeps its work.

    `memory`, `pids`, `disk` and `cpu` cap its sandbox (`routined.sandbox.resources`);
    the server's ROUTINED_RUN_* settings hold for those left out.
    """

    max_duration: int | None = None  # seconds; written as a duration such as 45m
    max_turns: int | None = Field(default=None, ge=1, le=10_000)
    max_cost_usd: float | None = Field(default=None, gt=0, le=100_000)
    memory: int | None = None  # bytes; written as a size such as 4GiB
    pids: int | None = Field(default=None, ge=16, le=4_000_000)
    disk: int | None = None  # bytes; written as a size such as 10GiB
    cpu: float | None = Field(default=None, ge=0.05, le=1024)
    # MiB per file the agent's work may add; default 100, GitHub's own limit. Past
    # 2 GiB the work could not leave its sandbox anyway (`outbox.BUNDLE_LIMIT`).
    max_file_mb: int | None = Field(default=None, ge=1, le=2048)

    @field_validator("max_duration", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int | None:
        return None if value is None else _seconds(value, "max_duration", 1, 7 * 86400)

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _size(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError("write a size such as 4GiB")
        size = value if isinstance(value, int) else parse_size(str(value))
        if size < 64 * 1024**2:
            raise ValueError(f"{info.field_name} must be at least 64MiB, e.g. 2GiB")
        return size


class CommandAgentSpec(_Strict):
    """Any agent CLI: the prompt on its stdin and in $ROUTINED_PROMPT_FILE, the first
    repository as its working directory, in the same sandbox as Claude Code."""

    command: list[str] = Field(min_length=1)

    @field_validator("command")
    @classmethod
    def _program(cls, value: list[str]) -> list[str]:
        if not value[0].strip():
            raise ValueError("the first item is the program to run; it is empty")
        return value


class ConnectorSpec(BaseModel):
    """An MCP server, in the shape of `.mcp.json`'s `mcpServers` entries (stdio:
    `command`, `args`, `env`; remote: `type: http` or `sse` with `url`, `headers`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: Literal["stdio", "http", "sse"] = "stdio"
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> ConnectorSpec:
        if self.type == "stdio" and (self.command is None or self.url is not None):
            raise ValueError("a stdio connector gives `command:` (and `args:`), not `url:`")
        if self.type != "stdio" and (self.url is None or self.command is not None):
            raise ValueError(f"a {self.type} connector gives `url:`, not `command:`")
        return self

    def definition(self) -> dict[str, Any]:
        """The entry Claude Code takes in `mcpServers`."""
        return self.model_dump(mode="json", exclude_defaults=True) | {"type": self.type}


class GateSpec(_Strict):
    """A rule a small model checks each fire's text against before its run starts."""

    prompt: str = Field(min_length=1)
    on_error: Literal["open", "closed"] = "closed"


class ApiTriggerSpec(_Strict):
    type: Literal["api"]
    gate: GateSpec | None = None

    def config(self) -> dict[str, Any]:
        return {"gate": self.gate.model_dump()} if self.gate else {}


class ScheduleTriggerSpec(_Strict):
    """Exactly one of `schedule` (a preset), `cron` or `once`, read in `timezone`."""

    type: Literal["schedule"]
    schedule: str | None = None
    cron: str | None = None
    once: str | None = None
    timezone: str | None = None

    @field_validator("once", mode="before")
    @classmethod
    def _once_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-12-01T09:00:00 as a datetime, 2026-12-01 as a date.
        if isinstance(value, datetime | date):
            return value.isoformat()
        return value

    @field_validator("schedule", "cron", "once")
    @classmethod
    def _parses(cls, value: str | None, info: Any) -> str | None:
        if value is not None:
            prefix = "" if info.field_name == "schedule" else info.field_name
            schedule.parse(f"{prefix} {value}", "UTC")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @property
    def kind(self) -> str:
        given = [name for name in ("schedule", "cron", "once") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `schedule:` (such as 'weekdays at 09:00'), `cron:` or `once:`"
            )
        return given[0]

    @property
    def spec(self) -> str:
        kind = self.kind
        value = getattr(self, kind)
        return value if kind == "schedule" else f"{kind} {value}"

    def parsed(self) -> Schedule:
        return schedule.parse(self.spec, self.timezone or "UTC")

    def config(self) -> dict[str, Any]:
        return {"spec": self.spec, "timezone": self.timezone or "UTC"}


class ConcurrencySpec(_Strict):
    """Runs whose events render the same key follow `policy` among themselves."""

    key: str = Field(min_length=1, max_length=200)
    policy: Overlap

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: Overlap) -> Overlap:
        if value is Overlap.ALLOW:
            raise ValueError("say cancel_previous, skip or queue_one")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return github_events.check_key(value)


class GitHubTriggerSpec(_Strict):
    """GitHub App events on one repository, narrowed by `events` and `filters`."""

    type: Literal["github"]
    repository: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    events: list[str] = Field(min_length=1)
    filters: list[dict[str, Any]] = Field(default_factory=list)
    concurrency: ConcurrencySpec | None = None

    @model_validator(mode="after")
    def _events_and_filters(self) -> GitHubTriggerSpec:
        github_events.check_filters(
            github_events.parse_events(self.events), github_events.parse_filters(self.filters)
        )
        return self

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "repository": self.repository,
            "events": list(self.events),
            "filters": [dict(f) for f in self.filters],
        }
        if self.concurrency:
            config["concurrency"] = self.concurrency.model_dump(mode="json")
        return config


TriggerSpec = Annotated[
    ApiTriggerSpec | ScheduleTriggerSpec | GitHubTriggerSpec, Field(discriminator="type")
]
TRIGGER_TYPES = "api, schedule, github"


def _seconds(value: Any, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("give a duration such as 90s, 15m, 2h or 7d")
    seconds = int(parse_duration(value, what).total_seconds())
    if not minimum <= seconds <= maximum:
        low, high = (format_duration(timedelta(seconds=n)) for n in (minimum, maximum))
        raise ValueError(f"must be between {low} and {high}")
    return seconds


class RoutineSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    account: str = Field(default="default", pattern=NAME_PATTERN)
    prompt: str
    model: str | None = Field(default=None, min_length=1)
    repositories: list[RepositorySpec] = Field(min_length=1)
    triggers: list[TriggerSpec] = Field(default_factory=list)
    catch_up: CatchUp = CatchUp.LATEST
    catch_up_window: int = 604_800  # seconds; written as a duration such as 7d
    overlap: Overlap = Overlap.SKIP
    stagger: int = 0  # seconds; written as a duration such as 10m
    # After a run: open a pull request for each `claude/` branch it pushed to a GitHub
    # repository, and comment the session's link on the pull request or issue that
    # started it.
    pull_requests: bool = False
    comment: bool = False
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    agent: Literal["claude"] | CommandAgentSpec = "claude"
    connectors: dict[Annotated[str, Field(pattern=_CONNECTOR_NAME)], ConnectorSpec] = Field(
        default_factory=dict
    )

    @field_validator("catch_up_window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int:
        return _seconds(value, "catch_up_window", 60, 90 * 86400)

    @field_validator("stagger", mode="before")
    @classmethod
    def _stagger(cls, value: Any) -> int:
        return _seconds(value, "stagger", 0, 86400)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is blank; say what the agent should do")
        return value


class RoutinesFile(_Strict):
    routines: list[RoutineSpec]
