"""The baseline the validator is measured against: the original walkthrough's way of reading data.

``pandas.read_json(path, lines=True)`` loads the whole file into a DataFrame, then the
same checks as ``shared.validation`` run over it in the plain way (a loop over the rows,
OpenAI-cookbook style, plus pandas' own duplicated() and numpy percentiles), with the same
token estimate. It prints a one-line JSON summary so the benchmark can check that both
tools found the same.

Run: python -m bench.pandas_baseline PATH
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd

from shared.validation.tokens import estimate

ROLES = {"system", "user", "assistant"}
RESERVED = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|endoftext|>")
MAX_SEQ_LENGTH = 4096
EPOCHS = 3


def check_row(messages: object) -> tuple[list[str], int]:
    """Error codes and estimated tokens of one example."""
    if not isinstance(messages, list) or not messages:
        return ["schema.messages_invalid"], 0
    errors: list[str] = []
    tokens = 2
    expected = "user"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            errors.append("schema.message_not_object")
            continue
        role, content = message.get("role"), message.get("content")
        tokens += 4
        if role not in ROLES:
            errors.append("schema.role_invalid")
        elif role == "system":
            if index:
                errors.append("conversation.system_not_first")
        else:
            if role != expected:
                errors.append("conversation.not_alternating")
            expected = "user" if role == "assistant" else "assistant"
        if not isinstance(content, str):
            errors.append("schema.content_invalid")
            continue
        if not content.strip():
            errors.append("schema.content_empty")
        tokens += estimate(content)
        if any(token in content for token in RESERVED):
            errors.append("content.reserved_token")
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        errors.append("conversation.no_assistant")
    elif roles[-1] != "assistant":
        errors.append("conversation.last_not_assistant")
    return errors, tokens


def main(path: str) -> int:
    df = pd.read_json(path, lines=True)
    counts: dict[str, int] = {}
    token_counts = np.zeros(len(df), dtype=np.int64)
    for row, messages in enumerate(df["messages"]):
        errors, token_counts[row] = check_row(messages)
        for code in errors:
            counts[code] = counts.get(code, 0) + 1
    duplicates = int(df["messages"].map(lambda m: json.dumps(m, sort_keys=True)).duplicated().sum())
    prompt_id_duplicates = int(df["prompt_id"].duplicated().sum()) if "prompt_id" in df else 0
    p5, p50, p95 = np.percentile(token_counts, [5, 50, 95])
    summary = {
        "valid": not counts and len(df) >= 10,
        "examples": len(df),
        "errors": counts,
        "duplicates": duplicates,
        "prompt_id_duplicates": prompt_id_duplicates,
        "tokens": {"p5": p5, "p50": p50, "p95": p95, "over": int((token_counts > MAX_SEQ_LENGTH).sum())},
        "billed_tokens": EPOCHS * int(np.minimum(token_counts, MAX_SEQ_LENGTH).sum()),
    }
    print(json.dumps(summary))
    return 0 if summary["valid"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
