"""Routines as code: the YAML format, its validation, and `apply`.

`load` turns a file into a checked `RoutinesFile` or raises `SpecError` naming the
file, the field and what is wrong. `apply` makes the store match the file, by
routine name, in one transaction, and reports what it changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from routined.config import parse_size
from routined.errors import BadInput
from routined.fires import CatchUp, Overlap
from routined.github import events as github_events
from routined.github import installations
from routined.ids import new_id
from routined.models import Account, Repository, Routine, Trigger
from routined.sandbox import network
from routined.sandbox.network import Level as NetworkLevel
from routined.schedules import timing as schedule
from routined.schedules.scheduler import arm, restagger
from routined.schedules.timing import (
    Schedule,
    ScheduleError,
    check_interval,
    parse_duration,
    zone,
)
from routined.secrets import vault
from routined.timeutil import format_duration
from routined.workspace import display_url

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_SCP_LIKE = re.compile(r"^[^/:]+@[^/:]+:")


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

    name: str = Field(pattern=vault.NAME_PATTERN)
    # Given to the setup script only, and gone before the agent starts.
    setup_only: bool = False

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        vault.check_variable_name(value)
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
            vault.check_variable_name(name)
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


def load(
    path: Path,
    *,
    now: datetime,
    timezone: str = "UTC",
    min_interval: timedelta = timedelta(hours=1),
) -> RoutinesFile:
    """Read and check a routines file.

    Relative repository paths are taken from the file's folder; schedule
    triggers without a `timezone` get `timezone`, and may fire no more often
    than `min_interval`.
    """
    return parse_document(
        read(path),
        source=str(path),
        base=path.parent,
        now=now,
        timezone=timezone,
        min_interval=min_interval,
    )


def read(path: Path) -> Any:
    """A routines file's YAML document, not yet checked."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except RecursionError:
        # PyYAML composes nodes by recursion: a few hundred levels of `[[[…` end it.
        raise SpecError(
            f"{path}: nested too deeply to read (hundreds of levels; a routines file needs ten)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        invalid = "" if isinstance(exc, _AliasesRefused) else "not valid YAML: "
        raise SpecError(f"{path}{where}: {invalid}{problem}") from exc


# Far more than anchors for shared defaults (`<<: *defaults`) repeat in a real file;
# far less than what a "billion laughs" (aliases of aliases of aliases…) would make.
MAX_ALIASED_NODES = 100_000
_SATURATED = 2**62  # a count past every bound, kept small: counts of nested aliases explode


class _AliasesRefused(yaml.MarkedYAMLError):
    """YAML whose aliases would expand past `MAX_ALIASED_NODES`, or forever."""


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a document whose aliases would make it too big.

    An alias is composed as the very node its anchor names, and constructed as the
    very same object, so loading never copies; but whatever walks the document
    afterwards (validation, sending it to a server as JSON) sees every alias as a
    copy. Each composed document is measured as such a walk would see it, without
    making it: nodes counted once each, memoised, with a stack of our own.
    """

    def compose_document(self) -> yaml.Node | None:
        root = super().compose_document()
        if root is not None:
            _check_aliases(root)
        return root


def _check_aliases(root: yaml.Node) -> None:
    """Refuse `root` if expanding its aliases would add more than `MAX_ALIASED_NODES`
    nodes to those written, or never end (an alias inside the node it names).

    1. Walk depth first; a node's size is 1 plus its children's, once they are known.
    2. A node already sized is not walked again: that is what keeps this linear.
    3. A child on the path from the root to here is a cycle.
    """
    sizes: dict[int, int] = {}  # id(node) → its size, every alias in it expanded
    on_path: set[int] = set()
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, children_sized = pending.pop()
        children = _children(node)
        if children_sized:
            on_path.discard(id(node))
            sizes[id(node)] = min(_SATURATED, 1 + sum(sizes[id(child)] for child in children))
            continue
        if id(node) in sizes:
            continue
        on_path.add(id(node))
        pending.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise _AliasesRefused(
                    problem="an alias refers to the node anchored here, from inside it; "
                    "it would repeat forever: write it out instead",
                    problem_mark=child.start_mark,
                )
            if id(child) not in sizes:
                pending.append((child, False))
    added = sizes[id(root)] - len(sizes)
    if added > MAX_ALIASED_NODES:
        shown = "" if sizes[id(root)] == _SATURATED else f" ({added:,})"
        raise _AliasesRefused(
            problem=f"its aliases would repeat more than {MAX_ALIASED_NODES:,} nodes{shown}; "
            "repeat less with `*anchor`, or write the repeated parts out"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_document(
    document: Any,
    *,
    source: str,
    base: Path | None,
    now: datetime,
    timezone: str = "UTC",
    min_interval: timedelta = timedelta(hours=1),
) -> RoutinesFile:
    """Check a routines document; errors start with `source`. Without a `base`
    folder a repository must be a git URL or an absolute path."""
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping with a `routines:` list at the top")
    where = _nul_at(document)
    if where is not None:
        raise SpecError(f"{source}: {where or 'a key'}: contains a NUL character; remove it")
    try:
        spec = RoutinesFile.model_validate(document)
    except ValidationError as exc:
        raise SpecError(_describe(source, document, exc)) from exc
    return _check(source, base, spec, now=now, timezone=timezone, min_interval=min_interval)


def _nul_at(node: Any, where: str = "") -> str | None:
    """Where the document holds a NUL character (no store can keep one), or None."""
    if isinstance(node, str):
        return where if "\x00" in node else None
    items: list[tuple[Any, str]] = []
    if isinstance(node, dict):
        items = [(k, where) for k in node] + [
            (v, f"{where}.{k}" if where else str(k)) for k, v in node.items()
        ]
    elif isinstance(node, list):
        items = [(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return next((found for child, at in items if (found := _nul_at(child, at)) is not None), None)


def with_absolute_paths(document: Any, base: Path) -> Any:
    """The document with its relative repository paths made absolute from `base`, for a
    server that cannot know where the file was."""
    if not isinstance(document, dict) or not isinstance(document.get("routines"), list):
        return document
    for routine in document["routines"]:
        for repository in routine.get("repositories") or [] if isinstance(routine, dict) else []:
            url = repository.get("url") if isinstance(repository, dict) else None
            if isinstance(url, str) and url and _is_path(url):
                repository["url"] = str((base / url).absolute())
    return document


def _is_path(url: str) -> bool:
    return not _URL_SCHEME.match(url) and not _SCP_LIKE.match(url)


def _describe(source: str, document: Any, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = _location(document, error["loc"])
        message = error["msg"]
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            tag = (error.get("ctx") or {}).get("tag")
            location += ".type"
            message = (
                f"unknown trigger type {tag!r}; supported: {TRIGGER_TYPES}"
                if error["type"] == "union_tag_invalid"
                else f"say which kind of trigger this is with `type:` (supported: {TRIGGER_TYPES})"
            )
        elif error["type"] == "extra_forbidden":
            message = "unknown field; remove it or check its spelling"
        elif error["type"] == "string_pattern_mismatch":
            message = (
                "names use letters, digits, '.', '_' and '-', start with a letter or "
                "digit, and are at most 100 characters"
            )
        elif location.endswith("repositories") and error["type"] in ("list_type", "too_short"):
            message = "list at least one repository, as `- url: <git URL or path>`"
        elif error["type"] == "list_type" and error.get("input") is None:
            message = "is empty; give a list (`- …`) or remove the key"
        elif error["type"] == "value_error":
            message = str((error.get("ctx") or {}).get("error", message))
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{source}: {location}: {message}")
    return "\n".join(lines)


def _location(document: Any, loc: tuple[int | str, ...]) -> str:
    """`routines[0] (docs-nightly).triggers[1].type` from pydantic's location tuple."""
    parts: list[str] = []
    node = document
    tag_next = False
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if len(parts) == 1 and isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f" ({node['name']})"
            tag_next = parts[-1].startswith("triggers[")
        elif tag_next:
            tag_next = False  # the trigger type pydantic adds; not a field of the file
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def _check(
    path: str,
    base: Path | None,
    spec: RoutinesFile,
    *,
    now: datetime,
    timezone: str,
    min_interval: timedelta,
) -> RoutinesFile:
    """What one field alone cannot tell: names, paths, and what schedules compute to."""
    seen: set[str] = set()
    routines = []
    for index, routine in enumerate(spec.routines):
        label = f"routines[{index}] ({routine.name})"
        if routine.name in seen:
            raise SpecError(f"{path}: {label}.name: another routine in this file has this name")
        seen.add(routine.name)
        repositories = []
        for number, repository in enumerate(routine.repositories):
            url = repository.url
            if _is_path(url):
                if base is None and not Path(url).is_absolute():
                    raise SpecError(
                        f"{path}: {label}.repositories[{number}].url: {url!r} is a relative "
                        "path; give a git URL or an absolute path on the server"
                    )
                local = ((base or Path("/")).absolute() / url).resolve()
                if not local.exists():
                    raise SpecError(
                        f"{path}: {label}.repositories[{number}].url: {url!r} is neither a "
                        f"git URL nor an existing path ({local} does not exist)"
                    )
                url = str(local)
            repositories.append(repository.model_copy(update={"url": url}))
        triggers: list[ApiTriggerSpec | ScheduleTriggerSpec | GitHubTriggerSpec] = []
        for number, trigger in enumerate(routine.triggers):
            if isinstance(trigger, ScheduleTriggerSpec):
                trigger = _check_schedule(
                    f"{path}: {label}.triggers[{number}]", trigger, now, timezone, min_interval
                )
            triggers.append(trigger)
        routines.append(
            routine.model_copy(update={"repositories": repositories, "triggers": triggers})
        )
    return RoutinesFile(routines=routines)


def _check_schedule(
    where: str,
    trigger: ScheduleTriggerSpec,
    now: datetime,
    timezone: str,
    min_interval: timedelta,
) -> ScheduleTriggerSpec:
    try:
        kind = trigger.kind
    except ValueError as error:
        raise SpecError(f"{where}: {error}") from None
    trigger = trigger.model_copy(update={"timezone": trigger.timezone or timezone})
    try:
        check_interval(trigger.parsed(), min_interval, start=now)
    except ScheduleError as error:
        raise SpecError(f"{where}.{kind}: {error}") from None
    return trigger


@dataclass
class Change:
    """What `apply` did to one routine."""

    name: str
    action: Literal["created", "updated", "unchanged"]
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        suffix = f": {'; '.join(self.details)}" if self.details else ""
        return f"{self.name} {self.action}{suffix}"


def apply(
    session: Session, spec: RoutinesFile, *, now: datetime, public_only: bool = False
) -> list[Change]:
    """Create or update each routine of the file by name; routines not in it stay.

    A new or changed schedule trigger is armed at its first instant after `now`;
    an unchanged one keeps its place (a `once` that ran stays done). `public_only`
    records that an account's key applied the file: its runs reach public addresses
    only (see `routined.reach`); the operator's reach what they name.
    """
    names = [routine.name for routine in spec.routines]
    existing = {
        routine.name: routine
        for routine in session.scalars(
            select(Routine)
            .where(Routine.name.in_(names))
            .options(selectinload(Routine.repositories), selectinload(Routine.triggers))
            # A scheduler deciding one of these routines finishes first; then it
            # skips them until this apply commits (see `scheduler.decide_due`).
            .with_for_update(key_share=True)
        )
    }
    accounts = {name: id_ for name, id_ in session.execute(select(Account.name, Account.id))}
    changes = []
    for index, wanted in enumerate(spec.routines):
        current = existing.get(wanted.name)
        label = f"routines[{index}] ({wanted.name})"
        account_id = accounts.get(wanted.account)
        if account_id is None:
            raise SpecError(
                f"{label}.account: there is no account {wanted.account!r}; create it with "
                f"`routined account create {wanted.account} --plan PLAN`"
            )
        if current is None:
            change = _create(session, wanted, now, label, account_id, public_only)
        else:
            change = _update(session, current, wanted, now, label, account_id, public_only)
        change.warnings = _installation_warnings(session, wanted)
        changes.append(change)
    return changes


def _create(
    session: Session,
    wanted: RoutineSpec,
    now: datetime,
    label: str,
    account_id: str,
    public_only: bool,
) -> Change:
    routine = Routine(
        id=new_id("rtn"),
        account_id=account_id,
        public_only=public_only,
        name=wanted.name,
        prompt=wanted.prompt,
        model=wanted.model,
        created_at=now,
        updated_at=now,
        **_policy(wanted),
        **runtime(wanted),
    )
    routine.repositories = [
        Repository(position=i, url=r.url, **r.push_rules())
        for i, r in enumerate(wanted.repositories)
    ]
    routine.triggers = [
        Trigger(id=new_id("trig"), position=i, type=t.type, config=t.config(), created_at=now)
        for i, t in enumerate(wanted.triggers)
    ]
    for number, trigger in enumerate(routine.triggers):
        _arm(wanted, f"{label}.triggers[{number}]", trigger, now)
    session.add(routine)
    details = [_count(len(routine.repositories), "repository", "repositories")]
    details += [_describe_trigger(t) for t in routine.triggers]
    return Change(wanted.name, "created", details)


def _policy(wanted: RoutineSpec) -> dict[str, Any]:
    return {
        "catch_up": wanted.catch_up.value,
        "catch_up_window": wanted.catch_up_window,
        "overlap": wanted.overlap.value,
        "stagger": wanted.stagger,
        "pull_requests": wanted.pull_requests,
        "comment": wanted.comment,
    }


def runtime(wanted: RoutineSpec) -> dict[str, dict[str, Any]]:
    """The run's environment, limits, agent and connectors, as the routine's row keeps
    them (read back by `routined.runs.scope`)."""
    agent = (
        {"type": "claude"}
        if wanted.agent == "claude"
        else {"type": "command", "command": list(wanted.agent.command)}
    )
    environment = wanted.environment.model_dump(mode="json")
    if not environment["setup_cache_files"]:
        del environment["setup_cache_files"]  # stored as before it existed: no change to report
    return {
        "environment": environment,
        "limits": wanted.limits.model_dump(mode="json", exclude_none=True),
        "agent": agent,
        "connectors": {
            name: connector.definition() for name, connector in wanted.connectors.items()
        },
    }


def _arm(wanted: RoutineSpec, where: str, trigger: Trigger, now: datetime) -> None:
    """Point a new or changed schedule trigger at its first instant; refuse a past `once`.
    A GitHub trigger gets the repository its deliveries are found by."""
    trigger.repository = trigger.config["repository"].lower() if trigger.type == "github" else None
    if trigger.type != "schedule":
        return
    arm(trigger, timedelta(seconds=wanted.stagger), now=now)
    if trigger.next_at is None:
        spec = trigger.config["spec"]
        raise SpecError(
            f"{where}: {spec!r} ({trigger.config['timezone']}) is in the past; give a future time"
        )


def _describe_trigger(trigger: Trigger) -> str:
    if trigger.type == "schedule" and trigger.next_at is not None:
        where = zone(trigger.config["timezone"])
        local = trigger.next_at.astimezone(where)
        return (
            f"trigger schedule {trigger.id} ({trigger.config['spec']}, next "
            f"{local:%Y-%m-%d %H:%M} {where.key})"
        )
    if trigger.type == "github":
        events = ", ".join(trigger.config["events"])
        return f"trigger github {trigger.id} ({trigger.config['repository']}: {events})"
    return f"trigger {trigger.type} {trigger.id}"


def _installation_warnings(session: Session, routine: RoutineSpec) -> list[str]:
    """What a GitHub trigger would miss: a repository the app is not installed on."""
    return [
        f"warning: the GitHub App is not installed on {trigger.repository}: its events "
        "reach no routine until it is (GitHub sends them only where the app is installed)"
        for trigger in routine.triggers
        if isinstance(trigger, GitHubTriggerSpec)
        and not installations.installed_on(session, trigger.repository)
    ]


def _update(
    session: Session,
    routine: Routine,
    wanted: RoutineSpec,
    now: datetime,
    label: str,
    account_id: str,
    public_only: bool,
) -> Change:
    details = []
    if routine.account_id != account_id:
        routine.account_id = account_id
        details.append(f"account → {wanted.account}")
    if routine.public_only != public_only:
        routine.public_only = public_only
        details.append(
            "reach: public addresses only (an account's key applied it)"
            if public_only
            else "reach: what it names (the operator applied it)"
        )
    if routine.prompt != wanted.prompt:
        routine.prompt = wanted.prompt
        details.append("prompt changed")
    if routine.model != wanted.model:
        details.append(f"model {routine.model or 'default'} → {wanted.model or 'default'}")
        routine.model = wanted.model
    wanted_repositories = [(r.url, r.push_rules()) for r in wanted.repositories]
    current_repositories = [(r.url, _push_rules_of(r)) for r in routine.repositories]
    if current_repositories != wanted_repositories:
        routine.repositories.clear()
        session.flush()  # old positions must be gone before new rows reuse them
        routine.repositories.extend(
            Repository(position=i, url=url, **rules)
            for i, (url, rules) in enumerate(wanted_repositories)
        )
        urls = [url for url, _ in wanted_repositories]
        details.append("repositories " + ", ".join(display_url(u) for u in urls))
    for name, value in runtime(wanted).items():
        if getattr(routine, name) != value:
            details.append(f"{name} changed")
            setattr(routine, name, value)
    policy = _policy(wanted)
    for name, value in policy.items():
        if getattr(routine, name) != value:
            details.append(f"{name} {getattr(routine, name)} → {value}")
            setattr(routine, name, value)
    details += _update_triggers(session, routine, wanted, now, label)
    if "stagger" in policy and any(d.startswith("stagger") for d in details):
        for trigger in routine.triggers:
            restagger(trigger, timedelta(seconds=wanted.stagger))
    if details:
        routine.updated_at = now
    return Change(wanted.name, "updated" if details else "unchanged", details)


def _push_rules_of(repository: Repository) -> dict[str, Any]:
    return {name: getattr(repository, name) for name in PUSH_RULES}


def _update_triggers(
    session: Session, routine: Routine, wanted: RoutineSpec, now: datetime, label: str
) -> list[str]:
    """Keep trigger ids (and so their tokens and history) stable.

    A wanted trigger keeps the existing one with the same type and configuration
    wherever it moved in the list; the rest pair up by order within their type.
    """
    unclaimed: dict[str, list[Trigger]] = {}
    for trigger in routine.triggers:
        unclaimed.setdefault(trigger.type, []).append(trigger)
    same: dict[int, Trigger] = {}
    for index, spec in enumerate(wanted.triggers):
        pool = unclaimed.get(spec.type, [])
        match = next((t for t in pool if t.config == spec.config()), None)
        if match is not None:
            pool.remove(match)
            same[index] = match
    final: list[tuple[Trigger, dict[str, Any], bool]] = []
    for index, spec in enumerate(wanted.triggers):
        pool = unclaimed.get(spec.type, [])
        if index in same:
            final.append((same[index], spec.config(), False))
        elif pool:
            final.append((pool.pop(0), spec.config(), False))
        else:
            fresh = Trigger(id=new_id("trig"), type=spec.type, config={}, created_at=now)
            final.append((fresh, spec.config(), True))
    details = []
    for leftovers in unclaimed.values():
        for trigger in leftovers:
            routine.triggers.remove(trigger)
            details.append(f"trigger {trigger.type} {trigger.id} removed")
    # Positions are unique per routine: park the survivors out of the way first.
    for offset, (trigger, _config, is_new) in enumerate(final):
        if not is_new:
            trigger.position = -1 - offset
    session.flush()
    for position, (trigger, config, is_new) in enumerate(final):
        trigger.position = position
        if is_new:
            trigger.config = config
            _arm(wanted, f"{label}.triggers[{position}]", trigger, now)
            routine.triggers.append(trigger)
            details.append(f"{_describe_trigger(trigger)} added")
        elif trigger.config != config:
            trigger.config = config
            _arm(wanted, f"{label}.triggers[{position}]", trigger, now)
            details.append(f"{_describe_trigger(trigger)} changed")
    return details


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"
