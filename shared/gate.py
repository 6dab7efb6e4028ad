"""The promotion gate: a new model takes an endpoint's traffic only if it is not worse than the live one.

A completed job is not a successful fine-tune. After the smoke test, while the new deployment
(the challenger) still has 0% traffic, the gate asks it and the endpoint's live deployment (the
champion) the same K held-out conversations from the run's test split, each addressed directly
with the deployment header, greedy, with the same token budget.

* **The sample** is deterministic: the K test conversations whose prompts hash lowest (SHA-256),
  each cut after its last user turn that has an assistant answer, that answer the reference. The
  split is streamed; only K candidates are held.
* **The score** of an answer is ROUGE-L F against the reference (Google's ``rouge-score``, the
  reference implementation, with a Unicode word tokenizer so non-English text is not scored as
  empty). ROUGE-L is what instruction-tuning work reports for open-ended answers against a
  reference (Super-NaturalInstructions, Self-Instruct): it rewards the reference's words in order
  without asking for exact n-grams, needs no model (BERTScore would need one, and the machine may
  be offline), and is deterministic. An empty or failed answer scores 0 and counts as a failure.
* **The aggregates** are the mean with a 95% bootstrap interval (1,000 resamples, seeded by the
  run id), the failure share and the median latency per answer; for the pair, the mean paired
  difference (challenger minus champion) with its interval.
* **The rule**: promote when the mean paired difference is at least ``-tolerance`` and the
  challenger's failure share is at most the maximum. The rule is on the mean: with K = 20 the
  interval is wide, and demanding its lower bound clear ``-tolerance`` would turn away most
  models as good as the champion; the report shows the interval so a reader sees how sure the
  verdict is. The first model on an endpoint has no champion, and nothing serves until one
  passes: it passes when it answers (not every answer empty or failed) and, if
  ``gate_max_eval_loss`` is set, when its job's ``eval_loss`` is at most that.
  A champion that disappears mid-gate leaves the challenger judged as a first model, with a note.

Settings (``gate_*``) hold the rule; blob metadata ``ftpilot_gate_<setting>`` on an upload
overrides it for that dataset, as ``ftpilot_<input>`` overrides fine-tuning parameters.
"""

from __future__ import annotations

import hashlib
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from shared.config import Settings
from shared.platform.port import TransientError

METADATA_PREFIX = "ftpilot_gate_"
RESAMPLES = 1000
CONFIDENCE = 0.95
SHOWN_CHARS = 300  # of each prompt, reference and answer in the report
_WORDS = re.compile(r"\w+", re.UNICODE)
GATE_FIELDS = ("enabled", "samples", "tolerance", "max_failure_share", "max_eval_loss", "max_new_tokens")


class GateConfigError(ValueError):
    """A per-dataset override that is not a valid gate setting; the message names it."""


@dataclass(frozen=True)
class GateRule:
    enabled: bool
    samples: int
    tolerance: float
    max_failure_share: float
    max_eval_loss: float | None
    max_new_tokens: int

    @classmethod
    def of(cls, settings: Settings, overrides: Mapping[str, str]) -> GateRule:
        """The settings' rule with a dataset's overrides, each checked as the setting itself is."""
        values = {name: getattr(settings, f"gate_{name}") for name in GATE_FIELDS}
        for name, raw in overrides.items():
            if name not in GATE_FIELDS:
                known = ", ".join(METADATA_PREFIX + known for known in GATE_FIELDS)
                raise GateConfigError(f"blob metadata {METADATA_PREFIX}{name}: not a gate setting (known: {known})")
            definition = Settings.model_fields[f"gate_{name}"]
            try:
                values[name] = TypeAdapter(Annotated[definition.annotation, definition]).validate_python(
                    None if name == "max_eval_loss" and not raw.strip() else raw
                )
            except ValidationError as error:
                raise GateConfigError(
                    f"blob metadata {METADATA_PREFIX}{name}: {error.errors()[0]['msg']} (got {raw!r})"
                ) from None
        return cls(**values)

    def parameters(self) -> dict[str, Any]:
        """The generation settings both models get: greedy, so the comparison is not a coin toss."""
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens}


def overrides(metadata: Mapping[str, str]) -> dict[str, str]:
    """``ftpilot_gate_<setting>`` blob metadata, by setting."""
    return {
        key[len(METADATA_PREFIX) :].lower(): value
        for key, value in metadata.items()
        if key.lower().startswith(METADATA_PREFIX)
    }


@dataclass(frozen=True)
class Sample:
    prompt: list[dict[str, str]]
    reference: str
    key: str  # the SHA-256 of the prompt: what orders the sample


