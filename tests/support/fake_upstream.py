"""A small, real OpenAI-compatible HTTP server for tests and benchmarks (a stand-in for a paid provider).

It speaks `POST /v1/chat/completions` (JSON and SSE streaming with usage), `GET /v1/models` and
`GET /health`, answers after a configurable fixed latency, and its content is deterministic: it echoes the
last user message word by word, so a greedy request gives the same text streamed or not.

Failure modes are chosen by the model name the request carries (so a gateway can point one configured
model at each failure):
  error-<status>   answers with that HTTP status and an OpenAI error object (error-500, error-429...)
  hang             never answers (the caller's timeout fires)
  midstream-error  streams two chunks, then drops the connection
  slow-<ms>        answers after <ms> milliseconds instead of the configured latency
  drip-<ms>        streams with <ms> milliseconds between chunks (for clients that leave mid-stream)
  leak-key         a careless provider: a 500 whose message quotes the Authorization header it received
  leak-path        a careless server: a 500 whose message carries a traceback and its file paths
  ratelimit-<s>    a 429 with `Retry-After: <s>` (seconds)

A request with `tools` (and `tool_choice` not "none") is answered with a call of the first tool, its
arguments `{"text": <the last user message>}`, streamed in two argument pieces when streaming.

Misbehaviours, for fault-injection tests (each on both JSON and SSE unless said):
  echo-key         a 200 answer (and SSE content) quoting the Authorization header it received
  usage-huge       usage.prompt_tokens = 2**64          usage-sum    prompt and completion 2**62 each
  usage-float      usage.prompt_tokens = 1e30           usage-cached cached_tokens = 2**70
  usage-negative   usage.completion_tokens = -5
  content-list     message content is a list (JSON); delta content is an int (SSE)
  error-200        a 200 whose body (or first SSE event) is {"error": {...}}
  truncate         SSE: two content chunks, then a clean close: no finish_reason, no [DONE]
  huge-<bytes>     an answer of that many bytes
  traceback        a 500 whose message is a Python traceback with file paths
  not-json         a 200 whose body is not JSON
  scripted         answers with `FakeUpstream.script` = (status, content type, body bytes) as it is
                   (a property test sets it before each request)
  flood-<bytes>    SSE: that many bytes of content in 64 KiB chunks, as fast as the reader takes them
                   (`floods` records, per stream, the chunks sent and whether the reader hung up before
                   reading it all)

Every request body it receives is kept (most recent last) and served at `GET /fake/requests`, so tests can
check what the gateway forwarded (extra fields passed through, no gateway key leaked).

Run it in this process (`FakeUpstream().start()` -> URL, in a thread) or in its own process
(`start_fake_upstream_process()` or `python -m tests.support.fake_upstream --latency-ms 50`), on 127.0.0.1:0.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from gateway.loopback import serve_in_thread
from gateway.templates.request_shape import message_text
from tests.support.asgi import (
    Receive,
    Scope,
    Send,
    lifespan,
    model_card,
    read_body,
    send_error,
    send_json,
    sse,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


SYSTEM_FINGERPRINT = "fake-upstream"


def count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace words. Deterministic, which is all tests need."""
    return len(text.split())


