"""Errors a local endpoint answers with, in the shape the caller's client reads.

A client learns what went wrong only from the body it knows how to parse:

* OpenAI's SDK reads ``{"error": {"message", "type", "param", "code"}}``; with anything else its
  exceptions say only "Error code: 422". Paths under ``/v1/`` answer in that shape.
* Azure ML clients get Azure's: ``{"error": {"code": "UserError"|"SystemError", "message",
  "details": [{"code", "message", "target"}]}}``, as the workspace's own REST errors are shaped
  (``../shared/fixtures/azureml/rest/SOURCES.md``), ``target`` naming the field.

Status codes follow what a managed online endpoint documents: 400 for a bad body, 401 without the
key, 408 past the request timeout, 413 for a body over the limit, 429 when the waiting line is full
(with ``Retry-After``), 424 when the model itself failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

OPENAI_PREFIX = "/v1/"
# OpenAI's error types by status (its API reference); 5xx are server errors.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "requests",
}
_AZURE_DETAIL = {
    400: "BadArgument",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
}


class ApiError(Exception):
    """A request the endpoint answers with an error: status, message and, where one is to blame, the field."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self, path: str) -> dict[str, Any]:
        """The error body for a request to ``path``."""
        if path.startswith(OPENAI_PREFIX):
            kind = _OPENAI_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
            return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        detail: dict[str, Any] = {"code": self.code or _AZURE_DETAIL.get(self.status, "Error"), "message": self.message}
        if self.param:
            detail["target"] = self.param
        category = "SystemError" if self.status >= 500 else "UserError"
        return {"error": {"code": category, "message": self.message, "details": [detail]}}

    def response(self, path: str) -> JSONResponse:
        return JSONResponse(self.body(path), status_code=self.status, headers=self.headers)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def validation_error(error: RequestValidationError) -> ApiError:
    """The first problem pydantic found, as a 400 that names the field."""
    first = error.errors()[0]
    param = field_path(tuple(first.get("loc", ())))
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if first.get("type") == "json_invalid":
        return ApiError(400, "The request body is not valid JSON.", code="invalid_json")
    if not param:
        return ApiError(400, f"The request body: {first.get('msg')}.", code="invalid_body")
    return ApiError(400, f"{param}: {first.get('msg')}.", param=param, code="invalid_value")


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` in the caller's shape, tracebacks never included."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, error: ApiError) -> JSONResponse:
        return error.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "Request failed."
        return ApiError(error.status_code, message).response(request.url.path)
