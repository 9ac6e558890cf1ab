"""The one scrubber: what leaves the gateway (responses, SSE events, log lines) carries no secret.

Two strengths, one object:
- every byte sent to a client, whatever produced it (a JSON answer passed through as the upstream's raw
  bytes, an SSE event, an error), loses the secrets the gateway knows (gateway keys, provider keys, the
  install secret, key-like environment variables): `outgoing`;
- error text, which quotes upstreams and exceptions, also loses anything that looks like a key, file paths
  and Python tracebacks: `message`. Model answers are not treated this way: a shell command or a code
  sample is a legitimate answer and full of paths.

`ScrubbingMiddleware`-style use is in gateway/app.py (`GatewayHeaders`): the one place every response body
passes; a non-streamed body is rewritten whole with its content-length fixed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable

# Key-looking strings: provider keys (sk-..., sk-ant-..., gsk_...), bearer tokens, key=... query parameters.
_SECRET_PATTERNS = [
    re.compile(r"\b(sk|rk|pk|gsk|xai)[-_][A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[-_]?key|token|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]{6,}"),
]
# A traceback (to the end of the text: what follows it is its frames) and stray frame lines.
_TRACEBACK = re.compile(r"\s*Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r"\s*File \"[^\"]*\", line \d+(?:, in [^\n]*)?")
# Filesystem paths: under a usual root, or of two parts or more ending in a file extension.
_STOP = "\\s'\":,;()\\[\\]"  # characters that end a path inside a message
_PATH = re.compile(
    r"(?<![\w/.:-])(?:"
    rf"/(?:home|root|usr|opt|tmp|var|work|srv|mnt|etc|app|data|lib|proc|run|nix|snap|private|Users)(?:/[^{_STOP}]+)+"
    r"|(?:/[\w.@+-]+){2,}\.\w{1,8}\b"
    rf"|[A-Za-z]:\\[^{_STOP}]+"
    r")"
)
_ENV_SECRET_NAME = re.compile(r"(?i)(api_?key|_key|token|secret|password)$")
_PLACEHOLDERS = {"no-key", "none", "null", "unused", "dummy", "sk-no-key"}


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables named like keys (OPENAI_API_KEY...): litellm may use them."""
    environ = os.environ if environ is None else environ
    return [
        value
        for name, value in environ.items()
        if _ENV_SECRET_NAME.search(name) and len(value) >= 8 and value.lower() not in _PLACEHOLDERS
    ]


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and anything that looks like a key replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.lastindex and m.group(1).strip() else "") + "***", text)
    return text


class Scrubber:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if s and len(s) >= 4 and s.lower() not in _PLACEHOLDERS}
        self.secrets = sorted(unique, key=len, reverse=True)  # longest first: a key inside another
        self._secret_bytes = [s.encode() for s in self.secrets]

    def text(self, text: str) -> str:
        """Known secrets only (for model answers)."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def message(self, text: str) -> str:
        """Error text: known secrets, key-like strings, tracebacks and file paths removed."""
        text = _TRACEBACK.sub("", text)
        text = _FRAME.sub("", text)
        text = _PATH.sub("<path>", text)
        return scrub(text, self.secrets)

    def outgoing(self, body: bytes, error: bool = False) -> bytes:
        """A response body (or one SSE event) as it may leave: known secrets out; error objects scrubbed."""
        for secret in self._secret_bytes:
            if secret in body:
                body = body.replace(secret, b"***")
        if error or b'"error"' in body[:32]:
            body = self._error_body(body)
        return body

    def _error_body(self, body: bytes) -> bytes:
        prefix, payload, suffix = b"", body, b""
        if body.startswith(b"data:"):  # one SSE event
            prefix, payload = b"data: ", body[5:].strip()
            suffix = b"\n\n"
        try:
            parsed = json.loads(payload)
        except ValueError:
            return prefix + self.message(payload.decode("utf-8", "replace")).encode() + suffix
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            cleaned = self.message(error["message"])
            if cleaned == error["message"]:
                return body
            parsed["error"] = {**error, "message": cleaned}
            return prefix + json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode() + suffix
        if isinstance(error, str):
            parsed["error"] = self.message(error)
            return prefix + json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode() + suffix
        return body


class LogScrubFilter(logging.Filter):
    """Log records leave without known secrets (a provider's message may quote a key)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        cleaned = self.scrubber.text(message)  # paths and tracebacks stay: the operator needs them
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


SCRUBBED_LOGGERS = (
    "promptintern.gateway",
    "promptintern.router",
    "promptintern.local",
    "uvicorn.error",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
)


def install_log_filter(scrubber: Scrubber) -> LogScrubFilter:
    log_filter = LogScrubFilter(scrubber)
    for name in SCRUBBED_LOGGERS:
        logging.getLogger(name).addFilter(log_filter)
    return log_filter


def remove_log_filter(log_filter: LogScrubFilter) -> None:
    for name in SCRUBBED_LOGGERS:
        logging.getLogger(name).removeFilter(log_filter)
