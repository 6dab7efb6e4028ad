"""Text generation for one deployment: concurrent requests share each forward pass.

One worker thread owns the model. Requests wait in a bounded line (``Busy`` beyond it, which the
server answers 429 with ``Retry-After``); the worker takes everything waiting, up to ``max_batch``
sequences, and generates them as one left-padded batch. On two CPU cores a forward pass over
eight short sequences costs little more than over one, so batching is what makes eight clients
faster than eight turns at a lock.

Each sequence keeps its own settings inside the shared batch:

* ``_RowSampler`` (a logits processor) picks every row's next token with that row's temperature,
  top-k, top-p, repetition penalty and seeded generator, and hands ``generate`` (run greedy) a
  one-hot choice. A seeded request draws from its own generator, so it answers the same each time
  it is sent alone (batched with others, padding can move the logits by a rounding error).
* ``_RowStop`` (a stopping criterion) ends a row at its end token, its own token budget, a stop
  string, its deadline, or when its client went away, and passes its new text on as it is decoded:
  that is what streaming sends.

Batches are static: a request that arrives while one runs waits for the next. Every request has a
deadline (waiting included), so no batch runs longer than the longest deadline in it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ftpilot.engine")

# How a choice ended. "stop" and "length" are OpenAI's finish reasons; the others are errors.
STOP, LENGTH, TIMEOUT, CANCELLED, FAILED = "stop", "length", "timeout", "cancelled", "failed"
# Incomplete UTF-8 at the end of a decode: held back until the next token completes it.
_PARTIAL = "\ufffd"


@dataclass(frozen=True)
class Sampling:
    """How one sequence is generated."""

    max_new_tokens: int
    min_tokens: int = 0  # the end token is suppressed until this many were generated (vLLM's extension)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Busy(Exception):
    """The waiting line is full; ``retry_after_s`` is when a retry is likely to be taken."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the deployment is busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Choice:
    """One sequence to generate: filled in by the worker thread, read by the request's handler."""

    def __init__(
        self,
        prompt_ids: Sequence[int],
        sampling: Sampling,
        deadline: float,
        on_text: Callable[[Choice, str], None] | None = None,
    ) -> None:
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.deadline = deadline  # time.monotonic()
        self.on_text = on_text  # called from the worker thread with each new piece of text
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.error = ""
        self.done = threading.Event()
        self._emitted = 0
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating this sequence (its client went away); a no-op once it is done."""
        self._cancelled.set()

    def advance(self, decode: Callable[[list[int]], str]) -> None:
        """Decode what was generated so far, cut at a stop string, and pass on what is certain."""
        text = decode(self.tokens).lstrip()
        cut = min((text.find(stop) for stop in self.sampling.stop if stop in text), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            self.finish(STOP)
            return
        self.text = text
        self._emit(len(text) - _held_back(text, self.sampling.stop))

    def finish(self, reason: str, error: str = "") -> None:
        if self.finish_reason is not None:
            return
        if reason in (STOP, LENGTH):
            self.text = self.text.removesuffix(_PARTIAL)
            self._emit(len(self.text))
        self.finish_reason, self.error = reason, error
        self.done.set()
        if self.on_text is not None:
            self.on_text(self, "")

    def _emit(self, upto: int) -> None:
        if upto > self._emitted:
            piece, self._emitted = self.text[self._emitted : upto], upto
            if self.on_text is not None:
                self.on_text(self, piece)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may still turn out to be a stop string or a broken character."""
    held = len(text) - len(text.rstrip(_PARTIAL))
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:length]):
                held = max(held, length)
                break
    return held


