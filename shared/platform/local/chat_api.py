"""The two chat request shapes a local endpoint takes, checked and turned into prompts and ``Sampling``.

* **Azure ML's chat scoring contract**, ``POST /score``: ``input_data.input_string`` is either one
  conversation as a flat list of messages (what LangChain's ``AzureMLChatOnlineEndpoint``
  formatters send) or a list of conversations (the walkthrough's ``[[...]]``);
  ``input_data.parameters`` (or ``params``) holds Hugging Face generation settings.
* **OpenAI's chat completions**, ``POST /v1/chat/completions``, with vLLM's extensions ``top_k``,
  ``repetition_penalty``, ``min_tokens`` and ``truncate_prompt_tokens``.

What the endpoint cannot honour it refuses with a 400 that names the field, instead of ignoring
it: a client that asks for tools, JSON output or images would otherwise get plain text and not
know why. Unknown fields are refused too, as OpenAI's API refuses them. ``developer`` messages are
``system`` messages; text content parts are joined.

A prompt longer than the model's context is refused unless ``truncate_prompt_tokens`` asks for it
to be cut (its last tokens kept); ``max_tokens`` may not ask for more than the context leaves, and
when it is not given, the answer is bounded by ``DEFAULT_MAX_NEW_TOKENS`` and by what is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.platform.local.api_errors import ApiError
from shared.platform.local.engine import Sampling

DEFAULT_MAX_NEW_TOKENS = 256
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
Conversation = list[dict[str, str]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    """``POST /v1/chat/completions``; fields OpenAI defines that cannot be honoured are checked in ``refuse``."""

    model: str | None = None
    messages: list[Any]
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    # Bookkeeping fields with no effect on the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # vLLM's extensions.
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int = Field(0, ge=0)
    truncate_prompt_tokens: int | None = Field(None, ge=1)

    def refuse(self, max_n: int) -> None:
        """A 400 for the first thing asked for that this endpoint does not do."""
        unsupported = [
            ("tools", bool(self.tools), "tool calling is not supported by this endpoint"),
            ("tool_choice", self.tool_choice not in (None, "none"), "tool calling is not supported by this endpoint"),
            ("functions", bool(self.functions), "function calling is not supported by this endpoint"),
            ("function_call", self.function_call not in (None, "none"), "function calling is not supported"),
            ("logprobs", bool(self.logprobs), "log probabilities are not supported by this endpoint"),
            ("top_logprobs", self.top_logprobs is not None, "log probabilities are not supported by this endpoint"),
            ("presence_penalty", bool(self.presence_penalty), "use repetition_penalty instead"),
            ("frequency_penalty", bool(self.frequency_penalty), "use repetition_penalty instead"),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported by this endpoint"),
            ("modalities", self.modalities not in (None, ["text"]), "this endpoint answers with text only"),
            ("audio", self.audio is not None, "this endpoint answers with text only"),
            ("prediction", self.prediction is not None, "predicted outputs are not supported by this endpoint"),
            ("web_search_options", self.web_search_options is not None, "web search is not supported"),
        ]
        for param, asked, why in unsupported:
            if asked:
                raise ApiError(400, f"{param}: {why}.", param=param, code="unsupported_parameter")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise ApiError(
                400,
                f"response_format: type {kind!r} is not supported; this endpoint answers with plain text only.",
                param="response_format.type",
                code="unsupported_value",
            )
        if (self.n or 1) > max_n:
            raise ApiError(400, f"n: at most {max_n} choices per request.", param="n", code="unsupported_value")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options: only allowed when stream is true.", param="stream_options")

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences.", param="stop")
        if any(not stop for stop in stops):
            raise ApiError(400, "stop: a stop sequence may not be empty.", param="stop")
        return tuple(stops)

    def sampling(self) -> Sampling:
        """The generation settings, before the prompt's length bounds ``max_new_tokens``."""
        temperature = 1.0 if self.temperature is None else self.temperature
        return Sampling(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or 0,
            min_tokens=self.min_tokens,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            stop=self.stops(),
        )


