"""Which environment variable names a routine may give its runs, decided in one place for
variables and secrets alike, because the sandbox and the agent set some names themselves."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"

# The sandbox sets these itself; a routine's value would break it or slip past it
# (a proxy variable routes around the egress filter, LD_PRELOAD runs code first).
RESERVED: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "TERM",
        "SHELL",
        "USER",
        "IS_SANDBOX",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "NO_PROXY",
        "no_proxy",
    }
)
# Claude Code and routined read their settings from these.
RESERVED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "ROUTINED_")


def check_variable_name(name: str) -> None:
    """Refuse a name a routine may not use as a variable or secret (ValueError)."""
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(
            f"{name!r} is not a variable name: use letters, digits and '_', not starting "
            "with a digit, at most 100 characters"
        )
    if name in RESERVED:
        raise ValueError(f"{name!r} is set by the sandbox itself; choose another name")
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"{name!r}: names starting with {', '.join(RESERVED_PREFIXES)} are Claude Code's "
            "and routined's own; choose another name"
        )
