"""Serving: a local endpoint against ``mlflow models serve`` of the same registered model.

    python -m bench.serving [--requests 40] [--clients 8] [--max-tokens 64] [--no-docs]

One registered model (the local stand-in: the family's small config with random weights and a
tokenizer trained on sample data, logged with MLflow's chat task, as the trainer logs it) is
served twice in this run: by a local endpoint (its router and one deployment, as ``up`` runs
them, called through the router with the key) and by ``mlflow models serve --env-manager local``
(MLflow's own scoring server, one worker: its default). Both get the same conversations and
``max_tokens``. The model's end token is moved past its vocabulary before it is logged, so every
answer is exactly ``max_tokens`` long on both servers and they do the same work per request.

Figures: p50/p95 latency of ``--requests`` sequential requests; throughput (requests per second)
with ``--clients`` concurrent clients sending ``--requests`` in all; time to the first token when
streaming (the local endpoint streams; ``/invocations`` has no streaming, so there the first token
comes with the whole answer).

Targets: sequential p50 no worse than MLflow's, and at least 1.5x MLflow's throughput at 8
concurrent clients. Exits 1 when either is missed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench import Latency, arguments, header, machine, publish

THROUGHPUT_TARGET = 1.5
MODEL = "bench-chat"
ENDPOINT = "bench-serving"
START_TIMEOUT_S = 180.0
SERVING_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers")


def _conversations(count: int) -> list[list[dict[str, str]]]:
    """Conversations from the sample data, cut after their first user turn."""
    from shared.sample_data import conversations

    return [[row["messages"][0]] for row in conversations(count, seed=1)]


def _register(settings: Any) -> str:
    """Log the stand-in model with MLflow's chat task and register it; its ``models:/`` id."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.platform.local import base_model, tracking
    from shared.platform.local.layout import Layout
    from shared.platform.local.trainer import CHAT_TASK

    layout = Layout(settings.data_dir)
    texts = [m["content"] for c in _conversations(200) for m in c]
    folder = base_model.resolve(settings.base_model, None, texts, layout.base_models).path
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.generation_config.eos_token_id = [model.config.vocab_size + 1]  # never generated: fixed-length answers
    client = tracking.client(layout)
    experiment = tracking.experiment_id(client, layout, "bench-serving")
    mlflow.set_tracking_uri(tracking.tracking_uri(layout))
    with mlflow.start_run(experiment_id=experiment):
        mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name="trained_model",
            task=CHAT_TASK,
            pip_requirements=[f"{name}=={version(name).split('+')[0]}" for name in SERVING_PACKAGES],
            registered_model_name=MODEL,
        )
    return f"models:/{MODEL}/1"


