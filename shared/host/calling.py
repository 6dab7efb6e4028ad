"""How to call a live local endpoint, printed by ``up`` when a run goes live: curl and the openai SDK.

The commands read the key from its owner-only file when they run, so the key itself is never
printed (terminals are scrolled back, shared and recorded).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from shared.rollout import scoring_request

QUESTION = [{"role": "user", "content": "Hi!"}]


def scoring_body() -> str:
    """Azure ML's chat scoring contract, one conversation (as the smoke test sends it)."""
    return json.dumps(scoring_request(QUESTION, {"max_new_tokens": 64}))


def curl(scoring_uri: str, key_file: Path | str) -> str:
    key = f'-H "Authorization: Bearer $(cat {shlex.quote(str(key_file))})"'
    body = f"-H 'Content-Type: application/json' -d {shlex.quote(scoring_body())}"
    return f"curl -sS --fail-with-body {shlex.quote(scoring_uri)} {key} {body}"


def openai_snippet(scoring_uri: str, key_file: Path | str) -> str:
    """A one-line Python program (double-quoted inside, so the shell quoting stays readable)."""
    base_url = scoring_uri.removesuffix("/score") + "/v1"
    program = (
        "import openai, pathlib; "
        f"client = openai.OpenAI(base_url={json.dumps(base_url)}, "
        f"api_key=pathlib.Path({json.dumps(str(key_file))}).read_text().strip()); "
        f'print(client.chat.completions.create(model="ftpilot", messages={json.dumps(QUESTION)}, max_tokens=64)'
        ".choices[0].message.content)"
    )
    return f"python -c {shlex.quote(program)}"


def how_to_call(scoring_uri: str, key_file: Path | str) -> list[str]:
    return [f"curl:   {curl(scoring_uri, key_file)}", f"openai: {openai_snippet(scoring_uri, key_file)}"]
