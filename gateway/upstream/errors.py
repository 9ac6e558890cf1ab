"""What every transport shares: the timing record, the reply/chunk shapes, and the mapping of upstream
failures to the errors a client sees (scrubbed of secrets, marked retryable or not)."""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.api.errors import GatewayError
from gateway.api.scrub import Scrubber


@dataclass
class Timing:
    """Seconds spent waiting on the backend (calls, retries and their backoff), for the overhead figure."""

    backend_s: float = 0.0


class UpstreamError(GatewayError):
    """A failed backend call. `retryable`: the same request may succeed if sent again; `retry_after_s`: how
    long the upstream asked callers to wait first (a 429's Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        retryable: bool,
        param: str | None = None,
        retry_after_s: float | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(status, message, code=code, param=param, error_type=error_type)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def internal_error(what: BaseException) -> UpstreamError:
    """An exception raised inside the gateway (or litellm) while calling a backend: the gateway's fault, a
    500, never blamed on the upstream and never retried."""
    return UpstreamError(
        500,
        f"Internal gateway error while calling the upstream ({type(what).__name__}).",
        code="internal_error",
        retryable=False,
    )


@dataclass
class Reply:
    """A non-streamed completion: the dict, plus the exact bytes to return when the transport has them."""

    body: dict[str, Any]
    raw: bytes | None = None


@dataclass(slots=True)
class Chunk:
    """One streamed chunk: the dict, plus its exact `data: ...` SSE bytes when the transport has them.
    `more`: another chunk of the same network read follows at once (the relay sends them in one write)."""

    body: dict[str, Any]
    raw: bytes | None = None
    more: bool = False


def error_for_status(
    status: int, detail: UpstreamDetail, secrets: list[str], retry_after_s: float | None = None
) -> UpstreamError:
    """The client-facing error for an upstream HTTP failure.

    A 4xx is about the request (or, for 401/403, the gateway's provider credentials): it is passed through
    and never retried, since the same request would be rejected again. 429 and 5xx may pass on a retry.
    """
    message = clean_upstream_message(detail.message, secrets)
    if status == 429:
        return UpstreamError(
            429, f"Upstream rate limit: {message}", code="upstream_rate_limited", retryable=True,
            retry_after_s=retry_after_s,
        )  # fmt: skip
    if status >= 500:
        return UpstreamError(
            502, f"Upstream error (HTTP {status}): {message}", code="upstream_error", retryable=True
        )
    if status in (401, 403):
        # Not the client's key (that was checked already) but the gateway's provider credentials: a 401 here
        # would tell the client its own key is wrong.
        message = f"The upstream rejected the gateway's provider credentials (HTTP {status})."
        return UpstreamError(502, message, code="upstream_auth_failed", retryable=False)
    if 400 <= status < 500:  # the request itself is wrong (bad parameter, context too long, unknown model...)
        return UpstreamError(
            status, f"Upstream rejected the request: {message}", code=detail.code or "upstream_bad_request",
            param=detail.param, retryable=False, error_type="invalid_request_error",
        )  # fmt: skip
    return UpstreamError(
        502, f"Upstream error (HTTP {status}): {message}", code="upstream_error", retryable=False
    )


def unreachable(secrets: list[str], detail: str = "") -> UpstreamError:
    message = "Upstream unreachable (connection failed)" + (
        f": {clean_upstream_message(detail, secrets)[:200]}" if detail else "."
    )
    return UpstreamError(502, message, code="upstream_unreachable", retryable=True)


def timed_out(timeout_s: float) -> UpstreamError:
    return UpstreamError(
        504, f"Upstream timed out after {timeout_s:g} s.", code="upstream_timeout", retryable=False
    )


@dataclass
class UpstreamDetail:
    """What an upstream error body says: its message, and its OpenAI `code`/`param` when it has them."""

    message: str
    code: str | None = None
    param: str | None = None


_IDENTIFIER = re.compile(r"^[A-Za-z][\w.\-]{0,63}$")


def error_detail(content: bytes) -> UpstreamDetail:
    """The message (and code/param) of an OpenAI-style error body, or of FastAPI's `{"detail": ...}`, or the
    start of whatever the body is."""
    try:
        parsed = json.loads(content)
    except ValueError:
        return UpstreamDetail(content[:300].decode(errors="replace"))
    if not isinstance(parsed, dict):
        return UpstreamDetail(str(parsed)[:300])
    error = parsed.get("error", parsed.get("detail"))
    if isinstance(error, dict):
        return UpstreamDetail(str(error.get("message") or error), _identifier(error.get("code")),
                              _identifier(error.get("param")))  # fmt: skip
    if isinstance(error, list) and error and isinstance(error[0], dict):  # FastAPI validation errors
        first = error[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return UpstreamDetail(f"{where}: {first.get('msg')}" if where else str(first.get("msg")))
    return UpstreamDetail(str(error if error is not None else parsed)[:300])


def _identifier(value: object) -> str | None:
    """An upstream `code`/`param` worth passing on (`context_length_exceeded`, `messages`), else None."""
    return value if isinstance(value, str) and _IDENTIFIER.match(value) else None


def clean_upstream_message(text: str, secrets: list[str]) -> str:
    """An upstream's message fit for a client and the log: no secrets, no traceback, no file paths (the one
    scrubber, gateway/api/scrub.py; llama-cpp-python appends a traceback to its 500s)."""
    return Scrubber(secrets).message(text).strip()[:500]


def error_detail_of(error: object) -> str:
    """The message of an `error` member (an object or a string), scrubbed of paths, tracebacks and keys."""
    if isinstance(error, dict):
        error = error.get("message") or error
    return clean_upstream_message(str(error), [])


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """How long the upstream asked to wait (`retry-after-ms`, or `retry-after` in seconds or as a date)."""
    if not headers:
        return None
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        value = lowered.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None
