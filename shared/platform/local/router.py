"""An endpoint's front door, in its own process: ``python -m shared.platform.local.router <endpoint> <port>``.

What a managed online endpoint does in front of its deployments: it refuses a request without the
endpoint's key (401) or over the body limit (413), sends it to the deployment named in the
``azureml-model-deployment`` header or else to one picked by the traffic weights, with that
deployment's secret, records it in the per-minute request counts, and passes the deployment's
answer back (streamed through when it streams) with that header set to who answered. Any path is
forwarded as is (``/score``, ``/v1/...``). ``/health`` is the router's own, without a key: it
asks each deployment's health and answers 503 when one that takes traffic is not healthy.

Traffic and deployments are read from the state database on every request, so ``begin_set_traffic``
and deployment changes take effect on the next request without restarting anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from shared.config import Settings
from shared.platform.local import api_errors, keys, usage
from shared.platform.local.api_errors import ApiError
from shared.platform.local.asgi import BodyLimit, disconnected
from shared.platform.local.endpoints import DEADLINE_GRACE_S, DEPLOYMENT_HEADER, SECRET_HEADER
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HEALTH_TIMEOUT_S, HOST
from shared.platform.local.store import Store
from shared.platform.port import NotFoundError

log = logging.getLogger("ftpilot.router")

# What a deployment's answer keeps on its way back; hop-by-hop and framing headers are the router's own.
PASSED_HEADERS = frozenset({"content-type", "cache-control", "retry-after", "www-authenticate"})
NO_ROUTE = (
    "No valid deployments to route to. Please check that the endpoint has at least one deployment with "
    "positive weight values or use a deployment specific header to route."
)


class WeightedRoundRobin:
    """Smooth weighted round-robin (nginx's): over any ``sum(weights)`` picks, each name gets its weight."""

    def __init__(self) -> None:
        self._weights: dict[str, int] = {}
        self._current: dict[str, int] = {}

    def pick(self, weights: Mapping[str, int]) -> str | None:
        live = {name: weight for name, weight in sorted(weights.items()) if weight > 0}
        if live != self._weights:  # the split changed: start over
            self._weights, self._current = live, dict.fromkeys(live, 0)
        if not live:
            return None
        for name, weight in live.items():
            self._current[name] += weight
        chosen = max(live, key=lambda name: self._current[name])
        self._current[chosen] -= sum(live.values())
        return chosen


def create_app(settings: Settings, endpoint: str) -> Any:
    layout = Layout(settings.data_dir)
    store = Store(layout.state_db)
    key = keys.read_key(layout.keys, endpoint)
    balancer = WeightedRoundRobin()
    clients: dict[str, httpx.AsyncClient] = {}
    forward_timeout_s = settings.endpoint_request_timeout_s + DEADLINE_GRACE_S + 5

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=forward_timeout_s) as client:
            clients["http"] = client
            yield

    app = FastAPI(title=f"ftpilot local endpoint {endpoint}", lifespan=lifespan)
    api_errors.install(app)

    def targets() -> tuple[dict[str, int], dict[str, int]] | None:
        """(traffic weights, deployment ports), or None once the endpoint is deleted."""
        with store.read() as db:
            row = db.execute("SELECT traffic FROM endpoints WHERE name = ?", (endpoint,)).fetchone()
            ports = {
                r["name"]: r["port"]
                for r in db.execute("SELECT name, port FROM deployments WHERE endpoint = ?", (endpoint,))
            }
        return None if row is None else (json.loads(row["traffic"]), ports)

    def count() -> None:
        with store.write() as db:
            usage.count_request(db, endpoint)

    def secret_of(deployment: str) -> str:
        return keys.read_deployment_secret(layout.keys, endpoint, deployment)

    async def deployment_health(name: str, port: int) -> str:
        try:
            answer = await clients["http"].get(
                f"http://{HOST}:{port}/health", headers={SECRET_HEADER: secret_of(name)}, timeout=HEALTH_TIMEOUT_S
            )
        except (httpx.HTTPError, NotFoundError):
            return "unreachable"
        return "ok" if answer.status_code == 200 else "unhealthy"

    @app.get("/health")
    async def health() -> JSONResponse:
        """The router's own health and each deployment's: 503 when one that takes traffic is not healthy."""
        found = await asyncio.to_thread(targets)
        if found is None:
            return JSONResponse({"status": "deleted", "endpoint": endpoint}, status_code=503)
        traffic, ports = found
        names = sorted(ports)
        states = await asyncio.gather(*(deployment_health(name, ports[name]) for name in names))
        deployments = {
            name: {"status": state, "traffic": traffic.get(name, 0)} for name, state in zip(names, states, strict=True)
        }
        degraded = any(d["traffic"] and d["status"] != "ok" for d in deployments.values())
        body = {"status": "degraded" if degraded else "ok", "endpoint": endpoint, "deployments": deployments}
        return JSONResponse(body, status_code=503 if degraded else 200)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def route(path: str, request: Request) -> Response:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(presented.encode(), key.encode()):
            raise ApiError(
                401,
                "Missing or invalid endpoint key: send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = await asyncio.to_thread(targets)
        if found is None:
            raise ApiError(404, f"endpoint {endpoint} does not exist")
        traffic, ports = found
        pinned = request.headers.get(DEPLOYMENT_HEADER)
        if pinned is not None and pinned not in ports:
            raise ApiError(404, f"deployment {pinned} does not exist on endpoint {endpoint}")
        target = pinned or balancer.pick({name: weight for name, weight in traffic.items() if name in ports})
        if target is None:
            raise ApiError(404, NO_ROUTE)
        await asyncio.to_thread(count)
        upstream = clients["http"].build_request(
            request.method,
            f"http://{HOST}:{ports[target]}/{path}",
            content=await request.body(),
            headers={
                "content-type": request.headers.get("content-type", "application/json"),
                SECRET_HEADER: await asyncio.to_thread(secret_of, target),
            },
        )
        return await _forward(clients["http"], upstream, request, target)

    return BodyLimit(app, settings.endpoint_max_request_bytes)


async def _forward(client: httpx.AsyncClient, upstream: httpx.Request, request: Request, target: str) -> Response:
    """The deployment's answer, streamed through when it streams; a client that leaves closes the upstream too.

    Closing the connection to the deployment is how it learns that the client went away, and
    it then stops generating for it.
    """
    answered = {DEPLOYMENT_HEADER: target}

    async def send() -> httpx.Response:
        response = await client.send(upstream, stream=True)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    sending = asyncio.ensure_future(send())
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({sending, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not sending.done():
        sending.cancel()
        with suppress(asyncio.CancelledError, httpx.HTTPError):
            await sending
        return Response(status_code=499)
    try:
        response = sending.result()
    except httpx.TimeoutException:
        raise ApiError(504, f"deployment {target} did not answer in time", headers=answered) from None
    except httpx.TransportError as error:
        raise ApiError(502, f"deployment {target} is not answering ({error})", headers=answered) from None
    passed = {k: v for k, v in response.headers.items() if k.lower() in PASSED_HEADERS}
    if response.is_stream_consumed:
        return Response(response.content, status_code=response.status_code, headers={**passed, **answered})

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    return StreamingResponse(relay(), status_code=response.status_code, headers={**passed, **answered})


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint, port = argv[0], int(argv[1])
    app = create_app(Settings(), endpoint)
    log.info("endpoint %s routing on http://%s:%d", endpoint, HOST, port)
    uvicorn.run(app, host=HOST, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
