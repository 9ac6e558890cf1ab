"""`POST /v1/chat/completions`: auth -> parse/validate -> resolve model -> match -> call -> log -> respond.

Authentication comes before parsing so an unauthenticated caller costs neither a JSON parse nor a logged
prompt. Every request, failed or not, becomes one `requests` row, and that row is committed before the
response completes: before the JSON body is sent, and for a stream before its final chunk and `[DONE]`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from gateway.accounting.ledger import Template
from gateway.api.errors import GatewayError, validation_message
from gateway.api.exchange import Exchange, log_exchange, log_unavailable, usage_from
from gateway.api.local_serving import schedule_shadow, serve_local
from gateway.api.schemas import ChatCompletionRequest
from gateway.api.streaming import stream_response
from gateway.state import Gateway

log = logging.getLogger("promptintern.gateway")


async def chat_completions(request: Request, gateway: Gateway) -> Response:
    exchange = Exchange(request.scope.get("promptintern.started", time.perf_counter()))
    try:
        exchange.api_key_id = gateway.auth.authenticate(request.headers.get("authorization"))
        body = await read_json_body(request, gateway.settings.max_body_bytes)
        exchange.body = body
        if isinstance(body.get("model"), str):
            exchange.model_requested = body["model"]
        exchange.stream = body.get("stream") is True
        chat_request = validate(body)
        backend = gateway.registry.resolve(chat_request.model)
        exchange.backend, exchange.route = backend, "upstream"
        if (chat_request.n or 1) > 1 and not backend.supports_n:
            raise GatewayError(
                400,
                f"n={chat_request.n} is not supported by the backend for '{chat_request.model}'; "
                "send n=1 (or omit it) and repeat the request for more choices.",
                code="unsupported_parameter",
                param="n",
            )
        decision = gateway.router.decide(body) if gateway.router is not None else None
        if decision is not None:  # a mined template: maybe served locally, always accounted for
            exchange.template_id = decision.template_id
            exchange.template = Template(backend, body["messages"], list(decision.match.slots.values()))
            if decision.mode == "local":
                local_response = await serve_local(gateway, exchange, decision, chat_request, body)
                if local_response is not None:
                    return local_response  # else: a fallback, the original request goes upstream
            elif decision.mode == "shadow":
                schedule_shadow(gateway, exchange, decision, body)
        if chat_request.stream:
            return await stream_response(gateway, exchange, body, chat_request.include_usage)
        reply = await gateway.upstream.complete(backend, body, exchange.timing)
        choices = reply.body.get("choices") or [{}]
        exchange.response_text = (choices[0].get("message") or {}).get("content")
        exchange.finish_reason = choices[0].get("finish_reason")
        exchange.usage = usage_from(reply.body.get("usage"))
        exchange.completion_id = reply.body.get("id") if isinstance(reply.body.get("id"), str) else None
    except GatewayError as exc:
        return await _failed(gateway, exchange, exc)
    except Exception as exc:  # a bug or a malformed upstream answer: still one logged row, never a traceback
        log.error("request %s failed: %s", exchange.request_id, type(exc).__name__)
        return await _failed(
            gateway, exchange, GatewayError(500, "Internal gateway error.", code="internal_error")
        )

    if not await log_exchange(gateway, exchange, 200):
        return await _failed(gateway, exchange, log_unavailable(), log_row=False)
    headers = exchange.headers()
    if reply.raw is not None:
        return Response(reply.raw, media_type="application/json", headers=headers)
    return JSONResponse(reply.body, headers=headers)


async def read_json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > max_bytes:
            raise _too_large(max_bytes)
        parts.append(part)
    try:
        body = json.loads(b"".join(parts))
    except ValueError:  # also bad UTF-8
        raise GatewayError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def validate(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise GatewayError(400, message, code="invalid_value", param=param) from None


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(
        413, f"The request body is larger than the limit of {max_bytes} bytes.", code="request_too_large"
    )


async def _failed(
    gateway: Gateway, exchange: Exchange, error: GatewayError, log_row: bool = True
) -> Response:
    if log_row:
        await log_exchange(gateway, exchange, error.status, error)
    headers = exchange.headers()
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:  # the upstream's wait, for the client's own retry
        headers["retry-after"] = str(max(1, round(retry_after)))
    return error.response(headers=headers)
