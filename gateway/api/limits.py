"""Reading and decoding a request body within limits, so no client can stall or crash the gateway.

- the body must arrive within `body_read_timeout_s` (a body trickled a byte a second is a 408) and be at most
  `max_body_bytes` (413);
- JSON nested deeper than `max_json_depth` is a 400 (json's own recursion guard would be a 500), more than
  `max_messages` messages is a 400, and so is text with a lone UTF-16 surrogate (`"\\ud800"`: valid JSON,
  but no Unicode text, and every later encoder chokes on it);
- a body larger than `offload_parse_bytes` is parsed and validated in a worker thread: 100k tiny messages
  take ~1 s of pure Python/pydantic work, which must not freeze every other request on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import json.scanner
import re
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from gateway.api.errors import GatewayError, validation_message
from gateway.api.schemas import ChatCompletionRequest
from gateway.settings import Settings

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_body(request: Request, settings: Settings) -> bytes:
    max_bytes = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts, size = [], 0
    try:
        async with asyncio.timeout(settings.body_read_timeout_s):
            async for part in request.stream():
                size += len(part)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                parts.append(part)
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {settings.body_read_timeout_s:g} s.",
            code="request_timeout",
        ) from None
    return b"".join(parts)


async def decode_request(
    raw: bytes, settings: Settings
) -> tuple[dict[str, Any], ChatCompletionRequest | GatewayError]:
    """The body and its validated request (or the 400 it deserves); large bodies off the event loop.

    Raises GatewayError only when there is no JSON object at all; otherwise the body comes back even when
    it is invalid, so the log row records what the client sent.
    """
    if len(raw) > settings.offload_parse_bytes:
        return await asyncio.to_thread(decode, raw, settings)
    return decode(raw, settings)


def decode(raw: bytes, settings: Settings) -> tuple[dict[str, Any], ChatCompletionRequest | GatewayError]:
    body = parse_json_object(raw, yielding=len(raw) > settings.offload_parse_bytes)
    try:
        check_shape(body, raw, settings)
        return body, validate(body)
    except GatewayError as exc:
        return body, exc


def parse_json_object(raw: bytes, yielding: bool = False) -> dict[str, Any]:
    """The body as a dict. `yielding`: parse with json's Python scanner (in a worker thread), which lets the
    event loop run between values; the C scanner holds the GIL for the whole body (0.15 s for 3 MB)."""
    try:
        body = _loads_yielding(raw) if yielding else json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # also bad UTF-8
        raise GatewayError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _loads_yielding(raw: bytes) -> Any:
    decoder = json.JSONDecoder()
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(raw.decode("utf-8"))


def check_shape(body: dict[str, Any], raw: bytes, settings: Settings) -> None:
    if json_depth(body, settings.max_json_depth) > settings.max_json_depth:
        raise _too_deep(settings.max_json_depth)
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > settings.max_messages:
        raise GatewayError(
            400,
            f"Too many messages: {len(messages)} (the limit is {settings.max_messages}).",
            code="too_many_messages",
            param="messages",
        )
    if _SURROGATE_ESCAPE.search(raw) and has_lone_surrogate(body):
        raise GatewayError(
            400,
            "The request holds a lone UTF-16 surrogate escape (such as \\ud800), which is not text.",
            code="invalid_unicode",
        )


def validate(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(list(exc.errors()))
        raise GatewayError(400, message, code="invalid_value", param=param) from None


def json_depth(value: Any, stop_past: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0); stops counting once past `stop_past`."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > stop_past:
                return deepest
        stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _too_deep(limit: int | None = None) -> GatewayError:
    where = f" (the limit is {limit} levels)" if limit else ""
    return GatewayError(400, f"The request body is nested too deeply{where}.", code="invalid_json")


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(
        413, f"The request body is larger than the limit of {max_bytes} bytes.", code="request_too_large"
    )