class ScoreParameters(_Strict):
    """Hugging Face generation settings, as Azure's chat-completion scoring takes them."""

    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    do_sample: bool = False
    max_new_tokens: int | None = Field(None, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    return_full_text: Literal[False] = False  # the answer never repeats the prompt
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    truncate_prompt_tokens: int | None = Field(None, ge=1)

    def sampling(self) -> Sampling:
        return Sampling(
            max_new_tokens=self.max_new_tokens or 0,
            min_tokens=self.min_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
            stop=tuple(self.stop),
        )


class InputData(_Strict):
    input_string: list[Any] = Field(min_length=1)
    parameters: ScoreParameters | None = None
    params: ScoreParameters | None = None

    def conversations(self) -> list[Conversation]:
        """One conversation (a flat list of messages) or several (a list of lists), each checked."""
        items = self.input_string
        where = "input_data.input_string"
        if all(isinstance(item, dict) for item in items):
            return [conversation(items, where)]
        if all(isinstance(item, list) for item in items):
            return [conversation(item, f"{where}[{i}]") for i, item in enumerate(items)]
        raise ApiError(
            400,
            f"{where}: a list of messages (one conversation) or a list of conversations, not a mix.",
            param=where,
        )

    def settings(self) -> ScoreParameters:
        if self.parameters is not None and self.params is not None:
            raise ApiError(400, "input_data: give parameters or params, not both.", param="input_data.params")
        return self.parameters or self.params or ScoreParameters()


class ScoreRequest(_Strict):
    input_data: InputData


def conversation(messages: Sequence[Any], where: str) -> Conversation:
    """``messages`` as ``[{"role", "content"}]`` with text content, or a 400 naming the first bad field."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"{where}: at least one message is required.", param=where)
    checked = []
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{at}: a message is an object with role and content.", param=at)
        unknown = sorted(set(message) - {"role", "content", "name"})
        if unknown:
            why = "tool calls are not supported" if unknown[0] in ("tool_calls", "function_call") else "unknown field"
            raise ApiError(400, f"{at}.{unknown[0]}: {why}.", param=f"{at}.{unknown[0]}")
        role = message.get("role")
        if role not in ROLES:
            allowed = ", ".join(ROLES)
            raise ApiError(400, f"{at}.role: {role!r} is not one of {allowed}.", param=f"{at}.role")
        checked.append({"role": ROLES[role], "content": _text(message.get("content"), f"{at}.content")})
    return checked


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ApiError(
                    400,
                    f"{where}[{j}].type: {kind!r} content is not supported; this endpoint reads text parts only.",
                    param=f"{where}[{j}].type",
                    code="unsupported_value",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise ApiError(400, f"{where}: a string or a list of text parts.", param=where)


def bounded(
    sampling: Sampling, prompt: list[int], context: int, truncate: int | None, param: str
) -> tuple[Sampling, list[int]]:
    """``sampling`` with its token budget inside the model's context, and the prompt (cut only if asked)."""
    if truncate is not None:
        if truncate >= context:
            raise ApiError(
                400,
                f"truncate_prompt_tokens: {truncate} leaves no room in the model's context of {context} tokens.",
                param="truncate_prompt_tokens",
            )
        prompt = prompt[-truncate:]
    left = context - len(prompt)
    if left <= 0:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, your messages resulted in "
            f"{len(prompt)} tokens. Shorten them, or set truncate_prompt_tokens to cut the prompt.",
            param="messages",
            code="context_length_exceeded",
        )
    if sampling.max_new_tokens > left:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{len(prompt) + sampling.max_new_tokens} tokens ({len(prompt)} in the messages, "
            f"{sampling.max_new_tokens} in the completion). Reduce {param}.",
            param=param,
            code="context_length_exceeded",
        )
    wanted = sampling.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, left)
    if sampling.min_tokens > wanted:
        raise ApiError(400, f"min_tokens: {sampling.min_tokens} is more than {param} ({wanted}).", param="min_tokens")
    return replace(sampling, max_new_tokens=wanted), prompt
