"""Checks on one parsed example: the per-line hot path of validation.

Written for speed as much as clarity, because it runs once per example of files of
gigabytes: exact ``type(...) is`` tests instead of isinstance, no per-message function
calls on the fast path beyond the token estimate, message text built only when something is
wrong, and the
reserved-token scan skipped unless the raw line contains a ``|`` at all (one memchr).

Most lines of a real dataset are well formed, so they take a fast path: msgspec decodes them
straight into :class:`Conversation` structs, checking in C what the slow path checks in Python
(an object with no unknown keys, a non-empty list of messages that each have exactly a valid role
and a string content, a string prompt_id if any), and :meth:`ExampleChecker.check_well_formed`
skips those checks. A line msgspec refuses, for any reason, is decoded again by orjson and
checked by :meth:`ExampleChecker.check`, which names what is wrong with its shape. Both then run
the same conversation checks, so they give the same findings, digests and token counts for the
same line (a differential test pins it).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from xxhash import xxh3_64_intdigest

from shared import split_key
from shared.validation.codes import (
    CONTENT_RESERVED_TOKEN,
    CONVERSATION_LAST_NOT_ASSISTANT,
    CONVERSATION_NO_ASSISTANT,
    CONVERSATION_NOT_ALTERNATING,
    CONVERSATION_SYSTEM_NOT_FIRST,
    PROMPT_ID_INVALID,
    PROMPT_ID_MISSING,
    SCHEMA_CONTENT_EMPTY,
    SCHEMA_CONTENT_INVALID,
    SCHEMA_MESSAGE_NOT_OBJECT,
    SCHEMA_MESSAGE_UNKNOWN_KEY,
    SCHEMA_MESSAGES_INVALID,
    SCHEMA_MESSAGES_MISSING,
    SCHEMA_ROLE_INVALID,
    SCHEMA_UNKNOWN_KEY,
    TOKENS_TOO_LONG,
)
from shared.validation.options import ValidationOptions
from shared.validation.records import NO_DIGEST, ExampleRecords
from shared.validation.report import IssueLog
from shared.validation.tokens import EXAMPLE_OVERHEAD, MESSAGE_OVERHEAD, SAMPLE_CHARS, ContentCounter, estimate

TOP_LEVEL_KEYS = frozenset({"messages", "prompt", "prompt_id"})
MESSAGE_KEYS = frozenset({"role", "content"})
ROLES = frozenset({"system", "user", "assistant"})


# gc=False: these structs never take part in a reference cycle, so the collector need not track them.
class Turn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A message of a well-formed line: nothing but a valid role and a string content."""

    role: Literal["system", "user", "assistant"]
    content: str


