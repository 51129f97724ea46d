"""Configuration: every setting routined reads from its environment, declared once.

Each setting is a `ROUTINED_…` variable (the model API keeps Anthropic's own names)
with a default and a line of help. A secret may also come from a file named by the
same variable with `_FILE` appended, and never prints its value.

Over 500 lines and still one concept: every setting, its default and its help, in one
list an operator can read top to bottom.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from routined.errors import BadInput

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIB = 1024**2
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_UNITS |= {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?)?b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size such as `4GiB`, `512M`, `1.5g` or `1048576`; ValueError if it is
    not one. Binary units (KiB, MiB, GiB, TiB) are powers of 1024, the others of 1000."""
    found = _SIZE.fullmatch(str(text))
    if found is None:
        raise ValueError(f"{text!r} is not a size; write one such as 4GiB, 512MiB or 2G")
    number, unit = found.groups()
    return int(float(number) * _UNITS[(unit or "").lower()])


class Secret:
    """A value that hides itself when printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class ConfigError(BadInput, ValueError):
    """A setting has a value routined cannot use."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("ROUTINED_HOME", "./.routined", "Directory for the embedded database and run files."),
    Setting(
        "ROUTINED_DATABASE_URL",
        None,
        "SQLAlchemy URL of the store; default: SQLite at $ROUTINED_HOME/routined.db "
        "(processes take turns to write on `routined.db-writer` beside it). "
        "Use postgresql+psycopg://… for PostgreSQL.",
        secret=True,
    ),
    Setting("ROUTINED_HOST", "127.0.0.1", "Address `routined serve` listens on."),
    Setting("ROUTINED_PORT", "8080", "Port `routined serve` listens on."),
    Setting(
        "ROUTINED_PUBLIC_URL",
        None,
        "Base of the URLs routined hands out (sessions, fire endpoints); "
        "default: the address `serve` listens on, which it records in its home for "
        "every other command on the same home.",
    ),
    Setting("ROUTINED_WORKERS", "2", "How many runs one process executes at once."),
    Setting(
        "ROUTINED_POLL_INTERVAL",
        "1.0",
        "Most seconds before runs queued, schedules changed and GitHub deliveries recorded "
        "by other processes are seen.",
    ),
    Setting(
        "ROUTINED_TIMEZONE",
        "UTC",
        "IANA time zone of schedule triggers that do not name one.",
    ),
    Setting(
        "ROUTINED_MIN_SCHEDULE_INTERVAL",
        "3600",
        "Seconds a schedule must leave between two fires; `apply` refuses faster ones.",
    ),
    Setting(
        "ROUTINED_SCHEDULE_GRACE",
        "300",
        "Seconds after its instant a scheduled fire still counts as on time; later "
        "(after downtime) the routine's catch_up policy decides.",
    ),
    Setting(
        "ROUTINED_ACCEPTED_BETAS",
        "experimental-cc-routine-2026-04-01",
        "Dated `anthropic-beta` versions of the fire API, comma-separated; the newest "
        "and the two before it are accepted.",
    ),
    Setting(
        "ROUTINED_PLANS",
        "pro:5,max:15,team:25,enterprise:25,unlimited:none",
        "Plans as NAME:RUNS_PER_DAY (or NAME:none), comma-separated.",
    ),
    Setting(
        "ROUTINED_ROUTINE_HOURLY_CAP",
        "30",
        "Runs a routine may start in a clock hour by hand and over the API together.",
    ),
    Setting(
        "ROUTINED_ACCOUNT_API_HOURLY_CAP",
        "100",
        "Runs an account may start in a clock hour over the API.",
    ),
    Setting(
        "ROUTINED_MAX_QUEUED_RUNS",
        "1000",
        "Queued runs at which the fire API answers 503 overloaded_error.",
    ),
    Setting(
        "ROUTINED_GATE_MODEL",
        "claude-haiku-4-5",
        "Model that answers triage gates (`gate:` on a trigger).",
    ),
    Setting(
        "ROUTINED_GATE_BASE_URL",
        None,
        "Messages API the gate asks; default: ANTHROPIC_BASE_URL.",
    ),
    Setting("ROUTINED_GITHUB_APP_ID", None, "The GitHub App's id, for its JWTs."),
    Setting(
        "ROUTINED_GITHUB_PRIVATE_KEY_FILE",
        None,
        "PEM file of the GitHub App's private key; it mints installation tokens and never "
        "enters a sandbox.",
    ),
    Setting(
        "ROUTINED_GITHUB_WEBHOOK_SECRET",
        None,
        "The GitHub App's webhook secret; deliveries without its signature get 401.",
        secret=True,
    ),
    Setting(
        "ROUTINED_GITHUB_API_URL",
        "https://api.github.com",
        "GitHub's REST API; for GitHub Enterprise Server, https://HOST/api/v3.",
    ),
    Setting("ROUTINED_GITHUB_URL", "https://github.com", "GitHub's web and git address."),
    Setting(
        "ROUTINED_GITHUB_ROUTINE_HOURLY_CAP",
        "30",
        "Runs GitHub events may start per routine in a clock hour; events past it are dropped.",
    ),
    Setting(
        "ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP",
        "100",
        "Runs GitHub events may start per account in a clock hour; events past it are dropped.",
    ),
    Setting(
        "ROUTINED_RUN_TIMEOUT",
        "3600",
        "Seconds a run may take when its routine sets no `limits.max_duration`.",
    ),
    Setting(
        "ROUTINED_SETUP_CACHE_MAX_AGE",
        "604800",
        "Seconds a cached setup script result is reused before the script runs again.",
    ),
    Setting(
        "ROUTINED_RUN_FILES_MAX_AGE",
        "604800",
        "Seconds after a run ended that its folder (the agent's home with its transcript, "
        "an undelivered workspace) is kept under $ROUTINED_HOME/runs; then it is removed "
        "(inf: kept for good).",
    ),
    Setting(
        "ROUTINED_SECRET_KEY",
        None,
        "Key that encrypts stored secrets (a Fernet key: `routined secret key` makes one); "
        "NEW,OLD while rotating (`routined secret rotate`); default: one made at first use "
        "in $ROUTINED_HOME/secret.key.",
        secret=True,
    ),
    Setting(
        "ROUTINED_HEARTBEAT_INTERVAL",
        "10",
        "Seconds between a worker's heartbeats on the runs it holds.",
    ),
    Setting(
        "ROUTINED_LOST_AFTER",
        "120",
        "Seconds without a heartbeat after which an active run is ended as lost.",
    ),
    Setting(
        "ROUTINED_CLAUDE_PATH",
        None,
        "Claude Code binary; default: the one bundled with claude-agent-sdk.",
    ),
    Setting(
        "ROUTINED_SANDBOX_UID",
        "65533",
        "Host user id (and group id) a sandbox's processes run as when routined runs as "
        "root, so nothing the agent makes is root's; 65533 is in the range Debian reserves "
        "and never hands out. Not root (0), nor a user who owns anything.",
    ),
    Setting(
        "ROUTINED_RUN_MEMORY",
        "4GiB",
        "Memory a run's sandbox may use (its processes and their temporary files) when its "
        "routine sets no `limits.memory`.",
    ),
    Setting(
        "ROUTINED_RUN_PIDS",
        "1024",
        "Processes and threads a run's sandbox may have at once when its routine sets no "
        "`limits.pids`.",
    ),
    Setting(
        "ROUTINED_RUN_DISK",
        "10GiB",
        "Disk a run's folders (workspace, home, temporary files) may fill when its routine "
        "sets no `limits.disk`.",
    ),
    Setting(
        "ROUTINED_RUN_CPUS",
        "1",
        "Cores a run's sandbox may keep busy when its routine sets no `limits.cpu`.",
    ),
    Setting(
        "ROUTINED_ALLOW_PRIVATE_NETWORKS",
        "",
        "Addresses an account's routines may reach although they are private (CIDR "
        "networks, comma-separated, e.g. 10.20.0.0/16,fd12::/64). By default routines "
        "applied with an account's key reach public addresses only; the operator's reach "
        "anything.",
    ),
    Setting("ROUTINED_GIT_AUTHOR_NAME", "routined", "Author of commits routined makes."),
    Setting("ROUTINED_GIT_AUTHOR_EMAIL", "routined@localhost", "Email of commits routined makes."),
    Setting(
        "ANTHROPIC_BASE_URL",
        "https://api.anthropic.com",
        "Model API the agent's requests go to, through routined's gateway.",
    ),
    Setting(
        "ANTHROPIC_API_KEY",
        None,
        "Model API key. The agent never holds it: routined's gateway adds it to the "
        "agent's model requests.",
        secret=True,
    ),
)


