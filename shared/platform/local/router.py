"""An endpoint's front door, in its own process: ``python -m shared.platform.local.router <endpoint> <port>``.

What a managed online endpoint does in front of its deployments: it refuses a request without the
endpoint's key (401), sends it to the deployment named in the ``azureml-model-deployment`` header
or else to one picked by the traffic weights, records it in the per-minute request counts, and
passes the deployment's answer back with that header set to who answered. Any path is forwarded
as is (``/score``, ``/v1/chat/completions``); ``/health`` is the router's own, without a key.

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
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from shared.config import Settings
from shared.platform.local import keys, usage
from shared.platform.local.endpoints import DEPLOYMENT_HEADER
from shared.platform.local.layout import Layout
from shared.platform.local.loopback import HOST
from shared.platform.local.store import Store

log = logging.getLogger("ftpilot.router")

FORWARD_TIMEOUT_S = 600.0
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


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def create_app(settings: Settings, endpoint: str) -> FastAPI:
    layout = Layout(settings.data_dir)
    store = Store(layout.state_db)
    key = keys.read_key(layout.keys, endpoint)
    balancer = WeightedRoundRobin()
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S) as client:
            clients["http"] = client
            yield

    app = FastAPI(title=f"ftpilot local endpoint {endpoint}", lifespan=lifespan)

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

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def route(path: str, request: Request) -> Response:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(presented.encode(), key.encode()):
            return _error(401, "missing or invalid endpoint key", **{"WWW-Authenticate": "Bearer"})
        found = await asyncio.to_thread(targets)
        if found is None:
            return _error(404, f"endpoint {endpoint} does not exist")
        traffic, ports = found
        pinned = request.headers.get(DEPLOYMENT_HEADER)
        if pinned is not None and pinned not in ports:
            return _error(404, f"deployment {pinned} does not exist on endpoint {endpoint}")
        target = pinned or balancer.pick({name: weight for name, weight in traffic.items() if name in ports})
        if target is None:
            return _error(404, NO_ROUTE)
        await asyncio.to_thread(count)
        try:
            answer = await clients["http"].request(
                request.method,
                f"http://{HOST}:{ports[target]}/{path}",
                content=await request.body(),
                headers={"content-type": request.headers.get("content-type", "application/json")},
            )
        except httpx.TimeoutException:
            return _error(504, f"deployment {target} did not answer in time", **{DEPLOYMENT_HEADER: target})
        except httpx.TransportError as error:
            return _error(502, f"deployment {target} is not answering ({error})", **{DEPLOYMENT_HEADER: target})
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
            headers={DEPLOYMENT_HEADER: target},
        )

    return app


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoint, port = argv[0], int(argv[1])
    app = create_app(Settings(), endpoint)
    log.info("endpoint %s routing on http://%s:%d", endpoint, HOST, port)
    uvicorn.run(app, host=HOST, port=port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
