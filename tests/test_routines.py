"""Routines as code: the YAML format, its errors, and idempotent apply."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from routined.db import Store
from routined.models import Routine, Trigger
from routined.routines.apply import apply
from routined.routines.load import load
from routined.routines.spec import SpecError
from tests.conftest import T0

EXAMPLE = """\
routines:
  - name: docs-nightly
    prompt: |
      Update the changelog from the merged pull requests.
    model: claude-sonnet-4-5        # optional
    repositories:
      - url: {url}
    triggers:
      - type: api
"""


def write(tmp_path: Path, text: str, name: str = "routines.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def apply_file(store: Store, path: Path) -> list[str]:
    spec = load(path, now=T0)
    with store.transaction() as session:
        return [change.describe() for change in apply(session, spec, now=T0)]


def stored(store: Store, name: str) -> Routine:
    with store.transaction() as session:
        routine = session.scalar(
            select(Routine)
            .where(Routine.name == name)
            .options(selectinload(Routine.repositories), selectinload(Routine.triggers))
        )
    assert routine is not None
    return routine


def test_apply_creates_then_reports_unchanged(store: Store, tmp_path: Path, origin: Path) -> None:
    path = write(tmp_path, EXAMPLE.format(url=origin))
    first = apply_file(store, path)
    assert len(first) == 1 and first[0].startswith(
        "docs-nightly created: 1 repository; trigger api trig_"
    )
    routine = stored(store, "docs-nightly")
    assert routine.prompt == "Update the changelog from the merged pull requests.\n"
    assert routine.model == "claude-sonnet-4-5"
    assert [r.url for r in routine.repositories] == [str(origin)]
    assert apply_file(store, path) == ["docs-nightly unchanged"]


def test_apply_updates_in_place_and_keeps_trigger_ids(
    store: Store, tmp_path: Path, origin: Path
) -> None:
    apply_file(store, write(tmp_path, EXAMPLE.format(url=origin)))
    trigger_id = stored(store, "docs-nightly").triggers[0].id
    changed = (
        EXAMPLE.format(url=origin)
        .replace("changelog", "release notes")
        .replace("    model: claude-sonnet-4-5        # optional\n", "")
    )
    result = apply_file(store, write(tmp_path, changed))
    assert result == ["docs-nightly updated: prompt changed; model claude-sonnet-4-5 → default"]
    routine = stored(store, "docs-nightly")
    assert [t.id for t in routine.triggers] == [trigger_id]
    assert routine.model is None


def test_apply_adds_and_removes_triggers(store: Store, tmp_path: Path, origin: Path) -> None:
    apply_file(store, write(tmp_path, EXAMPLE.format(url=origin)))
    first_id = stored(store, "docs-nightly").triggers[0].id
    two = EXAMPLE.format(url=origin) + "      - type: api\n"
    result = apply_file(store, write(tmp_path, two))
    assert result[0].startswith("docs-nightly updated: trigger api trig_") and "added" in result[0]
    assert stored(store, "docs-nightly").triggers[0].id == first_id
    none = EXAMPLE.format(url=origin).replace("    triggers:\n      - type: api\n", "")
    result = apply_file(store, write(tmp_path, none))
    assert result[0].count("removed") == 2
    with store.transaction() as session:
        assert session.scalars(select(Trigger)).all() == []


def test_relative_repository_paths_are_taken_from_the_files_folder(
    store: Store, tmp_path: Path, origin: Path
) -> None:
    relative = origin.relative_to(tmp_path)
    apply_file(store, write(tmp_path, EXAMPLE.format(url=relative)))
    assert stored(store, "docs-nightly").repositories[0].url == str(origin)


def test_git_urls_are_kept_as_written(store: Store, tmp_path: Path) -> None:
    for url in ("https://github.com/acme/app.git", "git@github.com:acme/app.git"):
        apply_file(store, write(tmp_path, EXAMPLE.format(url=url)))
        assert stored(store, "docs-nightly").repositories[0].url == url


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("type: api", "type: webhook", "routines[0] (docs-nightly).triggers[0].type: unknown trigger type 'webhook'; supported: api"),
        ("    prompt: |\n      Update the changelog from the merged pull requests.\n", "", "routines[0] (docs-nightly).prompt: required field is missing"),
        ("name: docs-nightly", "name: docs nightly!", "routines[0] (docs nightly!).name: names use letters"),
        ("    model:", "    colour: blue\n    model:", "routines[0] (docs-nightly).colour: unknown field; remove it or check its spelling"),
        ("      - url: {url}\n", "", "routines[0] (docs-nightly).repositories: list at least one repository, as `- url: <git URL or path>`"),
        ("{url}", "./missing.git", "routines[0] (docs-nightly).repositories[0].url: './missing.git' is neither a git URL nor an existing path"),
        ("Update the changelog", "   ", "routines[0] (docs-nightly).prompt: is blank; say what the agent should do"),
    ],
)  # fmt: skip
def test_invalid_files_name_the_file_and_field_and_change_nothing(
    store: Store, tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    text = EXAMPLE.replace(replace, by).replace("{url}", str(tmp_path))
    path = write(
        tmp_path, text.replace("from the merged pull requests.", "") if by == "   " else text
    )
    with pytest.raises(SpecError) as caught:
        apply_file(store, path)
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)
    with store.transaction() as session:
        assert session.scalars(select(Routine)).all() == []


# What a new user saw (issue 16): `promt:` for `prompt:` and `- /path` for `- url: /path`.
FIRST_FILE = """\
routines:
  - name: nightly
    promt: Tidy up.
    repositories:
      - {url}
    triggers: [{{type: api}}]