def _read(env: Mapping[str, str], setting: Setting) -> str | None:
    value = env.get(setting.name)
    if value is None and setting.secret:
        file_name = env.get(setting.name + "_FILE")
        if file_name:
            try:
                value = Path(file_name).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{setting.name}_FILE: cannot read {file_name}: {exc.strerror}"
                ) from exc
    return setting.default if value is None else value


def _number(name: str, raw: str, kind: Callable[[str], Any], minimum: float) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if value != value:  # NaN passes every comparison below
        raise ConfigError(f"{name}: {raw!r} is not a number")
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: Secret
    host: str
    port: int
    public_url: str
    workers: int
    poll_interval: float
    timezone: str
    min_schedule_interval: float
    schedule_grace: float
    accepted_betas: tuple[str, ...]
    plans: str
    routine_hourly_cap: int
    account_api_hourly_cap: int
    max_queued_runs: int
    gate_model: str
    gate_base_url: str
    github_app_id: str | None
    github_private_key_file: Path | None
    github_webhook_secret: Secret
    github_api_url: str
    github_url: str
    github_routine_hourly_cap: int
    github_account_hourly_cap: int
    run_timeout: float
    setup_cache_max_age: float
    run_files_max_age: float
    secret_key: Secret
    heartbeat_interval: float
    lost_after: float
    claude_path: Path | None
    sandbox_uid: int
    run_memory: int
    run_pids: int
    run_disk: int
    run_cpus: float
    allow_private_networks: tuple[IPNetwork, ...]
    git_author_name: str
    git_author_email: str
    anthropic_base_url: str
    anthropic_api_key: Secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw = {s.name: _read(env, s) for s in SETTINGS}

        def text(name: str) -> str:
            return raw[name] or ""

        # Named once: the check is handed the name too, for its error to say which setting.
        def number(name: str, kind: Callable[[str], Any], minimum: float) -> Any:
            return _number(name, text(name), kind, minimum)

        home = Path(raw["ROUTINED_HOME"] or ".routined").expanduser().absolute()
        host = raw["ROUTINED_HOST"] or "127.0.0.1"
        port = number("ROUTINED_PORT", int, 0)
        database_url = raw["ROUTINED_DATABASE_URL"] or f"sqlite:///{home / 'routined.db'}"
        model_api = _http_url("ANTHROPIC_BASE_URL", text("ANTHROPIC_BASE_URL"))
        return cls(
            home=home,
            database_url=Secret(database_url),
            host=host,
            port=port,
            public_url=(
                raw["ROUTINED_PUBLIC_URL"] or served_at(home) or listen_url(host, port)
            ).rstrip("/"),
            workers=number("ROUTINED_WORKERS", int, 1),
            poll_interval=number("ROUTINED_POLL_INTERVAL", float, 0.05),
            timezone=_zone("ROUTINED_TIMEZONE", raw["ROUTINED_TIMEZONE"] or "UTC"),
            min_schedule_interval=number("ROUTINED_MIN_SCHEDULE_INTERVAL", float, 60),
            schedule_grace=number("ROUTINED_SCHEDULE_GRACE", float, 1),
            accepted_betas=_betas(text("ROUTINED_ACCEPTED_BETAS")),
            plans=_plans(text("ROUTINED_PLANS")),
            routine_hourly_cap=number("ROUTINED_ROUTINE_HOURLY_CAP", int, 0),
            account_api_hourly_cap=number("ROUTINED_ACCOUNT_API_HOURLY_CAP", int, 0),
            max_queued_runs=number("ROUTINED_MAX_QUEUED_RUNS", int, 1),
            gate_model=raw["ROUTINED_GATE_MODEL"] or "claude-haiku-4-5",
            gate_base_url=(
                _http_url("ROUTINED_GATE_BASE_URL", raw["ROUTINED_GATE_BASE_URL"])
                if raw["ROUTINED_GATE_BASE_URL"]
                else model_api
            ),
            github_app_id=raw["ROUTINED_GITHUB_APP_ID"] or None,
            github_private_key_file=_path(raw["ROUTINED_GITHUB_PRIVATE_KEY_FILE"]),
            github_webhook_secret=Secret(text("ROUTINED_GITHUB_WEBHOOK_SECRET")),
            github_api_url=_http_url("ROUTINED_GITHUB_API_URL", text("ROUTINED_GITHUB_API_URL")),
            github_url=_http_url("ROUTINED_GITHUB_URL", text("ROUTINED_GITHUB_URL")),
            github_routine_hourly_cap=number("ROUTINED_GITHUB_ROUTINE_HOURLY_CAP", int, 0),
            github_account_hourly_cap=number("ROUTINED_GITHUB_ACCOUNT_HOURLY_CAP", int, 0),
            run_timeout=number("ROUTINED_RUN_TIMEOUT", float, 1),
            setup_cache_max_age=number("ROUTINED_SETUP_CACHE_MAX_AGE", float, 0),
            run_files_max_age=number("ROUTINED_RUN_FILES_MAX_AGE", float, 0),
            secret_key=Secret(text("ROUTINED_SECRET_KEY")),
            heartbeat_interval=number("ROUTINED_HEARTBEAT_INTERVAL", float, 0.1),
            lost_after=number("ROUTINED_LOST_AFTER", float, 1),
            claude_path=_path(raw["ROUTINED_CLAUDE_PATH"]),
            sandbox_uid=_sandbox_uid(text("ROUTINED_SANDBOX_UID")),
            run_memory=_size("ROUTINED_RUN_MEMORY", text("ROUTINED_RUN_MEMORY"), 64 * MIB),
            run_pids=number("ROUTINED_RUN_PIDS", int, 16),
            run_disk=_size("ROUTINED_RUN_DISK", text("ROUTINED_RUN_DISK"), 64 * MIB),
            run_cpus=number("ROUTINED_RUN_CPUS", float, 0.05),
            allow_private_networks=_networks(
                "ROUTINED_ALLOW_PRIVATE_NETWORKS", text("ROUTINED_ALLOW_PRIVATE_NETWORKS")
            ),
            git_author_name=raw["ROUTINED_GIT_AUTHOR_NAME"] or "routined",
            git_author_email=raw["ROUTINED_GIT_AUTHOR_EMAIL"] or "routined@localhost",
            anthropic_base_url=model_api,
            anthropic_api_key=Secret(text("ANTHROPIC_API_KEY")),
        )

    def with_listen_address(self, host: str, port: int, env: Mapping[str, str]) -> Settings:
        """The settings `serve` runs with once it knows where it listens."""
        public_url = env.get("ROUTINED_PUBLIC_URL") or listen_url(host, port)
        return replace(self, host=host, port=port, public_url=public_url.rstrip("/"))

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def secure_home(home: Path) -> None:
    """Make routined's home its own alone, whatever the umask it was made under: the
    folder 0700, and the store, keys and folders in it closed to group and others.

    Files routined makes from now on are private too (the umask `routined` runs
    with, see `cli.main`); this mends a home an older version or a looser umask
    made. Only what routined's user owns is changed.
    """
    try:
        info = home.stat()
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid():
        return
    home.chmod(0o700)
    for entry in home.iterdir():
        try:
            found = entry.lstat()
        except FileNotFoundError:
            continue
        if found.st_uid == os.geteuid() and not entry.is_symlink() and found.st_mode & 0o077:
            entry.chmod(found.st_mode & 0o7700)


