"""One deployment, in its own process.

``python -m shared.platform.local.scoring_server <endpoint> <deployment> <port> <model id>``
loads the registered MLflow model (``models:/<name>/<version>``) and serves, behind the endpoint's
router:

* ``POST /score``: Azure ML's chat scoring contract (``chat_api``); the answer is
  ``{"output": "<text>"}`` for one conversation and ``{"output": ["<text>", ...]}`` for several.
* ``POST /v1/chat/completions``: OpenAI's, streamed as server-sent ``chat.completion.chunk``
  events ending in ``[DONE]`` when ``stream`` is true; ``GET /v1/models``.
* ``GET /health``: 200 while the generation worker is alive and not stuck, else 503; the body says
  what runs and waits, and counts batches, sequences and how they ended.

Every request needs the deployment's secret (``keys``), which only its router holds and sends:
the port is listed in the state database and visible to anyone on the machine, and without the
secret it answers nothing but 401, so there is no way around the endpoint key.

Limits: the body size (413), the model's context (400), a waiting line (429 with
``Retry-After``) and a deadline per request, waiting included (408). A client that disconnects
stops its generation. Concurrent requests are generated in shared batches (``engine``).

A model that does not load ends the process with the reason as the last line of its log, which the
adapter reports as the deployment's error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from shared.config import Settings
from shared.platform.local import api_errors, keys, tracking
from shared.platform.local.api_errors import ApiError
from shared.platform.local.asgi import BodyLimit, disconnected
from shared.platform.local.chat_api import ChatRequest, ScoreRequest, bounded, conversation
from shared.platform.local.endpoints import DEADLINE_GRACE_S, SECRET_HEADER
from shared.platform.local.engine import CANCELLED, FAILED, TIMEOUT, Busy, Choice, Engine, Sampling
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HOST

log = logging.getLogger("ftpilot.scoring")


class RequireSecret:
    """ASGI middleware: every request must carry the deployment's secret (the router adds it)."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self.secret = secret.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            presented = dict(scope.get("headers") or []).get(SECRET_HEADER.encode(), b"")
            if not secrets.compare_digest(presented, self.secret):
                refused = ApiError(401, "Requests reach a deployment only through its endpoint, with the endpoint key.")
                await refused.response(scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def load(settings: Settings, model_id: str) -> Engine:
    """The registered model ``models:/<name>/<version>``, loaded from the registry's local artifacts."""
    import mlflow.transformers

    name, _, version = model_id.removeprefix("models:/").partition("/")
    if not model_id.startswith("models:/") or not name or not version:
        raise ValueError(f"{model_id!r} is not a registered model id (models:/<name>/<version>)")
    source = tracking.client(Layout(settings.data_dir)).get_model_version_download_uri(name, version)
    components = mlflow.transformers.load_model(source, return_type="components")
    return Engine(
        components["model"],
        components["tokenizer"],
        max_batch=settings.endpoint_max_batch,
        max_waiting=settings.endpoint_max_waiting,
        stuck_after_s=2 * settings.endpoint_request_timeout_s + 60,
    )


class _Requests:
    """How the handlers run choices on the engine: submitted together, awaited without blocking the loop."""

    def __init__(self, engine: Engine, timeout_s: float) -> None:
        self.engine = engine
        self.timeout_s = timeout_s

    async def prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return await asyncio.to_thread(self.engine.encode, messages)

    def choices(self, prompt: list[int], sampling: Sampling, count: int) -> list[Choice]:
        """``count`` choices of one prompt, sharing a deadline; a seed gives each its own (seed, seed + 1, ...)."""
        deadline = time.monotonic() + self.timeout_s
        seeds = [None if sampling.seed is None else sampling.seed + i for i in range(count)]
        return [Choice(prompt, replace(sampling, seed=seed), deadline) for seed in seeds]

    def submit(self, choices: Sequence[Choice]) -> None:
        try:
            self.engine.submit(choices)
        except Busy as busy:
            raise ApiError(
                429,
                f"The deployment is busy: {self.engine.max_waiting} sequences are already waiting. "
                f"Retry after {busy.retry_after_s} s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(busy.retry_after_s)},
            ) from None

    async def complete(self, request: Request, choices: list[Choice]) -> bool:
        """Run ``choices`` to the end; False when the client went away first (they are then canceled)."""
        loop = asyncio.get_running_loop()
        finished = [loop.create_future() for _ in choices]
        for choice, future in zip(choices, finished, strict=True):
            choice.on_text = _when_done(loop, future)
        self.submit(choices)
        for choice, future in zip(choices, finished, strict=True):
            if choice.done.is_set() and not future.done():
                future.set_result(None)
        gone = asyncio.ensure_future(disconnected(request))
        everything = asyncio.gather(*finished)
        try:
            done, _ = await asyncio.wait(
                {gone, everything}, timeout=self.timeout_s + DEADLINE_GRACE_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            gone.cancel()
        if gone in done:
            for choice in choices:
                choice.cancel()
            return False
        if everything not in done:  # the worker is stuck past every deadline
            for choice in choices:
                choice.cancel()
            raise self.timed_out()
        for choice in choices:
            self.check(choice)
        return True

    def check(self, choice: Choice) -> None:
        if choice.finish_reason == TIMEOUT:
            raise self.timed_out()
        if choice.finish_reason == FAILED:
            raise ApiError(424, f"The model failed to generate: {choice.error}", code="model_error")

    def timed_out(self) -> ApiError:
        return ApiError(
            408,
            f"The request was not answered within the endpoint's timeout of {self.timeout_s:g} s "
            "(FTPILOT_ENDPOINT_REQUEST_TIMEOUT_S), waiting included.",
            code="timeout",
        )


def _when_done(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Any:
    def on_text(choice: Choice, _: str) -> None:
        if choice.done.is_set():
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

    return on_text


def create_app(engine: Engine, deployment: str, model_id: str, settings: Settings, secret: str) -> Any:
    """The deployment's ASGI app: the secret checked first, then the body limit, then the routes."""
    app = FastAPI(title=f"ftpilot local deployment {deployment}")
    api_errors.install(app)
    runner = _Requests(engine, settings.endpoint_request_timeout_s)
    created = int(time.time())

    @app.get("/health")
    def health() -> JSONResponse:
        ok = engine.healthy()
        body = {
            "status": "ok" if ok else "unhealthy",
            "model": model_id,
            "running": engine.running,
            "waiting": engine.waiting,
            "counts": dict(engine.counts),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/score")
    async def score(body: ScoreRequest, request: Request) -> Response:
        data = body.input_data
        parameters = data.settings()
        conversations = data.conversations()
        choices = []
        for conversation_ in conversations:
            sampling, prompt = bounded(
                parameters.sampling(),
                await runner.prompt(conversation_),
                engine.context,
                parameters.truncate_prompt_tokens,
                "input_data.parameters.max_new_tokens",
            )
            choices += runner.choices(prompt, sampling, 1)
        if not await runner.complete(request, choices):
            return Response(status_code=499)
        outputs = [choice.text.strip() for choice in choices]
        return JSONResponse({"output": outputs[0] if len(outputs) == 1 else outputs})

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "ftpilot"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        body.refuse(max_n=engine.max_batch)
        messages = conversation(body.messages, "messages")
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        sampling, prompt = bounded(
            body.sampling(), await runner.prompt(messages), engine.context, body.truncate_prompt_tokens, param
        )
        reply = _Reply(model_id, len(prompt))
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return _stream(runner, runner.choices(prompt, sampling, body.n or 1), reply, include_usage)
        choices = runner.choices(prompt, sampling, body.n or 1)
        if not await runner.complete(request, choices):
            return Response(status_code=499)
        return JSONResponse(reply.completion(choices))

    return RequireSecret(BodyLimit(app, settings.endpoint_max_request_bytes), secret)


class _Reply:
    """The OpenAI response objects of one request."""

    def __init__(self, model_id: str, prompt_tokens: int) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.prompt_tokens = prompt_tokens

    def usage(self, choices: Sequence[Choice]) -> dict[str, int]:
        completion = sum(len(choice.tokens) for choice in choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def completion(self, choices: Sequence[Choice]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text.strip()},
                    "finish_reason": choice.finish_reason,
                    "logprobs": None,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": self.usage(choices),
        }

    def chunk(self, choices: list[dict[str, Any]], *, with_usage: bool, usage: dict[str, int] | None = None) -> bytes:
        """One ``chat.completion.chunk`` event; with ``stream_options.include_usage`` each carries ``usage``."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if with_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n".encode()


def _stream(runner: _Requests, choices: list[Choice], reply: _Reply, include_usage: bool) -> StreamingResponse:
    """Server-sent events: the role, then content deltas as they are decoded, each choice's end, ``[DONE]``.

    The choices are submitted before the response starts, so a full line is still a 429. When the
    client disconnects, Starlette cancels this generator and its choices stop generating.
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue()
    index = {id(choice): i for i, choice in enumerate(choices)}

    def on_text(choice: Choice, piece: str) -> None:
        item = (index[id(choice)], piece, choice.finish_reason)
        loop.call_soon_threadsafe(pieces.put_nowait, item)

    for choice in choices:
        choice.on_text = on_text
    runner.submit(choices)

    async def events() -> AsyncIterator[bytes]:
        try:
            for i in range(len(choices)):
                yield reply.chunk([_delta(i, {"role": "assistant", "content": ""})], with_usage=include_usage)
            open_choices = len(choices)
            while open_choices:
                i, piece, finish = await pieces.get()
                if piece:
                    yield reply.chunk([_delta(i, {"content": piece})], with_usage=include_usage)
                if finish is None:
                    continue
                if finish in (TIMEOUT, FAILED, CANCELLED):
                    error = (
                        runner.timed_out() if finish != FAILED else ApiError(424, choices[i].error, code="model_error")
                    )
                    yield f"data: {json.dumps(error.body('/v1/'))}\n\n".encode()
                    return
                open_choices -= 1
                yield reply.chunk([_delta(i, {}, finish)], with_usage=include_usage)
            if include_usage:
                yield reply.chunk([], with_usage=True, usage=reply.usage(choices))
            yield b"data: [DONE]\n\n"
        finally:
            for choice in choices:
                choice.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _delta(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint, deployment, port, model_id = argv[0], argv[1], int(argv[2]), argv[3]
    settings = Settings()
    try:
        secret = keys.read_deployment_secret(Layout(settings.data_dir).keys, endpoint, deployment)
        engine = load(settings, model_id)
    except Exception as error:
        log.exception("deployment %s/%s could not load model %s", endpoint, deployment, model_id)
        print(f"could not load model {model_id}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    log.info("deployment %s/%s serving %s on http://%s:%d", endpoint, deployment, model_id, HOST, port)
    app = create_app(engine, deployment, model_id, settings, secret)
    uvicorn.run(app, host=HOST, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
