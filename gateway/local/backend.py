"""The local-backend interface: what the router calls to serve an internalized model, whatever serves it.

Implementations: `LlamaPool` (gateway/local/pool.py, llama.cpp in this process) and `RemoteLocalBackend`
(gateway/local/remote.py, any OpenAI-compatible server); `make_local_backend(settings)`
(gateway/local/factory.py) picks one, so moving from one machine to a llama.cpp server fleet or vLLM is
configuration, not code.

Every failure is a `LocalError` (`LocalOverloaded` and `LocalTimeout` are kinds of it), raised before any
output for `chat`, and before the first delta for `chat_stream` when nothing was generated yet: the
router turns it into a fallback upstream. An answer with no visible text is a `LocalError` too.

`params["logprobs"]` true asks the backend for the answer's token log-probabilities (the router asks for
them to score the answer's confidence; a client asking for logprobs itself is sent upstream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, Any]

# Request fields the local backends honour, and fields that change nothing about the answer.
SUPPORTED_PARAMS = frozenset(
    {"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty"}
    | {"frequency_penalty", "n", "logprobs"}
)
NEUTRAL_PARAMS = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata", "store"})


class LocalError(RuntimeError):
    """The local backend could not answer; the request should go upstream."""


class LocalOverloaded(LocalError):
    """The model's queue is full."""


class LocalTimeout(LocalError):
    """The request was not done within local_timeout_s (queueing and loading included)."""


@dataclass(frozen=True)
class LocalResult:
    model_id: str
    text: str
    finish_reason: str  # stop | length
    prompt_tokens: int
    completion_tokens: int
    compute_s: float  # seconds the model's worker spent on this request (queueing excluded)
    # Log-probability of each generated token (gateway/local/confidence.py); None when the backend sent none.
    token_logprobs: tuple[float, ...] | None = None


@dataclass(frozen=True)
class LocalDelta:
    """A piece of streamed text; the last one has text "" and the whole result."""

    text: str
    result: LocalResult | None = None
    # Log-probabilities of tokens generated since the previous delta, when asked for (a backend may report
    # a token's one delta late); the result's `token_logprobs` is the whole answer's.
    logprobs: tuple[float, ...] = ()


class LocalBackend(Protocol):
    async def chat(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> LocalResult: ...

    def chat_stream(
        self, model_id: str, gguf_path: str, messages: Sequence[Message], params: Mapping
    ) -> AsyncIterator[LocalDelta]: ...

    async def prepare(self, model_id: str, gguf_path: str) -> None: ...

    async def release(self, model_id: str) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def unsupported_params(params: Mapping[str, Any]) -> list[str]:
    """Names of request fields a local model cannot honour (tools, response_format, n > 1, logprobs...)."""
    bad = [
        name
        for name, value in params.items()
        if name not in SUPPORTED_PARAMS | NEUTRAL_PARAMS and value is not None
    ]
    if params.get("n") not in (None, 1):
        bad.append("n")
    if params.get("logprobs"):
        bad.append("logprobs")
    return sorted(bad)
