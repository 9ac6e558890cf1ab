"""What every transport shares: the timing record, the reply/chunk shapes, and the mapping of upstream
failures to the errors a client sees (scrubbed of secrets, marked retryable or not)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.api.errors import GatewayError
from gateway.api.scrub import Scrubber


@dataclass
class Timing:
    """Seconds spent waiting on the backend (calls, retries and their backoff), for the overhead figure."""

    backend_s: float = 0.0


class UpstreamError(GatewayError):
    def __init__(self, status: int, message: str, *, code: str, retryable: bool) -> None:
        super().__init__(status, message, code=code)
        self.retryable = retryable


@dataclass
class Reply:
    """A non-streamed completion: the dict, plus the exact bytes to return when the transport has them."""

    body: dict[str, Any]
    raw: bytes | None = None


@dataclass
class Chunk:
    """One streamed chunk: the dict, plus its exact `data: ...` SSE bytes when the transport has them."""

    body: dict[str, Any]
    raw: bytes | None = None


def error_for_status(status: int, detail: str, secrets: list[str]) -> UpstreamError:
    """The client-facing error for an upstream HTTP failure."""
    detail = Scrubber(secrets).message(detail)[:500]
    if status == 429:
        return UpstreamError(
            429, f"Upstream rate limit: {detail}", code="upstream_rate_limited", retryable=True
        )
    if status >= 500:
        return UpstreamError(
            502, f"Upstream error (HTTP {status}): {detail}", code="upstream_error", retryable=True
        )
    if status in (401, 403):
        # The client's gateway key was fine; the gateway's provider credentials were not.
        message = f"The upstream rejected the gateway's provider credentials (HTTP {status})."
        return UpstreamError(502, message, code="upstream_auth_failed", retryable=False)
    if status in (400, 413, 422):  # the request itself is wrong (context too long, bad parameter...)
        return UpstreamError(
            status, f"Upstream rejected the request: {detail}", code="upstream_bad_request", retryable=False
        )
    return UpstreamError(
        502, f"Upstream error (HTTP {status}): {detail}", code="upstream_error", retryable=False
    )


def unreachable(secrets: list[str], detail: str = "") -> UpstreamError:
    message = "Upstream unreachable (connection failed)" + (
        f": {Scrubber(secrets).message(detail)[:200]}" if detail else "."
    )
    return UpstreamError(502, message, code="upstream_unreachable", retryable=True)


def timed_out(timeout_s: float) -> UpstreamError:
    return UpstreamError(
        504, f"Upstream timed out after {timeout_s:g} s.", code="upstream_timeout", retryable=False
    )


def error_detail(content: bytes) -> str:
    """The message of an OpenAI-style error body (or the start of whatever the body is)."""
    try:
        return error_detail_of(json.loads(content).get("error"))
    except Exception:
        return Scrubber().message(content[:300].decode(errors="replace"))


def error_detail_of(error: object) -> str:
    """The message of an `error` member (an object or a string), scrubbed of paths, tracebacks and keys."""
    if isinstance(error, dict):
        error = error.get("message") or error
    return Scrubber().message(str(error))[:500]
