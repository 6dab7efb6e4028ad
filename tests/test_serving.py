"""A local endpoint as its clients use it: the official ``openai`` SDK and Azure's scoring formats.

Real HTTP on loopback: the endpoint's router and two deployment servers run in this process under
uvicorn, over a tiny stand-in model (random weights, tokenizer trained on the test data) loaded
once. ``blue`` has the default limits; ``tight`` has a 1-sequence batch, a 1-sequence waiting
line and a short timeout, for the tests of what happens when it is full or slow. The router reads
the same state database, keys and deployment secrets as it does in its own process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from shared.config import Settings
from shared.platform.local import base_model, keys, router, scoring_server
from shared.platform.local.endpoints import DEPLOYMENT_HEADER, SECRET_HEADER
from shared.platform.local.engine import Engine
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HOST, free_port
from shared.platform.local.store import Store, now
from tests.data import example

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ENDPOINT = "ep-serving"
MODEL_ID = "models:/chat-model/1"
QUESTION = [{"role": "user", "content": "Tell me something about bees."}]
TIGHT_TIMEOUT_S = 2.0


class Served:
    """A uvicorn server on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _engine(folder: Path, settings: Settings) -> Engine:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return Engine(
        AutoModelForCausalLM.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
        max_batch=settings.endpoint_max_batch,
        max_waiting=settings.endpoint_max_waiting,
        stuck_after_s=60,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serving")
    settings = Settings(storage="UseDevelopmentStorage=true", data_dir=root / "ftpilot")
    tight = settings.model_copy(
        update={"endpoint_max_batch": 1, "endpoint_max_waiting": 1, "endpoint_request_timeout_s": TIGHT_TIMEOUT_S}
    )
    texts = [m["content"] for i in range(60) for m in example(i)["messages"]]
    folder = base_model.resolve("Phi-3-mini-4k-instruct", None, texts, root / "base").path
    layout = Layout(settings.data_dir)
    store = Store(layout.state_db)
    keys.create_key(layout.keys, ENDPOINT)
    servers: dict[str, Served] = {}
    engines = {"blue": _engine(folder, settings), "tight": _engine(folder, tight)}
    for name, config in (("blue", settings), ("tight", tight)):
        keys.create_deployment_secret(layout.keys, ENDPOINT, name)
        secret = keys.read_deployment_secret(layout.keys, ENDPOINT, name)
        servers[name] = Served(scoring_server.create_app(engines[name], name, MODEL_ID, config, secret))
    with store.write() as db:
        db.execute(
            "INSERT INTO endpoints (name, description, tags, state, traffic, port, created_at)"
            " VALUES (?, '', '{}', 'Succeeded', ?, 0, ?)",
            (ENDPOINT, json.dumps({"blue": 100, "tight": 0}), now()),
        )
        for name, served in servers.items():
            db.execute(
                "INSERT INTO deployments (endpoint, name, model_id, instance_type, instance_count, tags, state,"
                " port, created_at) VALUES (?, ?, ?, 'local', 1, '{}', 'Succeeded', ?, ?)",
                (ENDPOINT, name, MODEL_ID, served.port, now()),
            )
    front = Served(router.create_app(settings, ENDPOINT))
    yield {
        "settings": settings,
        "layout": layout,
        "store": store,
        "engines": engines,
        "servers": servers,
        "url": f"http://{HOST}:{front.port}",
        "key": keys.read_key(layout.keys, ENDPOINT),
    }
    front.stop()
    for served in servers.values():
        served.stop()
    for engine in engines.values():
        engine.close()


def client(world: dict[str, Any], deployment: str = "blue", key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{world['url']}/v1",
        api_key=key or world["key"],
        default_headers={DEPLOYMENT_HEADER: deployment},
        max_retries=0,
        timeout=60,
    )


def score(world: dict[str, Any], body: Any, deployment: str = "blue") -> httpx.Response:
    return httpx.post(
        f"{world['url']}/score",
        json=body,
        headers={"Authorization": f"Bearer {world['key']}", DEPLOYMENT_HEADER: deployment},
        timeout=60,
    )


# --- Azure's scoring contract ------------------------------------------------------------------


def test_score_takes_the_walkthroughs_nested_form(world: dict[str, Any]) -> None:
    answer = score(world, {"input_data": {"input_string": [QUESTION], "parameters": {"max_new_tokens": 8}}})
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json()["output"], str)
    assert answer.headers[DEPLOYMENT_HEADER] == "blue"


def test_score_takes_langchains_flat_form_and_params(world: dict[str, Any]) -> None:
    flat = score(world, {"input_data": {"input_string": QUESTION, "parameters": {"max_new_tokens": 8}}})
    assert flat.status_code == 200, flat.text
    assert isinstance(flat.json()["output"], str)
    alias = score(world, {"input_data": {"input_string": QUESTION, "params": {"max_new_tokens": 8}}})
    assert alias.status_code == 200, alias.text


