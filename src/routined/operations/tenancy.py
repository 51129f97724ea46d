"""What an account's key may put in the routines it applies (`for_principal`): its own
account's routines only, and nothing that would run with the server's own reach. What
is refused is a `routines.spec.SpecError` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from routined import reach
from routined.api_keys import Principal
from routined.models import Account, Routine
from routined.routines.spec import GitHubTriggerSpec, RoutinesFile, RoutineSpec, SpecError
from routined.sandbox import resources


def for_principal(
    session: Session,
    principal: Principal,
    spec: RoutinesFile,
    *,
    allowed: Sequence[reach.Network] = (),
    caps: resources.Caps | None = None,
) -> RoutinesFile:
    """A key's routines are its account's: unnamed accounts become it, other accounts
    are unknown, and a name another account uses is taken.

    What runs with the server's own reach stays the operator's: an account's key
    may name only https repositories on public hosts (not the server's paths, its
    SSH keys or its network), hosts and connectors on public addresses (or in the
    private networks the operator `allowed`), no GitHub triggers, pull requests or
    comments (they act as the operator's GitHub App, whose installations are not
    tied to one account), and no more of the machine than the server's `caps`.
    """
    if principal.account_id is None:
        return spec
    own = session.get_one(Account, principal.account_id).name
    wanted = []
    named: list[_Named] = []
    for index, routine in enumerate(spec.routines):
        label = f"request: routines[{index}] ({routine.name})"
        if "account" not in routine.model_fields_set:
            routine = routine.model_copy(update={"account": own})
        elif routine.account != own:
            raise SpecError(f"{label}.account: there is no account {routine.account!r}")
        holder = session.scalar(select(Routine.account_id).where(Routine.name == routine.name))
        if holder is not None and holder != principal.account_id:
            raise SpecError(f"{label}.name: the name is taken; choose another")
        if not principal.operator:
            named += _hosts_named(label, routine)
            _within_share(label, routine, caps)
        wanted.append(routine)
    _within_reach(named, allowed)
    return RoutinesFile(routines=wanted)


_REPOSITORIES = (
    "an account's key may name https repositories on public hosts; ask the operator for "
    "anything else"
)
_HOSTS = "an account's key may name public hosts only; ask the operator for anything else"


@dataclass(frozen=True)
class _Named:
    """A host a routine names, where, and what an account's key may name there."""

    field: str
    host: str
    rule: str


def _hosts_named(label: str, routine: RoutineSpec) -> list[_Named]:
    """The hosts an account's routine would have the server reach, for
    `_within_reach`; what may not be named at all is refused here."""
    named = []
    for number, repository in enumerate(routine.repositories):
        field = f"{label}.repositories[{number}].url"
        try:
            host, _port = reach.endpoint(repository.url, schemes=("https",))
        except reach.Unreachable as error:
            raise SpecError(f"{field}: {error}; {_REPOSITORIES}") from None
        named.append(_Named(field, host, _REPOSITORIES))
    for number, entry in enumerate(routine.environment.allowed_hosts):
        field = f"{label}.environment.allowed_hosts[{number}]"
        host, wildcard = reach.entry_host(entry)
        if wildcard and reach.names_this_machine(host):
            raise SpecError(f"{field}: {entry} names this machine; {_HOSTS}")
        if not wildcard:  # *.domain names no one host: judged at each connection
            named.append(_Named(field, host, _HOSTS))
    for name, connector in routine.connectors.items():
        if connector.url is None:
            continue
        field = f"{label}.connectors.{name}.url"
        try:
            host, _port = reach.endpoint(connector.url)
        except reach.Unreachable as error:
            raise SpecError(f"{field}: {error}; {_HOSTS}") from None
        named.append(_Named(field, host, _HOSTS))
    for number, trigger in enumerate(routine.triggers):
        if isinstance(trigger, GitHubTriggerSpec):
            raise SpecError(
                f"{label}.triggers[{number}]: GitHub triggers are applied by the operator "
                "(routined apply on the server, or an admin key of the default account)"
            )
    return named


def _within_share(label: str, routine: RoutineSpec, caps: resources.Caps | None) -> None:
    """Refuse what an account's routine may not ask for: to act as the operator's
    GitHub App, or more of the machine than the server's caps (runs are held to
    them anyway)."""
    for field in ("pull_requests", "comment"):
        if getattr(routine, field):
            raise SpecError(
                f"{label}.{field}: pull requests and comments are made as the operator's "
                "GitHub App, which an account's key may not act as; ask the operator"
            )
    if caps is None:
        return
    for field, most, shown in (
        ("memory", caps.memory, resources.format_size(caps.memory)),
        ("pids", caps.pids, str(caps.pids)),
        ("disk", caps.disk, resources.format_size(caps.disk)),
        ("cpu", caps.cpu, f"{caps.cpu:g}"),
    ):
        asked = getattr(routine.limits, field)
        if asked is not None and asked > most:
            raise SpecError(
                f"{label}.limits.{field}: an account's routine may ask at most {shown} "
                "(the server's default); ask the operator for more"
            )


def _within_reach(named: Sequence[_Named], allowed: Sequence[reach.Network]) -> None:
    """Refuse the first host that resolves to an address an account may not reach
    (see `routined.reach`); a name that does not resolve now is judged at each
    connection instead. The answer is the same whatever the port."""
    refused = reach.refused_now((place.host for place in named), allowed)
    for place in named:
        why = refused.get(place.host)
        if why is not None:
            raise SpecError(f"{place.field}: {why}; {place.rule}")
