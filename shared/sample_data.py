"""A small ultrachat-shaped sample dataset, generated, for the demo and first runs.

Short, regular question/answer conversations about a handful of topics: enough signal for a
tiny model to learn from in a couple of minutes on a laptop CPU, and valid by construction.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import orjson

FACTS = {
    "tides": ["Tides are caused mostly by the moon's gravity.", "There are usually two high tides a day."],
    "bees": ["Bees make honey from flower nectar.", "A honey bee colony has one queen."],
    "glaciers": ["Glaciers are rivers of slowly moving ice.", "Glaciers carve U-shaped valleys."],
    "bread": ["Yeast makes bread dough rise.", "Kneading builds gluten in the dough."],
    "comets": ["Comets are balls of ice and dust.", "A comet's tail points away from the sun."],
    "violins": ["A violin has four strings.", "Violin bows are strung with horsehair."],
    "maps": ["A map scale shows how distances shrink.", "North is usually at the top of a map."],
    "volcanoes": ["Volcanoes erupt molten rock called lava.", "Some volcanoes are dormant for centuries."],
}
QUESTIONS = ["Tell me about {t}.", "What should I know about {t}?", "Can you explain {t}?", "Give me a fact about {t}."]
FOLLOW_UPS = ["Tell me more.", "And another fact?", "What else?"]


def conversations(count: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(seed)
    topics = sorted(FACTS)
    for i in range(count):
        topic = topics[i % len(topics)]
        first, second = FACTS[topic]
        prompt = rng.choice(QUESTIONS).format(t=topic) + f" (#{seed}-{i})"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": first}]
        if rng.random() < 0.5:
            messages += [
                {"role": "user", "content": rng.choice(FOLLOW_UPS)},
                {"role": "assistant", "content": second},
            ]
        yield {"prompt": prompt, "messages": messages, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest()}


def jsonl(count: int, seed: int = 0) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in conversations(count, seed))