def pick(lines: Iterable[bytes], count: int) -> list[Sample]:
    """The ``count`` test conversations whose prompts hash lowest, in that order (streamed, ``count`` held)."""
    chosen: dict[str, Sample] = {}
    for line in lines:
        if not line.strip():
            continue
        messages = orjson.loads(line)["messages"]
        answered = [i for i in range(len(messages) - 1) if messages[i]["role"] == "user"]
        answered = [i for i in answered if messages[i + 1]["role"] == "assistant"]
        if not answered:
            continue
        last = answered[-1]
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]
        key = hashlib.sha256(orjson.dumps(prompt)).hexdigest()
        if key in chosen:
            continue
        chosen[key] = Sample(prompt, messages[last + 1]["content"], key)
        if len(chosen) > count:
            del chosen[max(chosen)]
    return [chosen[key] for key in sorted(chosen)]


@dataclass(frozen=True)
class Answer:
    text: str
    latency_s: float
    error: str = ""
    transient: bool = False  # the error may go away by itself (a timeout, a 503): the gate may be asked again

    @property
    def failed(self) -> bool:
        return bool(self.error) or not self.text.strip()


class _Words:
    """rouge-score's tokenizer interface: lower-cased Unicode words (its default drops non-ASCII)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _WORDS.findall(text.lower())


def scores(answers: Sequence[Answer], samples: Sequence[Sample]) -> list[float]:
    """ROUGE-L F of each answer against its reference; 0 for a failed one."""
    from rouge_score import rouge_scorer  # imports nltk: ~2 s, paid only when a gate runs

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    return [
        0.0 if answer.failed else scorer.score(sample.reference, answer.text)["rougeL"].fmeasure
        for answer, sample in zip(answers, samples, strict=True)
    ]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


def bootstrap(values: Sequence[float], seed: str) -> Interval:
    """The mean and its percentile bootstrap interval at ``CONFIDENCE``, the same for the same seed."""
    generator = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(generator.choices(values, k=n)) for _ in range(RESAMPLES))
    tail = (1 - CONFIDENCE) / 2
    return Interval(
        statistics.fmean(values), means[int(tail * RESAMPLES)], means[min(RESAMPLES - 1, int((1 - tail) * RESAMPLES))]
    )


@dataclass(frozen=True)
class Aggregate:
    """One model's answers, summed up."""

    deployment: str
    rouge_l: Interval
    failure_share: float
    latency_p50_s: float

    @classmethod
    def of(cls, deployment: str, answers: Sequence[Answer], values: Sequence[float], seed: str) -> Aggregate:
        return cls(
            deployment=deployment,
            rouge_l=bootstrap(values, f"{seed}:{deployment}"),
            failure_share=sum(answer.failed for answer in answers) / len(answers),
            latency_p50_s=statistics.median(answer.latency_s for answer in answers),
        )


@dataclass(frozen=True)
class Verdict:
    promote: bool
    why: str
    rule: dict[str, Any]
    challenger: Aggregate | None = None
    champion: Aggregate | None = None
    difference: Interval | None = None
    eval_loss: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def decision(self) -> str:
        return "promoted" if self.promote else "not_promoted"

    def headline(self) -> dict[str, Any]:
        """What the run record and ``status`` carry."""
        line: dict[str, Any] = {"decision": self.decision, "why": self.why}
        if self.challenger is not None:
            line["challenger_rouge_l"] = round(self.challenger.rouge_l.mean, 4)
            line["challenger_failure_share"] = round(self.challenger.failure_share, 4)
        if self.champion is not None:
            line["champion"] = self.champion.deployment
            line["champion_rouge_l"] = round(self.champion.rouge_l.mean, 4)
        if self.difference is not None:
            line["difference"] = round(self.difference.mean, 4)
        return line


def decide(
    rule: GateRule,
    challenger: Aggregate,
    *,
    champion: Aggregate | None,
    difference: Interval | None,
    eval_loss: float | None,
    notes: Sequence[str] = (),
) -> Verdict:
    """The rule, applied: every reason against promotion is named in ``why``."""
    against = []
    if champion is not None and challenger.failure_share > rule.max_failure_share:
        against.append(
            f"failure share {challenger.failure_share:.0%} is above the maximum {rule.max_failure_share:.0%}"
        )
    if champion is None and challenger.failure_share == 1:
        against.append("it gave no answer to any of the questions")
    if champion is not None and difference is not None and difference.mean < -rule.tolerance:
        against.append(
            f"ROUGE-L F {challenger.rouge_l.mean:.3f} is {-difference.mean:.3f} below the champion's "
            f"{champion.rouge_l.mean:.3f} (tolerance {rule.tolerance:.3f})"
        )
    if champion is None and rule.max_eval_loss is not None and (eval_loss is None or eval_loss > rule.max_eval_loss):
        shown = "not reported" if eval_loss is None else f"{eval_loss:.4g}"
        against.append(f"eval_loss {shown} is above the maximum {rule.max_eval_loss:.4g}")
    if against:
        why = "; ".join(against)
    elif champion is None:
        why = "first model on the endpoint: it answers" + (
            f" and eval_loss {eval_loss:.4g} is within {rule.max_eval_loss:.4g}" if rule.max_eval_loss else ""
        )
    else:
        why = (
            f"ROUGE-L F {challenger.rouge_l.mean:.3f} against the champion's {champion.rouge_l.mean:.3f} "
            f"(difference {difference.mean:+.3f}, within the tolerance {rule.tolerance:.3f})"
        )
    return Verdict(not against, why, asdict(rule), challenger, champion, difference, eval_loss, list(notes))


