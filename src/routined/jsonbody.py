"""JSON bodies from strangers (fire texts, webhook deliveries, management requests):
parsed by the standard parser, and refused when what it gives would break later."""

from __future__ import annotations

import json
import re
from typing import Any

from routined.errors import BadInput

# Generous: GitHub's deepest example payload nests 7 levels, a routines document
# about 8. Python's parser gives up (RecursionError) somewhere under 1,000 levels,
# depending on how deep the stack already is; this bound is the same everywhere.
MAX_JSON_DEPTH = 128
NOT_JSON = "body: not valid JSON; send a JSON object"
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_TOO_DEEP = (
    f"body: objects and arrays nested more than {MAX_JSON_DEPTH} deep; send a flatter document"
)


class UnfitJson(BadInput, ValueError):
    """JSON that parses but is refused; the message names where and says what to do."""


def parse_json(body: bytes | str) -> Any:
    """`body` parsed by the standard parser, refused when using it would break later.

    Not JSON at all raises what the parser raises (a ValueError: JSONDecodeError,
    UnicodeDecodeError, a number with too many digits). `UnfitJson` when it:
    1. nests containers more than `MAX_JSON_DEPTH` deep (or so deep that the
       parser's recursion ran out): whatever walked it next would run out too;
    2. holds a lone surrogate escape (`"\\ud800"`), which Python keeps as a string
       that no store, file or model request can encode as UTF-8.
    The parsed value is walked with a stack of its own, never by recursion.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        raise UnfitJson(_TOO_DEEP) from None
    if isinstance(value, str):
        _check_text(value, None)
    # Containers still to look into: (container, its depth, where it is as a chain of
    # (parent's chain, key) pairs, made into a path only for a message).
    pending: list[tuple[Any, int, Any]] = [(value, 1, None)]
    while pending:
        node, depth, where = pending.pop()
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise UnfitJson(_TOO_DEEP)
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str):
                _check_text(key, where, key=True)
            if isinstance(child, str):
                _check_text(child, (where, key))
            elif isinstance(child, dict | list):
                pending.append((child, depth + 1, (where, key)))
    return value


def _check_text(text: str, where: Any, *, key: bool = False) -> None:
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is None:
        return
    parts: list[str] = []
    while where is not None:
        where, part = where
        parts.append(str(part))
    path = ".".join(reversed(parts)) or "body"
    raise UnfitJson(
        f"{path}: {'a key holds' if key else 'holds'} a lone surrogate "
        f"(\\u{ord(found.group()):04x}), which is not a character; send text as UTF-8, "
        "or a character past U+FFFF as a pair of escapes such as \\ud83d\\ude00"
    )
