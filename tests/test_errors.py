"""Every error routined raises on purpose is of one kind, and still what it was."""

from __future__ import annotations

import pytest

from routined.config import ConfigError
from routined.errors import BadInput, NotAllowed, OutsideFailure, RoutinedError
from routined.github.app import ForgeError
from routined.github.events import KeyTemplateError
from routined.jsonbody import UnfitJson
from routined.limits import PlanError
from routined.reach import Unreachable
from routined.routines.spec import SpecError
from routined.sandbox.bubblewrap import SandboxUnavailable
from routined.sandbox.resources import ResourceError
from routined.schedules.timing import ScheduleError
from routined.secrets.tree_redaction import RedactionError
from routined.secrets.vault import VaultError
from routined.workspace import GitError

KINDS = (BadInput, NotAllowed, OutsideFailure)


@pytest.mark.parametrize(
    ("error", "kind", "builtin"),
    [
        (ConfigError, BadInput, ValueError),
        (PlanError, BadInput, ValueError),
        (ScheduleError, BadInput, ValueError),
        (SpecError, BadInput, ValueError),
        (UnfitJson, BadInput, ValueError),
        (KeyTemplateError, BadInput, ValueError),
        (Unreachable, NotAllowed, ValueError),
        (GitError, OutsideFailure, RuntimeError),
        (ForgeError, OutsideFailure, RuntimeError),
        (SandboxUnavailable, OutsideFailure, RuntimeError),
        (ResourceError, OutsideFailure, RuntimeError),
        (RedactionError, OutsideFailure, OSError),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)),
)
def test_each_error_is_of_one_kind_and_keeps_its_builtin_base(
    error: type[Exception], kind: type[RoutinedError], builtin: type[Exception]
) -> None:
    assert [k for k in KINDS if issubclass(error, k)] == [kind]
    # Code that caught the built-in base before catches it still.
    assert issubclass(error, builtin)


def test_a_vault_error_is_routineds_own() -> None:
    assert issubclass(VaultError, RoutinedError)
    assert not any(issubclass(VaultError, kind) for kind in KINDS)
