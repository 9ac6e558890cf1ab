"""OpenAI-style error objects and the exception handlers that produce them (secrets: gateway/api/scrub.py).

Every failure the HTTP API reports is `{"error": {"message", "type", "param", "code"}}` with the right status;
a traceback never reaches a client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.scrub import scrub

__all__ = ["GatewayError", "install_error_handlers", "scrub", "validation_message"]

log = logging.getLogger("promptintern.gateway")

# What `type` an error gets by status when the raiser does not say (OpenAI's vocabulary where it has one).
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """A failure with the status and OpenAI error fields the client should see."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or _TYPE_BY_STATUS.get(status, "server_error")

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _http_exception_error(exc: StarletteHTTPException) -> GatewayError:
    if exc.status_code == 404:
        return GatewayError(404, "Unknown path; see /v1/chat/completions and /v1/models.", code="not_found")
    if exc.status_code == 405:
        return GatewayError(405, "Method not allowed for this path.", code="method_not_allowed")
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return GatewayError(exc.status_code, detail)


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line and the offending parameter from pydantic's error list."""
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid request")
    return (f"Invalid value for '{param}': {message}" if param else f"Invalid request: {message}"), param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_exception_error(exc).response(headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return GatewayError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged for the operator (type only: messages may carry secrets); the client gets no traceback.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return GatewayError(500, "Internal gateway error.", code="internal_error").response()
