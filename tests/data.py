"""Small ultrachat-shaped datasets for tests."""

from __future__ import annotations

import hashlib
import json

TOPICS = ["tides", "bread", "glaciers", "chess", "violins", "bees", "comets", "maps", "rivers", "kites"]


def example(i: int, turns: int = 2) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    prompt = f"Tell me something about {topic}, example {i}."
    messages = [{"role": "user", "content": prompt}]
    for turn in range(turns):
        messages.append({"role": "assistant", "content": f"Here is fact {turn} about {topic} number {i}."})
        if turn < turns - 1:
            messages.append({"role": "user", "content": f"And another about {topic}?"})
    return {"prompt": prompt, "messages": messages, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest()}


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def dataset(n: int = 30, start: int = 0) -> bytes:
    return jsonl([example(i) for i in range(start, start + n)])
