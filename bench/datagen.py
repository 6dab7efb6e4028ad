"""Deterministic ultrachat-shaped JSON Lines for benchmarks.

Rows look like HuggingFaceH4/ultrachat_200k (``prompt``, ``messages``, ``prompt_id`` =
sha256 of the prompt) with what makes parsing realistic: 2-8 messages of a few hundred to
a few thousand characters, several scripts (Latin, Cyrillic, CJK, Arabic, emoji), escapes
(newlines, quotes, tabs, backslashes in code blocks). Every row passes validation, so a
benchmark measures the normal path. Generated files are cached under ``bench/.data/``
(gitignored): generating a gigabyte takes about a minute, reading it back a second.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from pathlib import Path

import orjson

DATA_DIR = Path(__file__).resolve().parent / ".data"
# Bump when the generated content changes, so stale cached files are not reused.
FORMAT_VERSION = 2

# Word lists, split when the sentence pool is built.
_WORDS = {
    "en": (
        "the of and to in is that for it as with was on be by this are from at or an have which not "
        "but can more one all their will about there model data time people would these other into "
        "history example question answer system language water energy city music science research "
        "important however because through between different following provide several including "
        "community development environment information experience government understanding"
    ),
    "fr": (
        "le la les de des du et à un une est que qui dans pour pas sur avec plus être leur aussi "
        "très développement économie société histoire recherche réponse question énergie données "
        "modèle expérience gouvernement compréhension également cependant différentes"
    ),
    "de": (
        "der die das und ist nicht ein eine zu mit auf für auch sich von dem den des im wird "
        "Entwicklung Wirtschaft Gesellschaft Geschichte Forschung Antwort Frage Energie Daten "
        "Erfahrung Regierung Verständnis größer über müssen können während außerdem"
    ),
    "es": (
        "el la los las de del y en un una es que por con para no se su más como pero también "
        "desarrollo economía sociedad historia investigación respuesta pregunta energía datos "
        "experiencia gobierno comprensión además según través después"
    ),
    "ru": (
        "и в не на что он с как это по но из у за от о так же все она было для его "
        "развитие экономика общество история исследование ответ вопрос энергия данные модель "
        "опыт правительство понимание однако несколько включая между"
    ),
}
_CHARS = {
    "zh": "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经",
    "ja": "のにはをたがでてしとれさあるいうもなかこすからまでよりそれこれ日本語文化歴史研究質問答え経済社会技術",
    "ar": "ال في من على أن إلى هذا التي الذي عن كان مع هذه بين كل قد لا ما بعد حيث",
}
_WORD_LISTS = {language: text.split() for language, text in _WORDS.items()}
_LANGUAGES = ["en"] * 24 + ["fr", "de", "es", "ru", "zh", "ja", "ar"]  # ~80% English, like ultrachat
_EMOJI = ["🙂", "🚀", "✅", "📚", "🌍", "⚠️", "💡"]
_CODE = (
    "```python\ndef parse(path: str) -> dict:\n"
    '    """Read a \\"quoted\\" value."""\n'
    "    with open(path) as f:\n\treturn {'key': f.read().split('\\t')}\n```"
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'200MB' -> 200_000_000, '1GiB' -> 1_073_741_824 (decimal units unless the 'i' is there)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 200MB, 1GB, 1GiB)")
    number, prefix, binary = float(match.group(1)), match.group(2).lower(), match.group(3)
    return int(number * (1024 if binary else 1000) ** " kmgt".index(prefix or " "))


def format_size(size: int) -> str:
    """Short decimal size for file names and tables: 200MB, 1GB, 1.5GB."""
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size}B"


def _sentence(rng: random.Random, language: str) -> str:
    if language in _CHARS:
        text = "".join(rng.choices(_CHARS[language], k=rng.randint(12, 40)))
        return text + ("。" if language in ("zh", "ja") else ".")
    words = rng.choices(_WORD_LISTS[language], k=rng.randint(6, 22))
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice(".....?!:")


def _sentence_pool(rng: random.Random, size: int = 4000) -> dict[str, list[str]]:
    """Pre-built sentences per language: messages are drawn from them, which keeps generation fast."""
    return {lang: [_sentence(rng, lang) for _ in range(size)] for lang in (*_WORDS, *_CHARS)}


def _message(rng: random.Random, pool: dict[str, list[str]]) -> str:
    """A few hundred to a few thousand characters, in paragraphs, sometimes with code or emoji."""
    language = rng.choice(_LANGUAGES)
    target = int(min(6000, max(150, rng.lognormvariate(6.9, 0.7))))  # median ~1000 characters
    sentences = pool[language]
    parts: list[str] = []
    length = 0
    while length < target:
        paragraph = " ".join(rng.choices(sentences, k=rng.randint(2, 6)))
        parts.append(paragraph)
        length += len(paragraph) + 2
    if rng.random() < 0.08:
        parts.insert(rng.randrange(len(parts) + 1), _CODE)
    if rng.random() < 0.02:
        parts[-1] += " " + rng.choice(_EMOJI)
    if rng.random() < 0.2:
        parts.insert(1, "\n".join(f"{i}. {rng.choice(sentences)}" for i in range(1, rng.randint(3, 6))))
    if rng.random() < 0.03:
        rows = (f"| {rng.choice(sentences)[:30]} | {rng.randint(1, 999)} |" for _ in range(rng.randint(2, 5)))
        parts.append("| item | value |\n|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts)


def iter_conversations(seed: int = 0) -> Iterator[dict]:
    """Endless ultrachat-shaped rows, the same sequence for the same seed."""
    rng = random.Random(seed)
    pool = _sentence_pool(rng)
    index = 0
    while True:
        index += 1
        turns = rng.randint(1, 4)  # 2-8 messages: user/assistant pairs
        messages = []
        for _ in range(turns):
            messages.append({"content": _message(rng, pool), "role": "user"})
            messages.append({"content": _message(rng, pool), "role": "assistant"})
        # The row number keeps every prompt (and so every prompt_id) unique.
        messages[0]["content"] = f"{messages[0]['content']} (#{index})"
        prompt = messages[0]["content"]
        yield {"prompt": prompt, "messages": messages, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest()}


def write_dataset(path: Path, size: int, seed: int = 0) -> None:
    """Write whole rows until the file reaches ``size`` bytes (it ends a little past it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    written = 0
    with partial.open("wb") as out:
        buffer: list[bytes] = []
        for row in iter_conversations(seed):
            line = orjson.dumps(row) + b"\n"
            buffer.append(line)
            written += len(line)
            if written >= size or len(buffer) >= 1000:
                out.write(b"".join(buffer))
                buffer.clear()
            if written >= size:
                break
    partial.replace(path)


def ensure_dataset(size: int, seed: int = 0, data_dir: Path = DATA_DIR) -> Path:
    """The cached file of about ``size`` bytes, generated on first use."""
    path = data_dir / f"ultrachat-{format_size(size)}-seed{seed}-v{FORMAT_VERSION}.jsonl"
    if not path.exists():
        write_dataset(path, size, seed)
    return path
