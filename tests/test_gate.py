"""The promotion gate: its rule, its sample, and whole rollouts through it over Azurite and the fake platform."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from shared import gate
from shared.blobnames import promotion_report_names
from shared.cleanup import sweep
from shared.config import Settings
from shared.gate import Aggregate, Answer, GateConfigError, GateRule, Interval, decide
from shared.intake import dataset_parameters, handle_upload
from shared.naming import VERDICT_TAG
from shared.platform.port import JobStatus, TransientError
from shared.runs import RunRecord, RunState, use_clock
from shared.services import Services
from tests.data import dataset, example, jsonl
from tests.test_rollout import complete, pump, submit

RULE = GateRule(enabled=True, samples=20, tolerance=0.02, max_failure_share=0.1, max_eval_loss=None, max_new_tokens=64)


def aggregate(mean: float, failure_share: float = 0.0, name: str = "d") -> Aggregate:
    return Aggregate(name, Interval(mean, mean - 0.1, mean + 0.1), failure_share, 0.05)


# --- The rule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("difference", "promote"), [(0.0, True), (-0.02, True), (-0.0201, False), (0.3, True), (-0.5, False)]
)
def test_the_tolerance_is_the_edge(difference: float, promote: bool) -> None:
    verdict = decide(
        RULE,
        aggregate(0.5 + difference),
        champion=aggregate(0.5),
        difference=Interval(difference, difference - 0.1, difference + 0.1),
        eval_loss=None,
    )
    assert verdict.promote is promote
    assert ("below the champion's" in verdict.why) is not promote


@pytest.mark.parametrize(("share", "promote"), [(0.0, True), (0.1, True), (0.15, False), (1.0, False)])
def test_a_challengers_failure_share_is_bounded(share: float, promote: bool) -> None:
    verdict = decide(
        RULE, aggregate(0.6, share), champion=aggregate(0.5), difference=Interval(0.1, 0, 0.2), eval_loss=None
    )
    assert verdict.promote is promote
    assert ("failure share" in verdict.why) is not promote


@pytest.mark.parametrize(("share", "promote"), [(0.0, True), (0.5, True), (0.95, True), (1.0, False)])
def test_a_first_model_passes_when_it_answers(share: float, promote: bool) -> None:
    verdict = decide(RULE, aggregate(0.2, share), champion=None, difference=None, eval_loss=None)
    assert verdict.promote is promote
    assert ("no answer to any" in verdict.why) is not promote


def test_a_first_model_meets_the_absolute_threshold_if_one_is_set() -> None:
    strict = GateRule(**{**RULE.__dict__, "max_eval_loss": 2.0})
    assert decide(strict, aggregate(0.0), champion=None, difference=None, eval_loss=1.9).promote
    above = decide(strict, aggregate(0.9), champion=None, difference=None, eval_loss=2.1)
    assert not above.promote and "eval_loss 2.1 is above the maximum 2" in above.why
    unknown = decide(strict, aggregate(0.9), champion=None, difference=None, eval_loss=None)
    assert not unknown.promote and "not reported" in unknown.why
    assert decide(RULE, aggregate(0.0), champion=None, difference=None, eval_loss=None).promote  # no threshold set


def test_overrides_are_checked_like_the_settings() -> None:
    settings = Settings(storage="UseDevelopmentStorage=true")
    rule = GateRule.of(settings, {"tolerance": "0.1", "enabled": "false", "samples": "5"})
    assert (rule.tolerance, rule.enabled, rule.samples) == (0.1, False, 5)
    assert GateRule.of(settings, {}) == GateRule.of(settings, {"max_eval_loss": ""})
    for bad, says in (
        ({"tolerance": "lots"}, "ftpilot_gate_tolerance: Input should be a valid number"),
        ({"samples": "0"}, "ftpilot_gate_samples: Input should be greater than or equal to 1"),
        ({"patience": "3"}, "ftpilot_gate_patience: not a gate setting"),
    ):
        with pytest.raises(GateConfigError, match=says):
            GateRule.of(settings, bad)
    metadata = {"ftpilot_gate_tolerance": "0.1", "ftpilot_learning_rate": "0.001", "other": "x"}
    assert gate.overrides(metadata) == {"tolerance": "0.1"}
    assert dataset_parameters(metadata) == {"learning_rate": "0.001"}  # not a pipeline input


def test_the_bootstrap_interval_holds_the_mean_and_is_seeded() -> None:
    values = [random.Random(i).random() for i in range(20)]
    interval = gate.bootstrap(values, "run-1")
    assert interval.low <= interval.mean <= interval.high
    assert interval == gate.bootstrap(values, "run-1") != gate.bootstrap(values, "run-2")
    assert gate.bootstrap([0.5] * 20, "x") == Interval(0.5, 0.5, 0.5)


def test_scores_are_rouge_l_and_failures_score_zero() -> None:
    samples = [gate.Sample([], "the tide comes in twice a day", "k")] * 4
    answers = [
        Answer("the tide comes in twice a day", 0.1),
        Answer("twice a day the tide", 0.1),
        Answer("", 0.1),
        Answer("the tide comes in twice a day", 0.1, error="TransientError: timed out"),
    ]
    values = gate.scores(answers, samples)
    assert values[0] == 1.0 and 0 < values[1] < 1 and values[2:] == [0.0, 0.0]
    assert gate.scores([Answer("潮汐 每天", 0.1)], [gate.Sample([], "潮汐 每天 两次", "k")])[0] > 0  # not only ASCII


# --- The sample --------------------------------------------------------------------------------


def test_the_sample_is_deterministic_and_cut_after_the_last_answered_user_turn() -> None:
    rows = [example(i, turns=3) for i in range(50)]
    rows.append({"messages": [{"role": "user", "content": "never answered"}]})
    lines = jsonl(rows).splitlines()
    picked = gate.pick(lines, 7)
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    assert [s.key for s in gate.pick(shuffled, 7)] == [s.key for s in picked]  # the order of the file does not matter
    assert len(picked) == 7 and [s.key for s in picked] == sorted(s.key for s in picked)
    for sample in picked:
        assert sample.prompt[-1]["role"] == "user" and len(sample.prompt) == 5
        assert sample.reference.startswith("Here is fact 2 about")
        assert sample.key == hashlib.sha256(orjson.dumps(sample.prompt)).hexdigest()
    assert len(gate.pick(lines, 500)) == 50  # fewer answered conversations than asked for: all of them


# --- Whole rollouts ----------------------------------------------------------------------------


def references(services: Services, record: RunRecord) -> dict[str, str]:
    lines = services.storage.blob(record.test_path).download_blob().readall().splitlines()
    return {s.key: s.reference for s in gate.pick(lines, 500)}


def key_of(conversation: list[dict[str, str]]) -> str:
    return hashlib.sha256(orjson.dumps(conversation)).hexdigest()


def live_then_challenger(services: Services, fake, good: set[str]) -> tuple[RunRecord, RunRecord]:
    """A champion live on the endpoint, then a re-upload whose job completed: both before the gate.

    Deployments named in ``good`` answer with the reference; the others with the wrong words.
    """
    answers: dict[str, str] = {}

    def answer(deployment: str, conversation: list[dict[str, str]]) -> dict[str, str]:
        right = answers.get(key_of(conversation), "fine")
        return {"output": right if deployment in good else "Completely unrelated words."}

    fake.answer = answer
    first = submit(services)
    answers.update(references(services, first))
    fake.set_job(first.job_name, JobStatus.COMPLETED)
    complete(services, fake, first)
    pump(services)
    champion = services.runs.get(first.run_id)
    assert champion.state is RunState.LIVE and champion.promotion["decision"] == "promoted"
    good.add(champion.deployment)
    second = submit(services, start=100)
    answers.update(references(services, second))
    return champion, second


def finish(services: Services, fake, record: RunRecord) -> RunRecord:
    fake.set_job(record.job_name, JobStatus.COMPLETED)
    complete(services, fake, record)
    pump(services)
    return services.runs.get(record.run_id)


def test_a_worse_challenger_is_not_promoted_and_the_champion_keeps_serving(services: Services, fake_platform) -> None:
    champion, second = live_then_challenger(services, fake_platform, good=set())
    final = finish(services, fake_platform, second)
    assert final.state is RunState.NOT_PROMOTED, (final.state, final.reason)
    assert final.reason.startswith("not promoted: ROUGE-L F 0.000 is")
    endpoint = fake_platform.endpoints[champion.endpoint]
    assert endpoint.info.traffic == {champion.deployment: 100}  # untouched
    assert list(endpoint.deployments) == [champion.deployment]  # the challenger's deployment is gone
    assert services.runs.get(champion.run_id).state is RunState.LIVE
    tagged = fake_platform.models[(final.model_name, final.model_version)].tags[VERDICT_TAG]
    assert tagged.startswith("not_promoted: ROUGE-L F")  # still registered, with the verdict
    assert final.promotion["champion"] == champion.deployment and final.promotion["difference"] < -0.5

    json_name, md_name = promotion_report_names(final.report)
    report = orjson.loads(services.storage.blob(json_name).download_blob().readall())
    assert report["decision"] == "not_promoted" and report["champion"]["deployment"] == champion.deployment
    assert len(report["samples"]) == final.promotion["samples"] > 0
    first = report["samples"][0]
    assert first["champion"]["rouge_l"] == 1.0 and first["challenger"]["answer"] == "Completely unrelated words."
    markdown = services.storage.blob(md_name).download_blob().readall().decode()
    assert markdown.startswith("# Promotion gate: not promoted") and "| challenger |" in markdown


def test_a_challenger_as_good_as_the_champion_is_promoted(services: Services, fake_platform) -> None:
    good: set[str] = set()
    champion, second = live_then_challenger(services, fake_platform, good)
    good.add(f"d-{second.run_id[:12]}")  # the challenger's deployment answers as well
    final = finish(services, fake_platform, second)
    assert final.state is RunState.LIVE, (final.state, final.reason)
    assert final.promotion["decision"] == "promoted" and final.promotion["difference"] == 0
    assert services.runs.get(champion.run_id).state is RunState.RETIRED


def test_a_challenger_that_times_out_is_not_promoted(services: Services, fake_platform) -> None:
    champion, second = live_then_challenger(services, fake_platform, good=set())
    answer = fake_platform.answer
    challenger = f"d-{second.run_id[:12]}"
    smoke_done: list[bool] = []

    def slow(deployment: str, conversation: list[dict[str, str]]):
        if deployment == challenger and smoke_done:
            return TransientError("scoring timed out after 90 s")
        if deployment == challenger:
            smoke_done.append(True)  # the smoke test gets its answer; the gate's questions time out
        return answer(deployment, conversation)

    fake_platform.answer = slow
    final = finish(services, fake_platform, second)
    assert final.state is RunState.NOT_PROMOTED
    assert "failure share 100% is above the maximum 10%" in final.reason
    assert fake_platform.endpoints[champion.endpoint].info.traffic == {champion.deployment: 100}


def test_a_champion_that_disappears_mid_gate_leaves_a_first_model_verdict(services: Services, fake_platform) -> None:
    good: set[str] = set()
    champion, second = live_then_challenger(services, fake_platform, good)
    answer = fake_platform.answer

    def vanishing(deployment: str, conversation: list[dict[str, str]]):
        if deployment == champion.deployment:
            fake_platform.endpoints[champion.endpoint].deployments.pop(champion.deployment, None)
            return TransientError(f"deployment {deployment} is not answering")
        return answer(deployment, conversation)

    fake_platform.answer = vanishing
    final = finish(services, fake_platform, second)
    assert final.state is RunState.LIVE, (final.state, final.reason)  # it answers; nothing to compare it with
    report = orjson.loads(services.storage.blob(final.promotion["report"]).download_blob().readall())
    assert report["champion"] is None
    assert report["notes"] == [
        f"the champion {champion.deployment} disappeared during the gate: judged as the first model"
    ]


def test_the_gate_off_for_one_dataset_promotes_and_says_so(services: Services, fake_platform) -> None:
    fake_platform.answer = {"output": "Completely unrelated words."}
    client = services.storage.blob("incoming/chat.jsonl")
    client.upload_blob(dataset(20), overwrite=True, metadata={"ftpilot_gate_enabled": "false"})
    record = services.runs.get(handle_upload(client, services).run_id)
    assert record.gate == {"enabled": "false"}
    final = finish(services, fake_platform, record)
    assert final.state is RunState.LIVE
    assert final.promotion["decision"] == "promoted" and "the gate is off" in final.promotion["why"]
    assert final.probe_requests == 1  # the smoke test only
    report = orjson.loads(services.storage.blob(final.promotion["report"]).download_blob().readall())
    assert report["rule"]["enabled"] is False and report["samples"] == []


def test_a_bad_override_fails_the_submit_naming_it(services: Services, fake_platform) -> None:
    client = services.storage.blob("incoming/chat.jsonl")
    client.upload_blob(dataset(20), overwrite=True, metadata={"ftpilot_gate_tolerance": "lots"})
    outcome = handle_upload(client, services)
    assert outcome.action == "submit_failed"
    assert "blob metadata ftpilot_gate_tolerance" in outcome.reason
    assert fake_platform.jobs == {}  # refused before any GPU time


def test_the_idle_sweep_neither_deletes_during_the_gate_nor_counts_its_calls(services: Services, fake_platform) -> None:
    settings = services.settings.model_copy(update={"cleanup_grace_s": 0})
    swept = Services(settings, services.storage, fake_platform)
    champion, challenger = live_then_challenger(services, fake_platform, good=set())
    (decision,) = sweep(swept)
    assert decision.action == "kept" and "live for less than the" in decision.reason  # not a whole window yet

    # A day on, nobody has called the champion; a challenger's rollout asks both models its questions.
    use_clock(lambda: datetime.now(UTC) + timedelta(seconds=settings.idle_window_s + 1))
    try:
        decisions: list[str] = []
        answer = fake_platform.answer

        def sweeping(deployment: str, conversation: list[dict[str, str]]):
            decisions.extend(d.action for d in sweep(swept))  # the sweep runs while the gate asks
            return answer(deployment, conversation)

        fake_platform.answer = sweeping
        final = finish(services, fake_platform, challenger)
        assert final.state is RunState.NOT_PROMOTED
        assert decisions and set(decisions) == {"kept"}  # never deleted under a rollout
        fake_platform.answer = answer
        endpoint = champion.endpoint
        served = fake_platform.endpoint_requests(endpoint, settings.idle_window_s).within(settings.idle_window_s)
        assert served == final.probe_requests > 1  # every request in the window was the challenger's own
        (decision,) = sweep(swept)
    finally:
        use_clock(None)
    assert decision.action == "deleted", decision
    assert f"but ftpilot's own {final.probe_requests}" in decision.reason
    assert services.runs.get(champion.run_id).state is RunState.RETIRED


def test_a_passing_outage_during_the_gate_is_asked_again_not_judged(services: Services, fake_platform) -> None:
    good: set[str] = set()
    _, second = live_then_challenger(services, fake_platform, good)
    challenger = f"d-{second.run_id[:12]}"
    good.add(challenger)
    answer = fake_platform.answer
    outage = {"smoke": 1, "left": 12}  # after the smoke test, the first gate's calls (each retried) fail

    def flaky(deployment: str, conversation: list[dict[str, str]]):
        if deployment == challenger and outage["smoke"]:
            outage["smoke"] -= 1
        elif deployment == challenger and outage["left"]:
            outage["left"] -= 1
            return TransientError("HTTP 503 from the scoring endpoint")
        return answer(deployment, conversation)

    fake_platform.answer = flaky
    final = finish(services, fake_platform, second)
    assert final.state is RunState.LIVE, (final.state, final.reason)
    assert final.promotion["challenger_failure_share"] == 0  # judged on a try without the outage
    assert final.history[-1]["state"] == "live"
