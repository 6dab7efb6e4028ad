"""ASGI pieces the router and the deployment servers share: the body-size limit and disconnect detection.

Both are plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers streamed
responses and hides the client's disconnect from the app behind it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from shared.platform.local.api_errors import ApiError


async def disconnected(request: Request) -> None:
    """Returns when the client closes the connection (call it once the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 before any of it reaches the app.

    Checked on ``Content-Length`` first, and again while a chunked body streams in, so a
    client cannot get around it by leaving the length out.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(
            413,
            f"The request body is larger than the endpoint's limit of {self.limit:,} bytes "
            "(FTPILOT_ENDPOINT_MAX_REQUEST_BYTES).",
            code="request_too_large",
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_large.response(scope["path"])(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await too_large.response(scope["path"])(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later reads wait for the client's disconnect

        await self.app(scope, replay, send)
