"""Reading routines files into the spec: YAML through a safe loader that refuses alias
bombs and NUL characters, and errors that name the file, the field and the fix, for the
person who has to act on them."""

from __future__ import annotations

import difflib
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from routined.routines.spec import (
    TRIGGER_TYPES,
    ApiTriggerSpec,
    GitHubTriggerSpec,
    RoutinesFile,
    ScheduleTriggerSpec,
    SpecError,
)
from routined.schedules.timing import ScheduleError, check_interval

_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_SCP_LIKE = re.compile(r"^[^/:]+@[^/:]+:")


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
    """One line per error, each starting with `source`, in the order the file has them:
    pydantic lists a model's errors in the order its fields are declared, so a typo
    near the top would otherwise come after the errors it caused."""
    errors = exc.errors()
    # A misspelt field (`promt:`) also makes the field it meant missing; that follow-on
    # error is said once, as the spelling to write instead.
    misspelt: dict[tuple[Any, ...], str] = {}  # location of the missing field → the typo
    for error in errors:
        if error["type"] == "extra_forbidden":
            parent, key = error["loc"][:-1], str(error["loc"][-1])
            missing = [
                str(other["loc"][-1])
                for other in errors
                if other["type"] == "missing" and other["loc"][:-1] == parent
            ]
            for meant in difflib.get_close_matches(key, missing, n=1):
                misspelt[(*parent, meant)] = key
    lines: list[tuple[tuple[int, ...], str]] = []
    said: set[tuple[Any, ...]] = set()  # fields of a choice (`agent:`) already answered
    for error in errors:
        if error["type"] == "missing" and tuple(error["loc"]) in misspelt:
            continue
        location = _location(document, error["loc"])
        choice = _choice_at(error["loc"])
        if choice is not None:
            # A field that is either a word or a mapping (`agent: claude` or `agent:
            # {command: …}`): pydantic answers for each form; say what was meant once.
            given = _node_at(document, choice)
            if isinstance(given, dict) and error["type"] == "literal_error":
                continue  # fields were written: the mapping's own errors say what is wrong
            if not isinstance(given, dict):
                if choice not in said:
                    said.add(choice)
                    message = _either(errors, choice)
                    lines.append((_position(document, choice), f"{source}: {location}: {message}"))
                continue
        message = _message(error, location, misspelt)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            location += ".type"
        lines.append((_position(document, error["loc"]), f"{source}: {location}: {message}"))
    return "\n".join(line for _, line in sorted(lines, key=lambda pair: pair[0]))


def _either(errors: list[Any], choice: tuple[int | str, ...]) -> str:
    """What a field that is either a word or a mapping (`agent:`) takes, when it was
    given neither."""
    words = [e for e in errors if e["type"] == "literal_error" and _choice_at(e["loc"]) == choice]
    expected = " or ".join(str((e.get("ctx") or {}).get("expected")) for e in words)
    fields = ", ".join(f"`{name}:`" for name in _fields_at(choice))
    mapping = f"a mapping with {fields}" if fields else "fields (`key: value`)"
    return f"write {expected}, or {mapping}" if expected else f"write {mapping}"


def _message(error: Any, location: str, misspelt: dict[tuple[Any, ...], str]) -> str:
    """What to write instead, in the file's words rather than pydantic's."""
    kind = error["type"]
    given = error.get("input")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = (error.get("ctx") or {}).get("tag")
        return (
            f"unknown trigger type {tag!r}; supported: {TRIGGER_TYPES}"
            if kind == "union_tag_invalid"
            else f"say which kind of trigger this is with `type:` (supported: {TRIGGER_TYPES})"
        )
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        meant = next((m[-1] for m, typo in misspelt.items() if typo == key), None)
        if meant is None:
            meant = next(iter(difflib.get_close_matches(key, _fields_at(error["loc"][:-1]))), None)
        if meant is not None:
            return f"unknown field; did you mean `{meant}:`?"
        return "unknown field; remove it or check its spelling"
    if kind == "string_pattern_mismatch":
        return (
            "names use letters, digits, '.', '_' and '-', start with a letter or "
            "digit, and are at most 100 characters"
        )
    if location.endswith("repositories") and kind in ("list_type", "too_short"):
        return "list at least one repository, as `- url: <git URL or path>`"
    if re.search(r"repositories\[\d+\]$", location) and kind == "model_type":
        # `- /path` where `- url: /path` was meant: the commonest slip in a new file.
        if isinstance(given, str):
            return f"a repository is a mapping; write `- url: {given}`"
        return "a repository is a mapping; write `- url: <git URL or path>`"
    if kind in ("model_type", "dict_type"):
        return f"expected fields (`key: value`), not {_kind_of(given)}"
    if kind == "list_type" and given is None:
        return "is empty; give a list (`- …`) or remove the key"
    if kind == "value_error":
        return str((error.get("ctx") or {}).get("error", error["msg"]))
    if kind == "missing":
        return "required field is missing"
    return str(error["msg"])