class Conversation(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A well-formed line: any other shape is left to the slow path, which says what is wrong."""

    messages: Annotated[list[Turn], msgspec.Meta(min_length=1)]
    prompt_id: str | msgspec.UnsetType = msgspec.UNSET
    prompt: str | None = None  # unchecked, as in the slow path; other JSON types just go the slow way


# Raises msgspec.DecodeError (ValidationError included) for every line that is not well formed.
decode_well_formed = msgspec.json.Decoder(Conversation).decode
_NO_MESSAGE = object()  # the content of a "message" that is not an object at all: nothing to check


class _Message(NamedTuple):
    """A message of a line on the slow path: its role (None unless valid) and its content as found."""

    role: str | None
    content: object


def describe(value: object) -> str:
    """How a wrong value is named in a message: its JSON type, not its (possibly huge) text."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) in (int, float):
        return "a number"
    if type(value) is str:
        return "an empty string" if not value else "a string"
    if type(value) is list:
        return "an empty list" if not value else "a list"
    return "an object"


class ExampleChecker:
    """Runs every per-example check and records the example's numbers.

    ``split_keys``: where to append each recorded example's split key (``shared.split_key``), for
    intake to split the upload without parsing it again; None (the default) computes none.
    """

    def __init__(
        self,
        options: ValidationOptions,
        log: IssueLog,
        records: ExampleRecords,
        counter: ContentCounter | None,
        split_keys: array | None = None,
    ) -> None:
        self.options = options
        self.log = log
        self.records = records
        self.counter = counter
        self.split_keys = split_keys

    def check(self, number: int, example: dict[str, Any], raw: bytes) -> bool:
        """Check the example on line ``number`` (``raw`` is its line); True when it has no error."""
        log = self.log
        errors_before = log.errors
        if not TOP_LEVEL_KEYS.issuperset(example):
            for key in example:
                if key not in TOP_LEVEL_KEYS:
                    log.add(SCHEMA_UNKNOWN_KEY, number, f"top-level key {key!r} is not used for fine-tuning")
        prompt_id = self._prompt_id(number, example.get("prompt_id", msgspec.UNSET))

        messages = example.get("messages")
        if type(messages) is not list or not messages:
            if "messages" not in example:
                log.add(SCHEMA_MESSAGES_MISSING, number, "no 'messages' key: each line needs a list of messages")
            else:
                log.add(
                    SCHEMA_MESSAGES_INVALID, number, f"'messages' must be a non-empty list, got {describe(messages)}"
                )
            return False
        self._conversation(number, len(messages), self._messages(number, messages), raw, prompt_id)
        if self.split_keys is not None:
            self.split_keys.append(split_key.of_messages(messages))
        return log.errors == errors_before

    def check_well_formed(self, number: int, example: Conversation, raw: bytes) -> bool:
        """:meth:`check` for a line msgspec decoded into a :class:`Conversation`: only what can still fail."""
        errors_before = self.log.errors
        prompt_id = self._prompt_id(number, example.prompt_id)
        messages = example.messages
        self._conversation(number, len(messages), enumerate(messages, 1), raw, prompt_id)
        if self.split_keys is not None:
            self.split_keys.append(split_key.of_turns(messages))
        return self.log.errors == errors_before

    def _messages(self, number: int, messages: list[Any]) -> Iterator[tuple[int, _Message]]:
        """The slow path's messages, numbered, as the conversation checks take them.

        What is wrong with a message's shape is reported as it is met, before the turn's own
        findings: a message that is not an object, unknown keys, a role that is not valid (it
        becomes None). A content that is not a string is passed on as found; that check is the
        conversation loop's, after the turn order's.
        """
        log = self.log
        for index, message in enumerate(messages, 1):
            if type(message) is not dict:
                log.add(SCHEMA_MESSAGE_NOT_OBJECT, number, f"message {index} is {describe(message)}, not an object")
                yield index, _Message(None, _NO_MESSAGE)
                continue
            role = message.get("role")
            content = message.get("content")
            # Unknown keys need more than two keys, or a missing one: skip the set test otherwise.
            if (len(message) != 2 or role is None or content is None) and not MESSAGE_KEYS.issuperset(message):
                self._unknown_message_keys(number, index, message)
            if type(role) is not str or role not in ROLES:
                shown = repr(role) if type(role) is str else describe(role)
                log.add(SCHEMA_ROLE_INVALID, number, f"message {index} has role {shown}; use system, user or assistant")
                role = None  # reported; from here on it only has to be hashable
            yield index, _Message(role, content)

    def _conversation(
        self, number: int, count: int, messages: Iterable[tuple[int, Turn | _Message]], raw: bytes, prompt_id: int
    ) -> None:
        """The checks on the turns and contents of ``count`` messages, and the example's record.

        Both paths come through here: the fast one with :class:`Turn` structs, whose roles are
        valid and contents strings, the slow one with what :meth:`_messages` made of the dicts.
        """
        log = self.log
        counter = self.counter
        contents: list[str] = []  # exact counting only: tokenized in one batch per example
        # Every "<|" has a "|", even where "<" is JSON-escaped: writers escape "<" (System.Text.Json), never "|".
        # Searching each line for an escaped pipe too would cost 7.6% of the per-line work (callgrind).
        scan_reserved = b"|" in raw
        tokens = EXAMPLE_OVERHEAD + MESSAGE_OVERHEAD * count
        key: list[object] = []  # roles and contents, hashed to find duplicate conversations
        expected = "user"
        alternating = True
        assistant_turns = 0
        role: str | None = None
        for index, message in messages:
            role = message.role
            content = message.content
            if role is None:  # reported; the turns after it would only add noise
                alternating = False
            elif role == "system":
                if index != 1:
                    log.add(
                        CONVERSATION_SYSTEM_NOT_FIRST,
                        number,
                        f"message {index} is a system message; only the first may be",
                    )
            else:
                if role != expected and alternating:
                    log.add(
                        CONVERSATION_NOT_ALTERNATING,
                        number,
                        f"message {index} is {role!r} where {expected!r} was expected "
                        "(after an optional system message: user, assistant, user, ...)",
                    )
                    alternating = False
                if role == "assistant":
                    assistant_turns += 1
                    expected = "user"
                else:
                    expected = "assistant"

            if type(content) is not str:
                if content is not _NO_MESSAGE:
                    log.add(
                        SCHEMA_CONTENT_INVALID, number, f"message {index} content is {describe(content)}, not a string"
                    )
                continue
            ascii = content.isascii()
            chars = len(content)
            # The content's digest for the duplicate check. hash() of a str is SipHash over its code
            # units, the biggest single cost of the checks (callgrind); UTF-8 and XXH3 are cheaper where
            # the UTF-8 is cheap or needed anyway: an ASCII str encodes with one memcpy, and a short
            # non-ASCII one is encoded whole for the token estimate. A long non-ASCII one would cost more
            # to encode than to SipHash. Equal contents always take the same branch.
            encoded = content.encode() if ascii or chars <= SAMPLE_CHARS else None
            if not content or content.isspace():
                log.add(SCHEMA_CONTENT_EMPTY, number, f"message {index} ({role}) has empty content")
            elif counter is None:
                # estimate()'s ASCII rule inlined: this line runs for every message of every example.
                tokens += (chars + 3) // 4 if ascii else estimate(content, encoded)
            else:
                contents.append(content)
            # "|" alone is one memchr; the two-character search costs ~8x more per content (callgrind).
            if scan_reserved and "|" in content and "<|" in content:
                self._reserved_tokens(number, index, content)
            key.append(role)  # a valid role or None: always hashable
            key.append(content if encoded is None else xxh3_64_intdigest(encoded))

        if assistant_turns == 0:
            log.add(CONVERSATION_NO_ASSISTANT, number, "no assistant message: there is nothing to learn from")
        elif role in ("user", "system"):
            log.add(
                CONVERSATION_LAST_NOT_ASSISTANT, number, f"the last message is {role!r}; end with the assistant's reply"
            )
        if counter is not None and contents:
            tokens += counter(contents)
        if tokens > self.options.max_seq_length:
            log.add(
                TOKENS_TOO_LONG,
                number,
                f"{tokens:,} tokens{'' if counter else ' (estimated)'} > max_seq_length "
                f"{self.options.max_seq_length:,}: training truncates it",
            )
        self.records.add(number, tokens, count, assistant_turns, conversation=hash(tuple(key)), prompt_id=prompt_id)

    def _prompt_id(self, number: int, prompt_id: object) -> int:
        """The prompt_id's digest for the uniqueness check, or NO_DIGEST when there is none (``UNSET``: no key)."""
        if type(prompt_id) is str and prompt_id:
            return hash(prompt_id) or 1  # 0 is reserved for "none"
        if prompt_id is msgspec.UNSET:
            self.log.add(PROMPT_ID_MISSING, number, "no prompt_id")
        else:
            self.log.add(PROMPT_ID_INVALID, number, f"prompt_id is {describe(prompt_id)}, not a non-empty string")
        return NO_DIGEST

    def _unknown_message_keys(self, number: int, index: int, message: dict[str, Any]) -> None:
        for key in message:
            if key not in MESSAGE_KEYS:
                self.log.add(
                    SCHEMA_MESSAGE_UNKNOWN_KEY, number, f"message {index} key {key!r} is ignored by the chat template"
                )

    def _reserved_tokens(self, number: int, index: int, content: str) -> None:
        for token in self.options.reserved_tokens:
            if token in content:
                self.log.add(
                    CONTENT_RESERVED_TOKEN,
                    number,
                    f"message {index} contains {token!r}, a chat-template control token; remove or escape it",
                )
                return