# Where `routined serve` writes the URL it serves at, so that every command on its
# store prints the same session and fire URLs (a server on --port 54431, not 8080).
SERVED_AT = "served-at"


def served_at(home: Path) -> str | None:
    """The URL the server of this home last served at, if it said; None otherwise."""
    try:
        said = (home / SERVED_AT).read_text(errors="replace")[:2048].strip()
    except OSError:
        return None
    return said if urlsplit(said).scheme in ("http", "https") and "\n" not in said else None


def record_served_at(home: Path, public_url: str) -> None:
    partial = home / f".{SERVED_AT}.partial"
    partial.write_text(public_url + "\n")
    partial.replace(home / SERVED_AT)


def listen_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - formatting only
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{name}: {raw!r} is not an http(s) URL such as https://api.anthropic.com"
        )
    return raw.rstrip("/")


_DATED = re.compile(r".*-(\d{4}-\d{2}-\d{2})")


def _betas(raw: str) -> tuple[str, ...]:
    """The newest three dated versions: a new one keeps the two before it working."""
    betas = [beta.strip() for beta in raw.split(",") if beta.strip()]
    undated = [beta for beta in betas if not _DATED.fullmatch(beta)]
    if not betas or undated:
        raise ConfigError(
            f"ROUTINED_ACCEPTED_BETAS: {', '.join(undated) or 'empty'}: give dated versions "
            "such as experimental-cc-routine-2026-04-01"
        )
    newest = sorted(set(betas), key=lambda beta: _DATED.fullmatch(beta).group(1))  # type: ignore[union-attr]
    return tuple(newest[-3:])


def _plans(raw: str) -> str:
    from routined.limits import PlanError, parse_plans

    try:
        parse_plans(raw)
    except PlanError as error:
        raise ConfigError(f"ROUTINED_PLANS: {error}") from None
    return raw


def _zone(name: str, raw: str) -> str:
    try:
        ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{name}: {raw!r} is not an IANA time zone; use a name such as Europe/Berlin"
        ) from None
    return raw


def _size(name: str, raw: str, minimum: int) -> int:
    try:
        value = parse_size(raw)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum // MIB} MiB, got {raw!r}")
    return value


def _sandbox_uid(raw: str) -> int:
    uid = _number("ROUTINED_SANDBOX_UID", raw, int, 1)
    if uid >= 2**31 - 1:
        raise ConfigError(f"ROUTINED_SANDBOX_UID: {raw!r} is past the largest usable id")
    return int(uid)


def _networks(name: str, raw: str) -> tuple[IPNetwork, ...]:
    networks = []
    for part in (piece.strip() for piece in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: {part!r} is not a network; write CIDR networks such as 10.20.0.0/16"
            ) from None
    return tuple(networks)


def _path(raw: str | None) -> Path | None:
    return Path(raw).expanduser().absolute() if raw else None