# The labels pydantic puts in a location for the member of a union it tried (`literal['claude']`,
# `CommandAgentSpec`): not fields of the file. Every model in `spec` is named …Spec.
_UNION_MEMBER = re.compile(r"^(literal\[.*\]|[A-Z]\w*Spec)$")


def _is_member(item: int | str) -> bool:
    return isinstance(item, str) and _UNION_MEMBER.match(item) is not None


def _choice_at(loc: tuple[int | str, ...]) -> tuple[int | str, ...] | None:
    """The location of the field whose union member `loc` goes through, if any."""
    for index, item in enumerate(loc):
        if _is_member(item):
            return tuple(loc[:index])
    return None


def _node_at(document: Any, loc: tuple[int | str, ...]) -> Any:
    node = document
    for item in loc:
        in_list = isinstance(node, list) and isinstance(item, int) and item < len(node)
        if not (in_list or (isinstance(node, dict) and item in node)):
            return None
        node = node[item]
    return node


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{value!r}" if isinstance(value, str | int | float | bool) else "a single value"


def _position(document: Any, loc: tuple[int | str, ...]) -> tuple[int, ...]:
    """Where `loc` is in the file, as the index of each key or item on the way to it: a
    field that is missing sorts after its mapping's keys; a trigger's type tag, which is
    not in the file, is passed over."""
    position: list[int] = []
    node = document
    for index, item in enumerate(loc):
        if _is_member(item) or (index >= 2 and loc[index - 2] == "triggers"):
            continue
        if isinstance(node, list) and isinstance(item, int):
            position.append(item)
            node = node[item] if item < len(node) else None
        elif isinstance(node, dict) and item in node:
            position.append(list(node).index(item))
            node = node[item]
        elif isinstance(node, dict):
            position.append(len(node))
            node = None
    return tuple(position)


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """The fields the model at `loc` (pydantic's location of a mapping) accepts, to
    suggest the one a misspelt key meant."""
    models: list[type[BaseModel]] = [RoutinesFile]
    for item in loc:
        if isinstance(item, int) or _is_member(item):
            continue
        owners = [model for model in models if item in model.model_fields]
        if len(models) > 1 and all("type" in model.model_fields for model in models):
            # The tag pydantic adds for a trigger (`triggers[0].schedule`) picks the model.
            tagged = [model for model in models if item in get_args(_annotation(model, "type"))]
            if tagged:
                models = tagged
                continue
        if not owners:
            return []
        models = [found for model in owners for found in _models_in(_annotation(model, item))]
    return sorted({name for model in models for name in model.model_fields})


def _annotation(model: type[BaseModel], field: str) -> Any:
    return model.model_fields[field].annotation


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type holds: `list[RepositorySpec]` → [RepositorySpec]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


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
        elif _is_member(item):
            continue  # the member of a union pydantic tried; not a field of the file
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
            elif url.lower().startswith("file://"):
                # git clones a file:// URL from this machine just as it does a path, so it
                # is checked here as a path is, not found missing at the first run.
                local = Path(url[len("file://") :])
                if not local.is_absolute() or not local.exists():
                    raise SpecError(
                        f"{path}: {label}.repositories[{number}].url: {url!r} names a "
                        f"repository on this machine, but {local} does not exist; give the "
                        "path of an existing repository, or a git URL"
                    )
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
