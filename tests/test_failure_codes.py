"""The failure codes a run's `error` starts with are one enum, and docs/runs.md lists
exactly its members."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from routined.runs import large_files, outbox
from routined.runs.failure import Failure
from routined.sandbox import resources

RUNS_MD = Path(__file__).parent.parent / "docs" / "runs.md"


def documented_codes() -> list[str]:
    """The first cell of each row of the `| error code | cause |` table."""
    lines = RUNS_MD.read_text().splitlines()
    start = lines.index("| error code | cause |")
    codes = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        found = re.match(r"\| `([a-z_]+)` \|", line)
        assert found is not None, f"a row of the error code table names no code: {line}"
        codes.append(found.group(1))
    return codes


def test_docs_list_exactly_the_failure_codes() -> None:
    documented = documented_codes()
    assert len(documented) == len(set(documented))
    assert set(documented) == {code.value for code in Failure}


def test_the_codes_the_helpers_emit_are_failure_codes() -> None:
    caps = typing.get_args(typing.get_type_hints(resources.Breach)["code"])
    assert set(caps) <= {code.value for code in Failure}
    assert outbox.UnsafeObjects.code in {code.value for code in Failure}
    assert large_files.FileTooLarge.code in {code.value for code in Failure}


def test_a_failure_code_formats_as_its_value() -> None:
    assert f"{Failure.AGENT_FAILED}: x" == "agent_failed: x"
