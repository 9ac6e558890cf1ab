"""Upstream replies checked at the edge, whichever transport brought them (JSON answer or SSE chunk).

A provider, a proxy in between or a local server can send anything; what the gateway relays and logs must
still be an OpenAI answer, or an error the client can act on:
- a 200 carrying `error` is an upstream error (502), not a success;
- `choices` is a list, and each message's (or delta's) `content` a string or null;
- `usage` counts are non-negative integers below 2**53; any other value is dropped from the reply (the
  client does not get it either) and the caller is told which, so the log and the metrics count it.
"""

from __future__ import annotations

from typing import Any

from gateway.log.storable import is_count
from gateway.upstream.errors import UpstreamError, error_detail_of

USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


def clean_usage(body: dict[str, Any]) -> list[str]:
    """Drop every usage count that is not a sane integer, in place; return the dropped fields' names."""
    if "usage" not in body or body["usage"] is None:
        return []
    usage = body["usage"]
    if not isinstance(usage, dict):
        del body["usage"]
        return ["usage"]
    dropped = []
    for key in USAGE_COUNTS:
        if key in usage and usage[key] is not None and not is_count(usage[key]):
            del usage[key]
            dropped.append(f"usage.{key}")
    for key in USAGE_DETAILS:
        details = usage.get(key)
        if details is None:
            continue
        if not isinstance(details, dict):
            del usage[key]
            dropped.append(f"usage.{key}")
            continue
        for name in list(details):
            if details[name] is not None and not is_count(details[name]):
                del details[name]
                dropped.append(f"usage.{key}.{name}")
    return dropped


def check_completion(body: dict[str, Any]) -> list[str]:
    """Raise UpstreamError for a reply that is not a completion; return the usage fields dropped."""
    _raise_if_error(body)
    for choice in _choices(body):
        message = choice.get("message")
        if message is not None and not isinstance(message, dict):
            raise bad_reply("a choice whose message is not an object")
        if isinstance(message, dict):
            _check_content(message.get("content"))
    return clean_usage(body)


def check_chunk(body: dict[str, Any]) -> list[str]:
    """The same for one streamed chunk (`delta` instead of `message`)."""
    _raise_if_error(body)
    for choice in _choices(body):
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise bad_reply("a stream chunk whose delta is not an object")
        if isinstance(delta, dict):
            _check_content(delta.get("content"))
    return clean_usage(body)


def answer_chars(body: dict[str, Any]) -> int:
    """The characters of a reply's answers (what makes a reply big when the transport gave no bytes)."""
    total = 0
    for choice in body.get("choices") or ():
        message = choice.get("message") or choice.get("delta") or {}
        content = message.get("content") if isinstance(message, dict) else None
        total += len(content) if isinstance(content, str) else 0
    return total


def truncated_stream() -> UpstreamError:
    return UpstreamError(
        502,
        "Upstream stream ended before it finished (no finish_reason and no [DONE]); the answer is truncated.",
        code="upstream_truncated",
        retryable=False,
    )


def too_large(limit: int) -> UpstreamError:
    return UpstreamError(
        502, f"Upstream answer is larger than the limit of {limit} bytes.", code="upstream_too_large",
        retryable=False,
    )  # fmt: skip


def bad_reply(what: str) -> UpstreamError:
    return UpstreamError(502, f"Upstream sent {what}.", code="upstream_bad_response", retryable=False)


def _raise_if_error(body: dict[str, Any]) -> None:
    if body.get("error") is not None:
        raise UpstreamError(
            502,
            f"Upstream answered with an error: {error_detail_of(body['error'])}",
            code="upstream_error",
            retryable=False,
        )


def _choices(body: dict[str, Any]) -> list[dict[str, Any]]:
    choices = body.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list):
        raise bad_reply("`choices` that is not a list of objects")
    for choice in choices:  # a loop, not all(): this runs for every chunk of every stream
        if not isinstance(choice, dict):
            raise bad_reply("`choices` that is not a list of objects")
    return choices


def _check_content(content: Any) -> None:
    if content is not None and not isinstance(content, str):
        raise bad_reply(f"message content that is not a string ({type(content).__name__})")