def reply_for(body: dict[str, Any]) -> tuple[list[str], str, dict[str, int]]:
    """The words of the answer, its finish reason and its usage for one request body."""
    messages = body.get("messages") or []
    user_texts = [message_text(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    words = ["echo:", *(user_texts[-1].split() if user_texts else [])]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    finish_reason = "stop"
    if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
        words, finish_reason = words[:max_tokens], "length"
    prompt_tokens = sum(count_tokens(message_text(m)) for m in messages if isinstance(m, dict))
    # A prompt this long is "cached" by the fake provider, so cached-token accounting has something to see.
    cached = (prompt_tokens // 2) if prompt_tokens >= 64 else 0
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(words),
        "total_tokens": prompt_tokens + len(words),
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    return words, finish_reason, usage


def _join(words: list[str]) -> list[str]:
    """Stream pieces whose concatenation is exactly the non-streamed content."""
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


class FakeUpstream:
    """The ASGI app plus the thread that serves it. `latency_s` is added before every answer."""

    def __init__(self, latency_s: float = 0.0, keep_requests: int = 1000) -> None:
        self.latency_s = latency_s
        self.received: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_requests)
        self.url: str | None = None
        self.floods: list[dict[str, Any]] = []
        self.script: tuple[int, str, bytes] | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ---- serving -------------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on a free 127.0.0.1 port in a daemon thread; return the base URL (ending in /v1)."""
        self._server, self._thread, port = serve_in_thread(self)
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    # ---- ASGI ----------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "GET" and path in ("/health", ""):
            await send_json(send, 200, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            await send_json(send, 200, {"object": "list", "data": [model_card("fake")]})
        elif method == "GET" and path == "/fake/requests":
            await send_json(send, 200, {"requests": list(self.received)})
        elif method == "POST" and path == "/v1/chat/completions":
            await self._chat(scope, receive, send)
        else:
            await send_error(send, 404, f"no route {method} {path}", "not_found_error")

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except Exception:
            await send_error(send, 400, "body is not a JSON object", "invalid_request_error")
            return
        self.received.append(body)
        model = str(body.get("model", ""))
        latency = self.latency_s
        if model.startswith("slow-"):
            latency = float(model.removeprefix("slow-")) / 1000
        if model == "hang":
            await asyncio.sleep(3600)
        if latency:
            await asyncio.sleep(latency)
        authorization = dict(scope["headers"]).get(b"authorization", b"").decode()
        misbehaviour = await self._misbehave(send, receive, body, model, authorization)
        if misbehaviour:
            return
        if model == "leak-key":
            await send_error(send, 500, f"invalid request with header {authorization}", "server_error")
            return
        if model == "leak-path":
            message = (
                "boom in /srv/fake/app/handler.py\n\nTraceback (most recent call last):\n"
                '  File "/srv/fake/app/server.py", line 12, in handle'
            )
            await send_error(send, 500, message, "server_error")
            return
        if model.startswith("error-"):
            status = int(model.removeprefix("error-"))
            await send_error(send, status, f"fake upstream failure {status}", "server_error")
            return
        if model.startswith("ratelimit-"):
            headers = [(b"retry-after", model.removeprefix("ratelimit-").encode())]
            await send_error(send, 429, "fake upstream rate limit", "rate_limit_error", headers)
            return
        tool_call = _tool_call_for(body)
        if tool_call is not None:
            await self._tool_call(send, body, model, tool_call)
            return
        words, finish_reason, usage = reply_for(body)
        created = int(time.time())
        completion_id = f"chatcmpl-fake{time.monotonic_ns()}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            await self._stream(
                send, completion_id, created, model, words, finish_reason, usage, include_usage
            )
            return
        await send_json(
            send,
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(_join(words))},
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage,
            },
        )

    async def _misbehave(
        self, send: Send, receive: Receive, body: dict[str, Any], model: str, authorization: str
    ) -> bool:
        """Answer as one of the scripted misbehaviours; False when `model` names none."""
        stream = bool(body.get("stream"))
        if model == "scripted" and self.script is not None:
            status, content_type, raw = self.script
            headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(raw)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": raw})
            return True
        words, _, usage = reply_for(body)
        bad_usage = {
            "usage-huge": {"prompt_tokens": 2**64},
            "usage-sum": {"prompt_tokens": 2**62, "completion_tokens": 2**62, "total_tokens": 2**63},
            "usage-float": {"prompt_tokens": 1e30},
            "usage-cached": {"prompt_tokens_details": {"cached_tokens": 2**70}},
            "usage-negative": {"completion_tokens": -5},
        }
        content: Any = "".join(_join(words))
        if model in bad_usage:
            usage = {**usage, **bad_usage[model]}
        elif model == "echo-key":
            content = f"my key is {authorization.removeprefix('Bearer ')}"
        elif model == "content-list":
            content = [{"type": "text", "text": "a list"}] if not stream else 7
        elif model.startswith("huge-"):
            content = "x" * int(model.removeprefix("huge-"))
        elif model == "traceback":
            trace = (
                "Traceback (most recent call last):\n"
                '  File "/srv/provider/app/server.py", line 12, in handle\n'
                "    raise KeyError(key)\nKeyError: 'sk-provider-internal-abcdefgh'"
            )
            await send_error(send, 500, trace, "server_error")
            return True
        elif model == "not-json":
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"<html>oops</html>"})
            return True
        elif model == "error-200":
            error = {"error": {"message": "quota exceeded", "type": "insufficient_quota", "code": "quota"}}
            if not stream:
                await send_json(send, 200, error)
                return True
        elif model.startswith("flood-") and stream:
            await self._flood(send, receive, int(model.removeprefix("flood-")))
            return True
        elif model != "truncate":
            return False
        envelope = {"id": "chatcmpl-bad", "created": int(time.time()), "model": model}
        if not stream:
            await send_json(send, 200, {**envelope, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ], "usage": usage})  # fmt: skip
            return True
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def event(payload: dict[str, Any]) -> None:
            await send({"type": "http.response.body", "body": sse(payload), "more_body": True})

        if model == "error-200":
            await event({"error": {"message": "quota exceeded", "type": "insufficient_quota"}})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        chunk = {**envelope, "object": "chat.completion.chunk"}
        await event({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        pieces = [content] if not isinstance(content, str) else ([content] if model != "truncate" else words)
        for piece in pieces[:2] if model == "truncate" else pieces:
            await event(
                {**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            )
        if model == "truncate":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        await event({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        await event({**chunk, "choices": [], "usage": usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        return True

    async def _flood(self, send: Send, receive: Receive, total: int) -> None:
        record = {"sent": 0, "reader_hung_up": False}
        self.floods.append(record)

        async def watch() -> None:  # the request body is read: the next message is the disconnect
            while (await receive())["type"] != "http.disconnect":
                pass
            record["reader_hung_up"] = True

        watcher = asyncio.create_task(watch())
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        piece = "y" * 65536
        base = {"id": "chatcmpl-flood", "object": "chat.completion.chunk", "created": 0, "model": "flood"}
        try:
            for _ in range(max(1, total // len(piece))):
                if record["reader_hung_up"]:
                    return
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                chunk = sse({**base, "choices": [choice]})
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                record["sent"] += 1
            done = {"index": 0, "delta": {}, "finish_reason": "stop"}
            await send(
                {"type": "http.response.body", "body": sse({**base, "choices": [done]}), "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            # Socket buffers may have taken it all: keep watching, a reader that closes early still shows.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), 60)
        finally:
            watcher.cancel()

    async def _tool_call(self, send: Send, body: dict[str, Any], model: str, call: dict[str, Any]) -> None:
        completion_id, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
        prompt = sum(count_tokens(message_text(m)) for m in body.get("messages") or [])
        arguments = call["function"]["arguments"]
        usage = {"prompt_tokens": prompt, "completion_tokens": count_tokens(arguments),
                 "total_tokens": prompt + count_tokens(arguments)}  # fmt: skip
        envelope = {"id": completion_id, "created": created, "model": model}
        if not body.get("stream"):
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
            await send_json(send, 200, {**envelope, "object": "chat.completion", "choices": [choice],
                                         "usage": usage})  # fmt: skip
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        half = len(arguments) // 2
        first = {
            **call,
            "index": 0,
            "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
        }
        deltas = [
            ({"role": "assistant", "content": None, "tool_calls": [first]}, None),
            ({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}, None),
            ({}, "tool_calls"),
        ]
        for delta, finish in deltas:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            chunk = {**envelope, "object": "chat.completion.chunk", "choices": [choice]}
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk = {**envelope, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _stream(
        self,
        send: Send,
        completion_id: str,
        created: int,
        model: str,
        words: list[str],
        finish_reason: str,
        usage: dict[str, int],
        include_usage: bool,
    ) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        def chunk(delta: dict[str, Any], finish: str | None, usage_value: Any = None, choices: bool = True):
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
                if choices
                else [],
            }
            if include_usage:
                payload["usage"] = usage_value
            return {"type": "http.response.body", "body": sse(payload), "more_body": True}

        await send(chunk({"role": "assistant", "content": ""}, None))
        for i, piece in enumerate(_join(words)):
            if model == "midstream-error" and i == 2:
                # Let the reader take what was sent first: aiohttp drops data still buffered at a reset.
                await asyncio.sleep(0.2)
                raise ConnectionResetError("fake upstream drops the stream")  # uvicorn closes the socket
            if model.startswith("drip-"):
                await asyncio.sleep(float(model.removeprefix("drip-")) / 1000)
            await send(chunk({"content": piece}, None))
        await send(chunk({}, finish_reason))
        if include_usage:
            await send(chunk({}, None, usage_value=usage, choices=False))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _tool_call_for(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call of the request's first function tool, or None when it has no tools (or forbids calls)."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    if not tools or body.get("tool_choice") == "none":
        return None
    user_texts = [message_text(m) for m in body.get("messages") or [] if m.get("role") == "user"]
    arguments = json.dumps({"text": user_texts[-1] if user_texts else ""})
    name = str((tools[0].get("function") or {}).get("name", ""))
    return {"id": f"call_fake{time.monotonic_ns()}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


class FakeUpstreamProcess:
    """The fake in its own process (so a benchmark's client and gateway do not share its GIL)."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,  # `tests` is a package of the checkout, not of the installed product
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # the URL, once it serves
        if not line.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"fake upstream failed to start: {line!r}")
        self.url = line

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> FakeUpstreamProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fake_upstream_process(latency_ms: float = 0.0) -> FakeUpstreamProcess:
    """Start the fake in a subprocess on 127.0.0.1:0; `.url` is its base URL, `.stop()` ends it."""
    return FakeUpstreamProcess(latency_ms)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeUpstream(latency_s=args.latency_ms / 1000)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(fake, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)

    async def announce_when_started() -> None:
        while not server.started:
            await asyncio.sleep(0.01)
        print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)

    async def run() -> None:
        announcer = asyncio.create_task(announce_when_started())
        await server.serve(sockets=[sock])
        announcer.cancel()

    try:  # uvloop when installed: plain asyncio + h11 stalls keep-alive requests ~40 ms on some kernels
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
