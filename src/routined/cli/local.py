"""The management API of the store here, answered in this process for the operator.

Most calls go through the server's own app (`routined.http.app`), built on first use. The
listings people run most (`routined list`, `routined runs`) are answered by calling
the same `routined.operations` function the app's route calls: building the app means
importing FastAPI and the whole server, several times what the listing itself costs.
A test holds both ways to the same JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter

from routined.api_keys import Principal
from routined.cli.common import Unanswered, fail
from routined.http.problem import ANSWERED, problem_of
from routined.operations import routines, runs
from routined.operations.access import perform
from routined.schemas import RoutineOut, RunOut

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.orm import Session

    from routined.config import Settings
    from routined.db import Store


# The management router's bounds for `limit` (`routined.http.management`, `Limit`).
_LIMITS = range(1, 1001)


class Local:
    """The store here and what answers its management API in this process."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def answer(
        self, method: str, path: str, params: dict[str, Any], *, explain: Callable[[str], str]
    ) -> Any:
        """What the app answers to this call, if it is one answered here; an error ends
        the command with its message, as the app's error answer does. Raises
        `Unanswered` for any other call."""
        if any("\x00" in str(value) for value in (path, *params.values())):
            raise Unanswered  # the app refuses it, in its words
        operation, shape = self._route(method, path, params)
        try:
            found = perform(self.store, operation, readonly=True)
        except ANSWERED as error:  # worded as the app answers it
            fail(explain(problem_of(error).message))
        # As the app's route writes it: through its response model, as JSON.
        return shape.dump_python(shape.validate_python(found), mode="json", by_alias=True)

    def _route(
        self, method: str, path: str, params: dict[str, Any]
    ) -> tuple[Callable[[Session], Any], TypeAdapter[Any]]:
        who = Principal.local()
        match method, path, params:
            case "GET", "/routines", {}:
                return (
                    lambda session: routines.list_routines(session, who),
                    TypeAdapter(list[RoutineOut]),
                )
            case "GET", "/runs", {"limit": int(limit), **rest} if limit in _LIMITS and set(
                rest
            ) <= {"routine"}:
                routine = rest.get("routine")
                return (
                    lambda session: runs.list_runs(
                        session, who, routine=routine, limit=limit, settings=self.settings
                    ),
                    TypeAdapter(list[RunOut]),
                )
        raise Unanswered

    def app_client(self) -> httpx.AsyncClient:
        """An HTTP client of the server's app, served in this process."""
        import httpx

        from routined.http.app import create_app
        from routined.timeutil import utcnow

        app = create_app(self.store, self.settings, clock=utcnow, principal=Principal.local)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://routined.local"
        )