class Engine:
    """A causal LM and its tokenizer, generating batches of waiting choices on one worker thread."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, max_waiting: int, stuck_after_s: float) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        stops = model.generation_config.eos_token_id
        self.stop_ids = frozenset(stops if isinstance(stops, list) else [stops])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.stuck_after_s = stuck_after_s
        self.counts: Counter[str] = Counter()  # batches, sequences and how each ended: for /health
        self.running = 0
        self._waiting: deque[Choice] = deque()
        self._wake = threading.Condition()
        self._batch_s = 1.0  # recent batch duration, for Retry-After
        self._running_since: float | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="generate", daemon=True)
        self._worker.start()

    def encode(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt for a conversation: the tokenizer's chat template, the one the model was trained with."""
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])

    def submit(self, choices: Sequence[Choice]) -> None:
        """Queue ``choices`` together, or raise ``Busy`` when the line cannot take them all.

        A request is never refused while nothing waits, however many choices it asks for.
        """
        with self._wake:
            if self._waiting and len(self._waiting) + len(choices) > self.max_waiting:
                batches = math.ceil((len(self._waiting) + len(choices)) / self.max_batch)
                raise Busy(max(1, math.ceil(self._batch_s * batches)))
            self._waiting.extend(choices)
            self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def healthy(self) -> bool:
        """The worker is alive and no batch has run past the longest deadline it could hold."""
        running = self._running_since
        return self._worker.is_alive() and (running is None or time.monotonic() - running < self.stuck_after_s)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            for choice in self._waiting:
                choice.finish(CANCELLED)
            self._waiting.clear()
            self._wake.notify()

    def _take(self) -> list[Choice] | None:
        with self._wake:
            while not self._waiting and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            batch = []
            while self._waiting and len(batch) < self.max_batch:
                batch.append(self._waiting.popleft())
            return batch

    def _work(self) -> None:
        while (taken := self._take()) is not None:
            now = time.monotonic()
            batch = []
            for choice in taken:
                if choice.cancelled:
                    choice.finish(CANCELLED)
                elif now >= choice.deadline:
                    choice.finish(TIMEOUT)
                else:
                    batch.append(choice)
            if batch:
                self._run(batch, now)
            self.counts.update(choice.finish_reason for choice in taken)

    def _run(self, batch: list[Choice], started: float) -> None:
        self._running_since, self.running = started, len(batch)
        self.counts.update(batches=1, sequences=len(batch))
        try:
            self._generate(batch)
        except Exception as error:  # one bad batch must not end the deployment
            log.exception("generation failed for a batch of %d", len(batch))
            for choice in batch:
                choice.finish(FAILED, f"{type(error).__name__}: {error}")
        finally:
            self._batch_s = 0.7 * self._batch_s + 0.3 * (time.monotonic() - started)
            self._running_since, self.running = None, 0

    def _generate(self, batch: list[Choice]) -> None:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(choice.prompt_ids) for choice in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, choice in enumerate(batch):
            ids[row, width - len(choice.prompt_ids) :] = torch.tensor(choice.prompt_ids)
            mask[row, width - len(choice.prompt_ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=max(choice.sampling.max_new_tokens for choice in batch),
            do_sample=False,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([_RowSampler(batch, self.pad_id, self.stop_ids)]),
                stopping_criteria=StoppingCriteriaList([_RowStop(batch, self)]),
            )
        for choice in batch:
            choice.finish(LENGTH)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


class _RowSampler:
    """Each row's next token, drawn with that row's own settings; ``generate`` then takes it greedily."""

    def __init__(self, batch: list[Choice], pad_id: int, stop_ids: frozenset[int]) -> None:
        import torch

        self.batch = batch
        self.pad_id = pad_id
        self.stop_ids = sorted(stop_ids)
        self.generators = []
        for choice in batch:
            generator = torch.Generator()
            if choice.sampling.seed is not None:
                generator.manual_seed(choice.sampling.seed)
            else:
                generator.seed()
            self.generators.append(generator)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        picked = torch.full_like(scores, -math.inf)
        for row, choice in enumerate(self.batch):
            if choice.finish_reason is not None:
                picked[row, self.pad_id] = 0
                continue
            logits = scores[row].float()
            if len(choice.tokens) < choice.sampling.min_tokens:
                logits[self.stop_ids] = -math.inf
            picked[row, self._pick(choice, logits, self.generators[row])] = 0
        return picked

    @staticmethod
    def _pick(choice: Choice, logits: Any, generator: Any) -> int:
        import torch

        sampling = choice.sampling
        if sampling.repetition_penalty is not None and sampling.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(choice.prompt_ids + choice.tokens)), dtype=torch.long)
            values = logits[seen]
            logits[seen] = torch.where(
                values < 0, values * sampling.repetition_penalty, values / sampling.repetition_penalty
            )
        if not sampling.do_sample:
            return int(torch.argmax(logits))
        logits = logits / sampling.temperature
        if sampling.top_k is not None and sampling.top_k < logits.numel():
            threshold = torch.topk(logits, sampling.top_k).values[-1]
            logits = logits.masked_fill(logits < threshold, -math.inf)
        if sampling.top_p < 1.0:
            ordered, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= sampling.top_p  # keep the token that crosses
            logits = logits.index_put((order[drop],), torch.tensor(-math.inf))
        return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


class _RowStop:
    """Records each row's new token and says which rows are done."""

    def __init__(self, batch: list[Choice], engine: Engine) -> None:
        self.batch = batch
        self.engine = engine

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        last = input_ids[:, -1].tolist()
        now = time.monotonic()
        for row, choice in enumerate(self.batch):
            if choice.finish_reason is not None:
                continue
            if last[row] in self.engine.stop_ids:
                choice.finish(STOP)
                continue
            choice.tokens.append(last[row])
            choice.advance(self.engine.decode)
            if choice.finish_reason is not None:
                continue
            if choice.cancelled:
                choice.finish(CANCELLED)
            elif now >= choice.deadline:
                choice.finish(TIMEOUT)
            elif len(choice.tokens) >= choice.sampling.max_new_tokens:
                choice.finish(LENGTH)
        return torch.tensor([choice.finish_reason is not None for choice in self.batch], dtype=torch.bool)
