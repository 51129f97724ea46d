"""Where the GitHub App is installed, as GitHub's installation events tell routined:
which installations exist, which repositories each covers, which are suspended."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from routined.db import table_of
from routined.models import Installation, InstallationRepository

# The events about installations themselves, not about a repository's contents.
EVENTS = ("installation", "installation_repositories")


def track(session: Session, event: str, payload: dict[str, Any], *, now: datetime) -> str:
    """Keep `installations` as GitHub tells: created, deleted, suspended, repositories
    added and removed."""
    installation = payload.get("installation")
    if not isinstance(installation, dict) or not isinstance(installation.get("id"), int):
        return f"{event} names no installation; nothing recorded"
    action = payload.get("action")
    installation_id = installation["id"]
    if event == "installation" and action == "deleted":
        session.execute(delete(Installation).where(Installation.id == installation_id))
        return f"installation {installation_id} deleted"
    row = session.get(Installation, installation_id)
    account = installation.get("account")
    account = account if isinstance(account, dict) else {}
    if row is None:
        row = Installation(id=installation_id, updated_at=now)
        session.add(row)
    row.account_login = str(account.get("login", ""))
    row.repository_selection = str(installation.get("repository_selection", "selected"))
    row.updated_at = now
    if action == "suspend":
        row.suspended_at = now
    elif action == "unsuspend":
        row.suspended_at = None
    session.flush()
    added = _names(payload.get("repositories")) + _names(payload.get("repositories_added"))
    removed = _names(payload.get("repositories_removed"))
    for name in added:
        learn(session, installation_id, name, now=now)
    if removed:
        session.execute(
            delete(InstallationRepository).where(
                InstallationRepository.installation_id == installation_id,
                InstallationRepository.repository.in_(removed),
            )
        )
    changes = [f"{len(added)} repositories added"] * bool(added) + [
        f"{len(removed)} removed"
    ] * bool(removed)
    return f"installation {installation_id} ({row.account_login}) {action}" + (
        f": {', '.join(changes)}" if changes else ""
    )


def installed_on(session: Session, repository: str) -> bool:
    """Whether the app is known to be installed, and not suspended, on `repository`."""
    return (
        session.scalar(
            select(InstallationRepository.installation_id)
            .join(Installation)
            .where(
                InstallationRepository.repository == repository.lower(),
                Installation.suspended_at.is_(None),
            )
            .limit(1)
        )
        is not None
    )


def knows(session: Session, installation_id: int, repository: str) -> bool:
    """Whether routined knows the installation covers the repository."""
    return (
        session.execute(
            select(InstallationRepository.installation_id).where(
                InstallationRepository.installation_id == installation_id,
                InstallationRepository.repository == repository.lower(),
            )
        ).first()
        is not None
    )


def learn(session: Session, installation_id: int, repository: str, *, now: datetime) -> None:
    """Remember that the installation covers the repository (its events say so).
    Upserts: matchers in two processes may learn the same thing at once."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(table_of(Installation))
        .values(
            id=installation_id,
            account_login=repository.split("/")[0],
            repository_selection="selected",
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    session.execute(
        insert(table_of(InstallationRepository))
        .values(installation_id=installation_id, repository=repository.lower())
        .on_conflict_do_nothing()
    )


def _names(repositories: Any) -> list[str]:
    if not isinstance(repositories, list):
        return []
    return [
        r["full_name"].lower()
        for r in repositories
        if isinstance(r, dict) and isinstance(r.get("full_name"), str)
    ]
