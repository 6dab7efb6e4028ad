"""The catalogue of validation findings: one stable code, one severity, one line of meaning each.

Codes are part of the report format (reports are stored and compared across runs), so a
code is never renamed or reused; docs/validation.md explains every one and why it has its
severity, and a test keeps the two in step.

Severity decides what happens to an upload: any *error* makes the dataset invalid and no
job is submitted; *warnings* are shown but training goes ahead; *notes* are information.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True)
class Check:
    code: str
    severity: Severity
    summary: str


CHECKS: dict[str, Check] = {}


def _check(code: str, severity: Severity, summary: str) -> str:
    """Register a code and return it, so the modules that report it use a checked constant."""
    if code in CHECKS:
        raise ValueError(f"duplicate validation code {code}")
    CHECKS[code] = Check(code, severity, summary)
    return code


ERROR, WARNING, NOTE = Severity.ERROR, Severity.WARNING, Severity.NOTE

# The file as a whole. The first three stop validation: nothing after them would be meaningful.
FILE_BINARY = _check("file.binary", ERROR, "compressed, archive or other binary content, not JSON Lines text")
ENCODING_UTF16 = _check("encoding.utf16", ERROR, "UTF-16 or UTF-32 text; the file must be UTF-8")
ENCODING_BOM = _check("encoding.bom", NOTE, "UTF-8 byte-order mark at the start; accepted and skipped")
ENCODING_INVALID_UTF8 = _check("encoding.invalid_utf8", ERROR, "the line is not valid UTF-8")
LINE_TOO_LONG = _check("line.too_long", ERROR, "the line is longer than the line-length limit")

# JSON framing: one object per line.
JSON_ARRAY = _check("json.array", ERROR, "the file is one JSON array, not one object per line")
JSON_PRETTY_PRINTED = _check("json.pretty_printed", ERROR, "objects are spread over several lines")
JSON_INVALID = _check("json.invalid", ERROR, "the line is not valid JSON")
JSON_NOT_OBJECT = _check("json.not_object", ERROR, "the line is JSON but not an object")

# The example's shape.
SCHEMA_MESSAGES_MISSING = _check("schema.messages_missing", ERROR, "no 'messages' key")
SCHEMA_MESSAGES_INVALID = _check("schema.messages_invalid", ERROR, "'messages' is not a non-empty list")
SCHEMA_MESSAGE_NOT_OBJECT = _check("schema.message_not_object", ERROR, "a message is not an object")
SCHEMA_ROLE_INVALID = _check("schema.role_invalid", ERROR, "a role is missing or not system/user/assistant")
SCHEMA_CONTENT_INVALID = _check("schema.content_invalid", ERROR, "a content is missing or not a string")
SCHEMA_CONTENT_EMPTY = _check("schema.content_empty", ERROR, "a content is empty or only whitespace")
SCHEMA_UNKNOWN_KEY = _check("schema.unknown_key", NOTE, "a top-level key other than messages/prompt/prompt_id")
SCHEMA_MESSAGE_UNKNOWN_KEY = _check("schema.message_unknown_key", NOTE, "a message key other than role/content")

# The conversation.
CONVERSATION_NO_ASSISTANT = _check("conversation.no_assistant", ERROR, "no assistant message to learn from")
CONVERSATION_SYSTEM_NOT_FIRST = _check("conversation.system_not_first", ERROR, "a system message after the first")
CONVERSATION_NOT_ALTERNATING = _check(
    "conversation.not_alternating", ERROR, "turns do not alternate user/assistant, starting with user"
)
CONVERSATION_LAST_NOT_ASSISTANT = _check(
    "conversation.last_not_assistant", ERROR, "the conversation does not end with an assistant turn"
)
CONTENT_RESERVED_TOKEN = _check("content.reserved_token", ERROR, "a content contains a chat-template control token")

# Identity and repetition.
PROMPT_ID_MISSING = _check("prompt_id.missing", NOTE, "no prompt_id")
PROMPT_ID_INVALID = _check("prompt_id.invalid", WARNING, "prompt_id is not a non-empty string")
PROMPT_ID_DUPLICATE = _check("prompt_id.duplicate", WARNING, "the prompt_id of an earlier line")
EXAMPLE_DUPLICATE = _check("example.duplicate", WARNING, "the same conversation as an earlier line")

# Length and size.
TOKENS_TOO_LONG = _check("tokens.too_long", WARNING, "longer than max_seq_length tokens; it will be truncated")
DATASET_TOO_FEW = _check("dataset.too_few_examples", ERROR, "fewer than 10 examples")
DATASET_FEW = _check("dataset.few_examples", WARNING, "fewer examples than min_examples_warning")