def test_score_answers_several_conversations_with_a_list(world: dict[str, Any]) -> None:
    second = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rivers?"}]
    answer = score(world, {"input_data": {"input_string": [QUESTION, second], "parameters": {"max_new_tokens": 4}}})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["output"]
    assert isinstance(outputs, list) and len(outputs) == 2


@pytest.mark.parametrize(
    ("body", "target"),
    [
        (
            {"input_data": {"input_string": [[{"role": "robot", "content": "hi"}]]}},
            "input_data.input_string[0][0].role",
        ),
        ({"input_data": {"input_string": QUESTION, "parameters": {"beams": 2}}}, "input_data.parameters.beams"),
        ({"input_data": {"input_string": []}}, "input_data.input_string"),
        ({"input_data": {"input_string": [QUESTION, QUESTION[0]]}}, "input_data.input_string"),
        (
            {"input_data": {"input_string": QUESTION, "parameters": {"temperature": 0}}},
            "input_data.parameters.temperature",
        ),
        ({"inputs": QUESTION}, "input_data"),
    ],
)
def test_score_rejects_a_bad_body_in_azures_error_shape_naming_the_field(
    world: dict[str, Any], body: dict[str, Any], target: str
) -> None:
    answer = score(world, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "UserError"
    assert error["details"][0]["target"] in (target, f"{target}.input_data")
    assert target.rsplit(".", maxsplit=1)[-1].split("[", maxsplit=1)[0] in error["message"]


def test_score_refuses_an_empty_conversation_with_a_400_not_a_500(world: dict[str, Any]) -> None:
    answer = score(world, {"input_data": {"input_string": [[]]}})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][0]["target"] == "input_data.input_string[0]"


# --- The OpenAI surface, through the official SDK ------------------------------------------------


def test_openai_sdk_chat_completion(world: dict[str, Any]) -> None:
    completion = client(world).chat.completions.create(model="any", messages=QUESTION, max_tokens=12)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == MODEL_ID
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 12
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_openai_sdk_lists_the_model(world: dict[str, Any]) -> None:
    assert [model.id for model in client(world).models.list()] == [MODEL_ID]