def _wait(ready: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


class Target:
    """One server: how to send a conversation and read the completion tokens back."""

    def __init__(self, name: str, url: str, headers: dict[str, str], max_tokens: int) -> None:
        self.name = name
        self.url = url
        self.headers = headers
        self.max_tokens = max_tokens
        self.http = httpx.Client(timeout=120)

    def ask(self, messages: list[dict[str, str]]) -> int:
        answer = self.http.post(
            self.url, json={"messages": messages, "max_tokens": self.max_tokens}, headers=self.headers
        )
        answer.raise_for_status()
        body = answer.json()
        completion = body[0] if isinstance(body, list) else body  # MLflow answers a list of completions
        return completion["usage"]["completion_tokens"]


def _sequential(target: Target, prompts: list[list[dict[str, str]]]) -> Latency:
    samples = []
    for messages in prompts:
        started = time.perf_counter()
        tokens = target.ask(messages)
        samples.append(time.perf_counter() - started)
        assert tokens == target.max_tokens, f"{target.name} answered {tokens} tokens, not {target.max_tokens}"
    return Latency.of(samples)


def _concurrent(target: Target, prompts: list[list[dict[str, str]]], clients: int) -> float:
    """Requests per second with ``clients`` threads sharing ``prompts``."""
    todo = list(prompts)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        mine = Target(target.name, target.url, target.headers, target.max_tokens)
        while True:
            with lock:
                if not todo:
                    return
                messages = todo.pop()
            try:
                mine.ask(messages)
            except BaseException as error:
                errors.append(error)
                return

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return len(prompts) / wall


def _first_token(url: str, headers: dict[str, str], prompts: list[list[dict[str, str]]], max_tokens: int) -> Latency:
    samples = []
    with httpx.Client(timeout=120) as http:
        for messages in prompts:
            started = time.perf_counter()
            body = {"messages": messages, "max_tokens": max_tokens, "stream": True}
            with http.stream("POST", url, json=body, headers=headers) as response:
                response.raise_for_status()
                first = None
                for line in response.iter_lines():
                    if first is None and '"content": "' in line and '"content": ""' not in line:
                        first = time.perf_counter() - started
                assert first is not None, "no content was streamed"
                samples.append(first)
    return Latency.of(samples)


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__)
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement (default %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(about := machine())

    from shared.config import Settings
    from shared.platform.local import LocalPlatform, tracking
    from shared.platform.local.processes import child_env
    from shared.platform.port import DeploymentRequest, EndpointRequest, ProvisioningState

    prompts = _conversations(args.requests)
    with tempfile.TemporaryDirectory(prefix="ftpilot-bench-serving-") as folder:
        settings = Settings(storage="UseDevelopmentStorage=true", data_dir=Path(folder) / "ftpilot")
        model_id = _register(settings)
        platform = LocalPlatform(settings)
        port = _free_port()
        env = {**child_env(platform.settings), "MLFLOW_TRACKING_URI": tracking.tracking_uri(platform.layout)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # MLflow runs the venv's uvicorn
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_id, "--env-manager", "local"]
        mlflow_log = (Path(folder) / "mlflow-serve.log").open("wb")
        mlflow_server = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=mlflow_log, stderr=subprocess.STDOUT
        )
        try:
            platform.begin_create_endpoint(EndpointRequest(ENDPOINT, "serving benchmark", {}))
            platform.begin_create_deployment(DeploymentRequest(ENDPOINT, "blue", model_id, "local"))
            _wait(lambda: _state(platform, ENDPOINT) is ProvisioningState.SUCCEEDED, "the local endpoint")
            platform.begin_set_traffic(ENDPOINT, {"blue": 100})
            _wait(lambda: _pings(f"http://127.0.0.1:{port}/ping"), "mlflow models serve", mlflow_server)
            base = platform.get_endpoint(ENDPOINT).scoring_uri.removesuffix("/score")
            key = {"Authorization": f"Bearer {platform.get_endpoint_key(ENDPOINT)}"}
            ours = Target("local endpoint", f"{base}/v1/chat/completions", key, args.max_tokens)
            theirs = Target("mlflow models serve", f"http://127.0.0.1:{port}/invocations", {}, args.max_tokens)
            for target in (ours, theirs):  # warm-up: first requests load lazily
                _sequential(target, prompts[:3])
            results = {}
            for target in (ours, theirs):
                sequential = _sequential(target, prompts)
                throughput = _concurrent(target, prompts, args.clients)
                results[target.name] = (sequential, throughput)
                print(
                    f"{target.name}: sequential p50 {sequential.p50 * 1000:.0f} ms, p95 {sequential.p95 * 1000:.0f} ms;"
                    f" {args.clients} clients {throughput:.2f} requests/s"
                )
            streamed = _first_token(f"{base}/v1/chat/completions", key, prompts[:20], args.max_tokens)
            print(f"local endpoint: time to first token p50 {streamed.p50 * 1000:.0f} ms")
        finally:
            mlflow_server.terminate()
            mlflow_server.wait(30)
            mlflow_log.close()
            platform.begin_delete_endpoint(ENDPOINT)

    (our_seq, our_tput), (their_seq, their_tput) = results["local endpoint"], results["mlflow models serve"]
    ratio = our_tput / their_tput
    missed = []
    if our_seq.p50 > their_seq.p50:
        missed.append(f"sequential p50 {our_seq.p50 * 1000:.0f} ms, MLflow's {their_seq.p50 * 1000:.0f} ms")
    if ratio < THROUGHPUT_TARGET:
        missed.append(f"throughput at {args.clients} clients {ratio:.2f}x MLflow's, target {THROUGHPUT_TARGET}x")
    command_line = (
        f"python -m bench.serving --requests {args.requests} --clients {args.clients} --max-tokens {args.max_tokens}"
    )
    body = [
        header(command_line, about),
        "",
        f"The same registered model ({args.max_tokens}-token answers, every one full length) served both ways "
        "in one run; the local endpoint is called through its router with the key.",
        "",
        "| server | sequential p50 | sequential p95 | "
        f"throughput, {args.clients} clients | time to first token (p50, streaming) |",
        "|---|---:|---:|---:|---:|",
        f"| local endpoint (`/v1/chat/completions`) | {our_seq.p50 * 1000:.0f} ms | {our_seq.p95 * 1000:.0f} ms "
        f"| {our_tput:.2f} req/s | {streamed.p50 * 1000:.0f} ms |",
        f"| `mlflow models serve` (`/invocations`) | {their_seq.p50 * 1000:.0f} ms | {their_seq.p95 * 1000:.0f} ms "
        f"| {their_tput:.2f} req/s | {their_seq.p50 * 1000:.0f} ms (no streaming: the whole answer) |",
        "",
        f"Throughput ratio at {args.clients} clients: **{ratio:.2f}x** (target {THROUGHPUT_TARGET}x); "
        f"sequential p50 ratio {our_seq.p50 / their_seq.p50:.2f} (target at most 1).",
    ]
    met = f"{ratio:.2f}x MLflow's throughput at {args.clients} clients, sequential p50 no worse than MLflow's."
    return publish(
        "serving", "Serving: local endpoint against mlflow models serve", body, missed, met, docs=not args.no_docs
    )


def _state(platform: Any, endpoint: str) -> Any:
    deployment = platform.get_deployment(endpoint, "blue")
    info = platform.get_endpoint(endpoint)
    if deployment is None or info is None:
        return None
    if deployment.state.terminal and info.state.terminal:
        if "failed" in (deployment.state.value.lower(), info.state.value.lower()):
            raise RuntimeError(f"the local endpoint failed: {deployment.error}")
        return deployment.state if info.state is deployment.state else info.state
    return None


def _pings(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    from shared.platform.local.loopback import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