"""


def test_errors_come_in_file_order_each_saying_what_to_write(tmp_path: Path, origin: Path) -> None:
    path = write(tmp_path, FIRST_FILE.format(url=origin))
    with pytest.raises(SpecError) as caught:
        load(path, now=T0)
    # The typo comes first, as in the file, with the spelling it meant; the `prompt`
    # it made missing is not a second error; no line is pydantic's own text.
    assert str(caught.value).splitlines() == [
        f"{path}: routines[0] (nightly).promt: unknown field; did you mean `prompt:`?",
        f"{path}: routines[0] (nightly).repositories[0]: a repository is a mapping; "
        f"write `- url: {origin}`",
    ]


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("      - url: {url}\n", "      - url: {url}\n        bramch_prefix: x/\n", "repositories[0].bramch_prefix: unknown field; did you mean `branch_prefix:`?"),
        ("      - type: api\n", "      - {type: schedule, scedule: hourly}\n", "triggers[0].scedule: unknown field; did you mean `schedule:`?"),
        ("      - type: api\n", "      - {type: api, gat: {prompt: x}}\n", "triggers[0].gat: unknown field; did you mean `gate:`?"),
        ("    model: claude-sonnet-4-5", "    agent: claud", "agent: write 'claude', or a mapping with `command:`"),
        ("    model: claude-sonnet-4-5", "    agent: {comand: [my-agent]}", "agent.comand: unknown field; did you mean `command:`?"),
        ("    model: claude-sonnet-4-5", "    model: [claude]\n    environment: [x]", "environment: expected fields (`key: value`), not a list"),
    ],
)  # fmt: skip
def test_a_misspelt_field_is_answered_with_the_one_it_meant(
    tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    path = write(tmp_path, EXAMPLE.replace(replace, by).replace("{url}", str(tmp_path)))
    with pytest.raises(SpecError) as caught:
        load(path, now=T0)
    assert f"{path}: routines[0] (docs-nightly).{expected}" in str(caught.value).splitlines()


def test_a_file_url_is_checked_at_apply_as_a_path_is(tmp_path: Path, origin: Path) -> None:
    # `file:///nope.git` used to be accepted, and every run then failed as clone_failed.
    missing = write(tmp_path, EXAMPLE.format(url="file:///nope.git"))
    with pytest.raises(SpecError) as caught:
        load(missing, now=T0)
    assert str(caught.value) == (
        f"{missing}: routines[0] (docs-nightly).repositories[0].url: 'file:///nope.git' "
        "names a repository on this machine, but /nope.git does not exist; give the path of "
        "an existing repository, or a git URL"
    )
    there = load(write(tmp_path, EXAMPLE.format(url=f"file://{origin}")), now=T0)
    assert there.routines[0].repositories[0].url == f"file://{origin}"


def test_yaml_errors_give_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "routines:\n  - name: [unclosed\n")
    with pytest.raises(SpecError, match=r"routines.yaml:3:1: not valid YAML"):
        load(path, now=T0)


def test_a_file_without_routines_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="expected a mapping with a `routines:` list"):
        load(write(tmp_path, "- just a list\n"), now=T0)
    # `routine:` is the misspelling of the missing `routines:`, so it is said as that.
    with pytest.raises(SpecError, match="routine: unknown field; did you mean `routines:`"):
        load(write(tmp_path, "routine: []\n"), now=T0)
    with pytest.raises(SpecError, match="routines: required field is missing"):
        load(write(tmp_path, "{}\n"), now=T0)


def test_duplicate_names_in_one_file_are_refused(tmp_path: Path, origin: Path) -> None:
    one = EXAMPLE.format(url=origin)
    twice = one + one.split("routines:\n", 1)[1]
    with pytest.raises(SpecError, match=r"routines\[1\] \(docs-nightly\).name: another"):
        load(write(tmp_path, twice), now=T0)
