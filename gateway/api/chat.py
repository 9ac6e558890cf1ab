"""`POST /v1/chat/completions`: auth -> parse/validate -> resolve model -> match -> call -> log -> respond.

Authentication comes before parsing so an unauthenticated caller costs neither a JSON parse nor a logged
prompt. Every request, failed or not, becomes one `requests` row, and that row is committed before the
response completes: before the JSON body is sent, and for a stream before its final chunk and `[DONE]`.
"""

from __future__ import annotations

import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gateway.accounting.ledger import Template
from gateway.api.errors import GatewayError
from gateway.api.exchange import Exchange, log_exchange, log_unavailable, usage_from
from gateway.api.limits import decode_request, read_body
from gateway.api.local_serving import schedule_shadow, serve_local
from gateway.api.streaming import stream_response
from gateway.log.row_text import answer_text
from gateway.state import Gateway
from gateway.upstream.errors import Reply
from gateway.upstream.validate import answer_chars, check_completion, too_large

log = logging.getLogger("promptintern.gateway")


async def chat_completions(request: Request, gateway: Gateway) -> Response:
    exchange = Exchange(request.scope.get("promptintern.started", time.perf_counter()))
    try:
        exchange.api_key_id = gateway.auth.authenticate(request.headers.get("authorization"))
        raw = await read_body(request, gateway.settings)
        body, checked = await decode_request(raw, gateway.settings)
        exchange.body, exchange.large = body, len(raw) > gateway.settings.offload_parse_bytes
        if isinstance(body.get("model"), str):
            exchange.model_requested = body["model"]
        exchange.stream = body.get("stream") is True
        if isinstance(checked, GatewayError):
            raise checked
        chat_request = checked
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
        reply = checked_reply(
            await gateway.upstream.complete(backend, body, exchange.timing),
            exchange,
            gateway.settings.max_upstream_response_bytes,
        )
        choices = reply.body.get("choices") or [{}]
        exchange.response_text = answer_text(choices[0].get("message"))
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


def checked_reply(reply: Reply, exchange: Exchange, max_bytes: int) -> Reply:
    """The reply checked at the edge (gateway/upstream/validate.py), re-serialized if a field was dropped."""
    dropped = check_completion(reply.body)
    if reply.raw is None and answer_chars(reply.body) > max_bytes:  # litellm read it whole already
        raise too_large(max_bytes)
    if dropped:
        exchange.upstream_dropped += dropped
        return Reply(reply.body)
    return reply


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