def test_openai_sdk_streams_chunks_and_usage(world: dict[str, Any]) -> None:
    sdk = client(world)
    asked = {"model": "any", "messages": QUESTION, "max_tokens": 24, "min_tokens": 24, "temperature": 0}
    whole = sdk.chat.completions.create(
        **{k: v for k, v in asked.items() if k != "min_tokens"}, extra_body={"min_tokens": 24}
    )
    chunks = list(
        sdk.chat.completions.create(
            **{k: v for k, v in asked.items() if k != "min_tokens"},
            extra_body={"min_tokens": 24},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(content) > 1  # streamed as it was decoded, not in one piece
    assert "".join(content).strip() == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_the_stream_ends_with_done_on_the_wire(world: dict[str, Any]) -> None:
    with httpx.stream(
        "POST",
        f"{world['url']}/v1/chat/completions",
        json={"messages": QUESTION, "max_tokens": 4, "stream": True},
        headers={"Authorization": f"Bearer {world['key']}"},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)


def test_a_wrong_key_is_an_authentication_error(world: dict[str, Any]) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        client(world, key="not-the-key").chat.completions.create(model="any", messages=QUESTION)
    assert "endpoint key" in raised.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format.type"),
        ({"n": 99}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"beam_width": 4}, "beam_width"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_a_bad_request_is_a_readable_bad_request_error(
    world: dict[str, Any], extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(world).chat.completions.create(model="any", messages=QUESTION, max_tokens=4, extra_body=extra)
    assert raised.value.param == param
    assert param.split(".", maxsplit=1)[0] in raised.value.message
    assert "Error code: 400" in str(raised.value) and raised.value.message != "Error code: 400"


def test_images_and_audio_are_refused_naming_the_part(world: dict[str, Any]) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    with pytest.raises(openai.BadRequestError) as raised:
        client(world).chat.completions.create(model="any", messages=messages)
    assert raised.value.param == "messages[0].content[1].type"
    assert "image_url" in raised.value.message


def test_text_parts_and_the_developer_role_are_accepted(world: dict[str, Any]) -> None:
    messages = [
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": "about bees."}]},
    ]
    completion = client(world).chat.completions.create(model="any", messages=messages, max_tokens=4)
    assert completion.choices[0].message.content is not None


def test_max_completion_tokens_n_and_seed_are_honoured(world: dict[str, Any]) -> None:
    sdk = client(world)
    asked = {"model": "any", "messages": QUESTION, "max_completion_tokens": 6, "temperature": 1.0, "seed": 7}
    first = sdk.chat.completions.create(**asked, n=2, extra_body={"min_tokens": 6})
    again = sdk.chat.completions.create(**asked, n=2, extra_body={"min_tokens": 6})
    assert len(first.choices) == 2 and [c.index for c in first.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in first.choices)
    assert first.usage.completion_tokens == 12
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_stop_sequences_cut_the_answer(world: dict[str, Any]) -> None:
    sdk = client(world)
    asked = {"model": "any", "messages": QUESTION, "max_tokens": 40, "temperature": 0}
    free = sdk.chat.completions.create(**asked, extra_body={"min_tokens": 40}).choices[0].message.content
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop.strip(), f"pick another stop from {free!r}"
    cut = sdk.chat.completions.create(**asked, stop=[stop], extra_body={"min_tokens": 40}).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.message.content
    assert free.startswith(cut.message.content)


def test_a_prompt_longer_than_the_context_is_refused_unless_truncation_is_asked(world: dict[str, Any]) -> None:
    context = world["engines"]["blue"].context
    long = [{"role": "user", "content": " ".join(["bees and honey"] * context)}]
    with pytest.raises(openai.BadRequestError) as raised:
        client(world).chat.completions.create(model="any", messages=long, max_tokens=4)
    assert raised.value.code == "context_length_exceeded"
    assert f"maximum context length is {context} tokens" in raised.value.message
    cut = client(world).chat.completions.create(
        model="any", messages=long, max_tokens=4, extra_body={"truncate_prompt_tokens": 64}
    )
    assert cut.usage.prompt_tokens == 64


def test_max_tokens_is_bounded_by_what_the_context_leaves(world: dict[str, Any]) -> None:
    context = world["engines"]["blue"].context
    with pytest.raises(openai.BadRequestError) as raised:
        client(world).chat.completions.create(model="any", messages=QUESTION, max_tokens=context)
    assert raised.value.param == "max_tokens" and raised.value.code == "context_length_exceeded"


def test_an_empty_conversation_is_a_bad_request(world: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(world).chat.completions.create(model="any", messages=[])
    assert raised.value.param == "messages"


# --- Limits ------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_with_or_without_a_length(world: dict[str, Any]) -> None:
    limit = world["settings"].endpoint_max_request_bytes
    huge = [{"role": "user", "content": "x" * (limit + 1)}]
    with pytest.raises(openai.APIStatusError) as raised:
        client(world).chat.completions.create(model="any", messages=huge)
    assert raised.value.status_code == 413 and "limit" in raised.value.message

    def chunked() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536
        yield b'"}]}'

    answer = httpx.post(
        f"{world['url']}/score",
        content=chunked(),
        headers={"Authorization": f"Bearer {world['key']}", "content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 413
    assert answer.json()["error"]["details"][0]["code"] == "request_too_large"


def _health(world: dict[str, Any], deployment: str) -> dict[str, Any]:
    secret = keys.read_deployment_secret(world["layout"].keys, ENDPOINT, deployment)
    port = world["servers"][deployment].port
    return httpx.get(f"http://{HOST}:{port}/health", headers={SECRET_HEADER: secret}, timeout=5).json()


def _wait_idle(world: dict[str, Any], deployment: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        health = _health(world, deployment)
        if not health["running"] and not health["waiting"]:
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def _long(world: dict[str, Any]) -> dict[str, Any]:
    """A request that, left alone, generates until its deadline."""
    room = world["engines"]["tight"].context - 32
    return {"messages": QUESTION, "max_tokens": room, "min_tokens": room}


def _long_sdk(world: dict[str, Any]) -> dict[str, Any]:
    body = _long(world)
    return {
        "messages": body["messages"],
        "max_tokens": body["max_tokens"],
        "extra_body": {"min_tokens": body["min_tokens"]},
    }


def test_a_client_that_disconnects_stops_its_generation(world: dict[str, Any]) -> None:
    before = _wait_idle(world, "tight")["counts"].get("cancelled", 0)
    with httpx.stream(
        "POST",
        f"{world['url']}/v1/chat/completions",
        json={**_long(world), "stream": True},
        headers={"Authorization": f"Bearer {world['key']}", DEPLOYMENT_HEADER: "tight"},
        timeout=60,
    ) as response:
        assert next(response.iter_lines()).startswith("data: ")  # generating
    after = _wait_idle(world, "tight")
    assert after["counts"].get("cancelled", 0) == before + 1  # not run to its deadline

    # The same for a plain request: the client gives up, the router closes, the deployment stops.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{world['url']}/v1/chat/completions",
            json=_long(world),
            headers={"Authorization": f"Bearer {world['key']}", DEPLOYMENT_HEADER: "tight"},
            timeout=0.5,
        )
    assert _wait_idle(world, "tight")["counts"].get("cancelled", 0) == before + 2


def test_a_full_waiting_line_is_429_with_retry_after(world: dict[str, Any]) -> None:
    _wait_idle(world, "tight")
    headers = {"Authorization": f"Bearer {world['key']}", DEPLOYMENT_HEADER: "tight"}
    with httpx.Client(timeout=60) as http:
        streams = []
        for _ in range(2):  # one runs, one waits: the tight line is full
            stream = http.stream(
                "POST", f"{world['url']}/v1/chat/completions", json={**_long(world), "stream": True}, headers=headers
            )
            response = stream.__enter__()
            streams.append((stream, response))
        deadline = time.monotonic() + 10
        while _health(world, "tight")["waiting"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as raised:
            client(world, "tight").chat.completions.create(model="any", messages=QUESTION, max_tokens=4)
        assert int(raised.value.response.headers["retry-after"]) >= 1
        for stream, _ in streams:
            stream.__exit__(None, None, None)
    _wait_idle(world, "tight")


def test_a_request_past_the_timeout_is_408(world: dict[str, Any]) -> None:
    _wait_idle(world, "tight")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        client(world, "tight").chat.completions.create(model="any", **_long_sdk(world))
    assert raised.value.status_code == 408 and "timeout" in raised.value.message
    assert time.monotonic() - started < TIGHT_TIMEOUT_S + 10
    with pytest.raises(openai.APIError) as streamed:  # once streaming, the error comes as an event
        list(client(world, "tight").chat.completions.create(model="any", stream=True, **_long_sdk(world)))
    assert "timeout" in str(streamed.value)
    assert _wait_idle(world, "tight")["counts"]["timeout"] >= 2


def test_concurrent_requests_share_batches(world: dict[str, Any]) -> None:
    before = _wait_idle(world, "blue")["counts"]
    answers: list[str] = []

    def ask() -> None:
        completion = client(world).chat.completions.create(
            model="any", messages=QUESTION, max_tokens=48, extra_body={"min_tokens": 48}
        )
        answers.append(completion.choices[0].finish_reason)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == ["length"] * 8
    after = _wait_idle(world, "blue")["counts"]
    batches = after["batches"] - before.get("batches", 0)
    assert after["sequences"] - before.get("sequences", 0) == 8
    assert batches < 8  # at least two requests shared a forward pass


# --- No way around the key ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/score", "/v1/chat/completions", "/v1/models", "/health"])
def test_a_deployments_own_port_answers_nothing_without_its_secret(world: dict[str, Any], path: str) -> None:
    port = world["servers"]["blue"].port
    body = {"messages": QUESTION}
    for headers in ({}, {"Authorization": f"Bearer {world['key']}"}, {SECRET_HEADER: "guess"}):
        answer = httpx.request(
            "POST" if path in ("/score", "/v1/chat/completions") else "GET",
            f"http://{HOST}:{port}{path}",
            json=body,
            headers=headers,
            timeout=10,
        )
        assert answer.status_code == 401, (path, headers, answer.text)


def test_the_routers_health_reports_its_deployments(world: dict[str, Any]) -> None:
    health = httpx.get(f"{world['url']}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["deployments"]["blue"] == {"status": "ok", "traffic": 100}
    with world["store"].write() as db:  # a deployment that takes traffic and answers nothing
        keys.create_deployment_secret(world["layout"].keys, ENDPOINT, "gone")
        db.execute(
            "INSERT INTO deployments (endpoint, name, model_id, instance_type, instance_count, tags, state,"
            " port, created_at) VALUES (?, 'gone', ?, 'local', 1, '{}', 'Succeeded', ?, ?)",
            (ENDPOINT, MODEL_ID, free_port(), now()),
        )
        db.execute("UPDATE endpoints SET traffic = ? WHERE name = ?", (json.dumps({"blue": 50, "gone": 50}), ENDPOINT))
    try:
        degraded = httpx.get(f"{world['url']}/health", timeout=10)
        assert degraded.status_code == 503
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["deployments"]["gone"]["status"] == "unreachable"
    finally:
        with world["store"].write() as db:
            db.execute("DELETE FROM deployments WHERE name = 'gone'")
            db.execute(
                "UPDATE endpoints SET traffic = ? WHERE name = ?", (json.dumps({"blue": 100, "tight": 0}), ENDPOINT)
            )


def test_several_choices_stream_side_by_side(world: dict[str, Any]) -> None:
    chunks = list(
        client(world).chat.completions.create(
            model="any", messages=QUESTION, max_tokens=8, n=2, stream=True, extra_body={"min_tokens": 8}
        )
    )
    ends = {choice.index: choice.finish_reason for chunk in chunks for choice in chunk.choices if choice.finish_reason}
    assert ends == {0: "length", 1: "length"}
    for index in (0, 1):
        assert any(c.choices and c.choices[0].index == index and c.choices[0].delta.content for c in chunks)