def gate_off(rule: GateRule) -> Verdict:
    return Verdict(True, "the gate is off (FTPILOT_GATE_ENABLED or ftpilot_gate_enabled)", asdict(rule))


def ask_all(samples: Sequence[Sample], ask: Callable[[Sample], str], workers: int = 4) -> list[Answer]:
    """Every sample asked (``workers`` at a time), each answer timed; an error is recorded, not raised."""
    from concurrent.futures import ThreadPoolExecutor

    def one(sample: Sample) -> Answer:
        started = time.monotonic()
        try:
            text = ask(sample)
        except Exception as error:  # the port's errors: a timeout, a 5xx, a refused request
            why = f"{type(error).__name__}: {error}"[:500]
            return Answer("", time.monotonic() - started, why, isinstance(error, TransientError))
        return Answer(text, time.monotonic() - started)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, samples))


def report(
    verdict: Verdict,
    samples: Sequence[Sample],
    answers: Mapping[str, Sequence[Answer]],
    values: Mapping[str, Sequence[float]],
    context: Mapping[str, str],
) -> tuple[dict[str, Any], str]:
    """The evidence: JSON for machines and Markdown for people."""
    document: dict[str, Any] = {
        **context,
        "decision": verdict.decision,
        "why": verdict.why,
        "rule": verdict.rule,
        "metric": "ROUGE-L F (rouge-score), 95% bootstrap interval",
        "eval_loss": verdict.eval_loss,
        "notes": verdict.notes,
        "challenger": asdict(verdict.challenger) if verdict.challenger else None,
        "champion": asdict(verdict.champion) if verdict.champion else None,
        "difference": asdict(verdict.difference) if verdict.difference else None,
        "samples": [
            {
                "key": sample.key[:16],
                "prompt": _cut(sample.prompt[-1]["content"]),
                "reference": _cut(sample.reference),
                **{
                    role: {
                        "answer": _cut(answers[role][i].text),
                        "rouge_l": round(values[role][i], 4),
                        "latency_s": round(answers[role][i].latency_s, 3),
                        "error": answers[role][i].error,
                    }
                    for role in answers
                },
            }
            for i, sample in enumerate(samples)
        ],
    }
    return document, _markdown(document)


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _markdown(document: Mapping[str, Any]) -> str:
    lines = [
        f"# Promotion gate: {document['decision'].replace('_', ' ')}",
        "",
        f"Run `{document.get('run_id', '')}` on endpoint `{document.get('endpoint', '')}`: {document['why']}.",
        "",
        "Rule: " + ", ".join(f"{k} = {v}" for k, v in document["rule"].items()) + ".",
    ]
    lines += [f"Note: {note}." for note in document["notes"]]
    rows = [(role, document[role]) for role in ("challenger", "champion") if document.get(role)]
    if rows:
        lines += [
            "",
            f"| model | deployment | {document['metric']} | failure share | median latency |",
            "|---|---|---|---:|---:|",
        ]
        for role, agg in rows:
            score = agg["rouge_l"]
            lines.append(
                f"| {role} | `{agg['deployment']}` | {score['mean']:.3f} [{score['low']:.3f}, {score['high']:.3f}] "
                f"| {agg['failure_share']:.0%} | {agg['latency_p50_s'] * 1000:.0f} ms |"
            )
    if document.get("difference"):
        diff = document["difference"]
        lines += ["", f"Paired difference: {diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]."]
    if document["samples"] and rows:
        lines += ["", "## Samples", ""]
        for sample in document["samples"]:
            lines += [f"**Prompt** {sample['prompt']}", "", f"*Reference:* {sample['reference']}", ""]
            for role, _ in rows:
                got = sample[role]
                shown = got["answer"] or f"(failed: {got['error'] or 'empty'})"
                lines += [f"*{role}* (ROUGE-L {got['rouge_l']:.3f}): {shown}", ""]
    return "\n".join(lines).rstrip() + "\n"
