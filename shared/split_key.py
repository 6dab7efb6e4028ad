"""The split key: which side of the train/test split an example falls on, from its conversation alone.

A 64-bit BLAKE2b of the canonical JSON of the example's ``messages`` (keys sorted): the same
conversation gets the same key whatever else its line holds (prompt, prompt_id, key order,
escapes), so identical conversations land on the same side (no train/test leakage) and a
re-upload splits the same way. Intake has validation collect the keys of an upload while it
parses it (``validate_chunks(split_keys=...)``), so splitting reads the upload once more and
parses nothing; :func:`of_line` is the same key from a line's bytes, for a split on its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from shared.validation.checks import Turn


def of_messages(messages: Any) -> int:
    """The key of an example's ``messages`` value as decoded from JSON (any JSON value: the key is defined)."""
    try:
        canonical = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # nested deeper than orjson writes (254 levels; it reads 1,024)
        # In a valid example only a message key the chat template ignores can be that deep, and such
        # a line could never be split before: its key is of its roles and contents alone.
        canonical = orjson.dumps([_turn(message) for message in messages] if type(messages) is list else None)
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")


def _turn(message: Any) -> dict[str, Any] | None:
    """A message's role and content, each where it is a string (anything else is invalid, its key moot)."""
    if type(message) is not dict:
        return None
    role, content = message.get("role"), message.get("content")
    return {"content": content if type(content) is str else None, "role": role if type(role) is str else None}


def of_turns(turns: Iterable[Turn]) -> int:
    """:func:`of_messages` of messages that hold exactly a role and a content: the same JSON, the same key."""
    return of_messages([{"content": turn.content, "role": turn.role} for turn in turns])


def of_line(line: bytes) -> int:
    """The key of one line that validation passed (a JSON object with messages)."""
    return of_messages(orjson.loads(line).get("messages"))
