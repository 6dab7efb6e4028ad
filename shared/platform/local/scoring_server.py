"""One deployment, in its own process.

``python -m shared.platform.local.scoring_server <endpoint> <deployment> <port> <model id>``
loads the registered MLflow model (``models:/<name>/<version>``) and serves what a managed
online deployment of a fine-tuned chat model serves:

* ``POST /score``: ``{"input_data": {"input_string": [conversation, ...], "parameters": {...}}}``,
  each conversation a list of ``{"role", "content"}``; the answer is ``{"output": "<text>"}`` for
  one conversation and ``{"output": ["<text>", ...]}`` for several.
* ``POST /v1/chat/completions``: the OpenAI chat shape (``messages``, ``temperature``, ``top_p``,
  ``max_tokens``), answered with one ``chat.completion`` choice.
* ``GET /health``: 200 once the model is loaded (the server only listens after loading it).

Prompts are built with the tokenizer's chat template, the one the model was trained with. Generation
is serialised by a lock: one model, one forward pass at a time, as one instance would. The model is
loaded from the registry's local artifact folder in place (MLflow copies nothing for a local store).
A model that does not load ends the process with the reason as the last line of its log, which the
adapter reports as the deployment's error.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import torch
import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from shared.config import Settings
from shared.platform.local import tracking
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HOST

log = logging.getLogger("ftpilot.scoring")

DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS = 4096


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Generation(BaseModel):
    """Generation settings a request may pass; others are ignored, as Azure's scoring server does."""

    model_config = ConfigDict(extra="ignore")

    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    do_sample: bool = False
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    repetition_penalty: float | None = Field(None, gt=0)


class InputData(BaseModel):
    input_string: list[list[Message]] = Field(min_length=1)
    parameters: Generation = Field(default_factory=Generation)


class ScoreRequest(BaseModel):
    input_data: InputData


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    messages: list[Message] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's: 0 means greedy
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    stream: bool = False


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Generator:
    """A causal LM and its tokenizer, answering conversations one at a time."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        stops = model.generation_config.eos_token_id
        self.stop_ids = set(stops if isinstance(stops, list) else [stops])
        self._lock = threading.Lock()

    def complete(self, messages: list[Message], settings: Generation) -> Completion:
        conversation = [message.model_dump() for message in messages]
        inputs = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        options: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
        if settings.do_sample:
            options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
        if settings.repetition_penalty is not None:
            options["repetition_penalty"] = settings.repetition_penalty
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **options, pad_token_id=self.tokenizer.pad_token_id)
        prompt_length = inputs["input_ids"].shape[1]
        new = output[0, prompt_length:].tolist()
        return Completion(
            text=self.tokenizer.decode(new, skip_special_tokens=True).strip(),
            prompt_tokens=prompt_length,
            completion_tokens=len(new),
            finish_reason="stop" if new and new[-1] in self.stop_ids else "length",
        )


def load(layout: Layout, model_id: str) -> Generator:
    """The registered model ``models:/<name>/<version>``, loaded from the registry's local artifacts."""
    import mlflow.transformers

    name, _, version = model_id.removeprefix("models:/").partition("/")
    if not model_id.startswith("models:/") or not name or not version:
        raise ValueError(f"{model_id!r} is not a registered model id (models:/<name>/<version>)")
    source = tracking.client(layout).get_model_version_download_uri(name, version)
    components = mlflow.transformers.load_model(source, return_type="components")
    return Generator(components["model"], components["tokenizer"])


def create_app(generator: Generator, deployment: str, model_id: str) -> FastAPI:
    app = FastAPI(title=f"ftpilot local deployment {deployment}")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": model_id}

    @app.post("/score")
    def score(request: ScoreRequest) -> dict[str, Any]:
        data = request.input_data
        outputs = [generator.complete(conversation, data.parameters).text for conversation in data.input_string]
        return {"output": outputs[0] if len(outputs) == 1 else outputs}

    @app.post("/v1/chat/completions")
    def chat(request: ChatRequest) -> dict[str, Any]:
        if request.stream:
            raise HTTPException(400, "streaming is not supported by the local workspace")
        settings = Generation(
            temperature=request.temperature or 1.0,
            top_p=request.top_p,
            do_sample=request.temperature > 0,
            max_new_tokens=request.max_tokens,
        )
        answer = generator.complete(request.messages, settings)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }

    return app


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint, deployment, port, model_id = argv[0], argv[1], int(argv[2]), argv[3]
    try:
        generator = load(Layout(Settings().data_dir), model_id)
    except Exception as error:
        log.exception("deployment %s/%s could not load model %s", endpoint, deployment, model_id)
        print(f"could not load model {model_id}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    log.info("deployment %s/%s serving %s on http://%s:%d", endpoint, deployment, model_id, HOST, port)
    uvicorn.run(create_app(generator, deployment, model_id), host=HOST, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
