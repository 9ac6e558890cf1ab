"""What the gateway does with what an upstream answers, through the official openai client: 4xx passed
through once, 429/5xx retried (Retry-After honoured), local failures as 500s, tool calls and
`max_completion_tokens` on both transports."""

from __future__ import annotations

import json
import time

import openai
import pytest

from gateway.settings import Settings, UpstreamModel
from gateway.upstream.client import Upstream, for_backend
from gateway.upstream.errors import UpstreamDetail, clean_upstream_message, error_detail, error_for_status

MESSAGES = [{"role": "user", "content": "list the files in /tmp"}]
TRANSPORTS = ["", "-litellm"]
TOOL = {
    "type": "function",
    "function": {
        "name": "run_shell",
        "description": "Run a shell command",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    },
}


def sdk(gateway, max_retries: int = 2) -> openai.OpenAI:
    """The client as people use it: the SDK's own retries on (2 by default)."""
    return openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=max_retries)


def calls_since(fake_upstream, before: int) -> int:
    return len(fake_upstream.received) - before


@pytest.mark.parametrize("suffix", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "model,status,error",
    [("rejects", 422, openai.UnprocessableEntityError), ("gone", 404, openai.NotFoundError)],
)
def test_an_upstream_4xx_is_passed_through_and_sent_once(gateway, fake_upstream, model, status, error, stream,
                                                         suffix):  # fmt: skip
    before = len(fake_upstream.received)
    with pytest.raises(error) as caught:
        sdk(gateway).chat.completions.create(model=model + suffix, messages=MESSAGES, stream=stream)
    response = caught.value.response
    assert response.status_code == status
    body = response.json()["error"]
    assert f"fake upstream failure {status}" in body["message"] and body["code"] == "upstream_bad_request"
    assert body["type"] == "invalid_request_error"
    # Neither the gateway nor the SDK retried: one bad request, one upstream call.
    assert calls_since(fake_upstream, before) == 1
    assert gateway.row(response.headers["x-request-id"])["status"] == status


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_a_429_waits_the_retry_after_between_attempts(gateway, fake_upstream, suffix):
    before, started = len(fake_upstream.received), time.perf_counter()
    response = gateway.post({"model": "patient" + suffix, "messages": MESSAGES})
    elapsed = time.perf_counter() - started
    assert response.status_code == 429 and response.json()["error"]["code"] == "upstream_rate_limited"
    assert calls_since(fake_upstream, before) == 3  # the first try and upstream_retries=2 more
    assert elapsed >= 2 * 0.3  # Retry-After: 0.3 honoured before each retry (backoff alone is 10-40 ms)
    assert response.headers["retry-after"] == "1"  # whole seconds, rounded up to at least 1


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_a_retry_after_beyond_the_cap_is_left_to_the_client(gateway, fake_upstream, suffix):
    before = len(fake_upstream.received)
    response = gateway.post({"model": "impatient" + suffix, "messages": MESSAGES})
    assert response.status_code == 429 and response.headers["retry-after"] == "60"
    assert calls_since(fake_upstream, before) == 1


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_upstream_tracebacks_and_paths_never_reach_the_client_or_the_log(gateway, suffix):
    response = gateway.post({"model": "pathy" + suffix, "messages": MESSAGES})
    message = response.json()["error"]["message"]
    assert response.status_code == 502 and "boom in <path>" in message
    row = gateway.row(response.headers["x-request-id"])
    for text in (message, row["error"]):
        assert "/srv/fake" not in text and "Traceback" not in text and "server.py" not in text


def test_an_exception_inside_litellm_is_a_500_not_an_upstream_error(gateway, fake_upstream, monkeypatch):
    """A failure on the gateway's side of the call (here: an import inside litellm, as when its optional
    `mcp` package was missing) is the gateway's 500, not a 502 blaming the upstream, and is not retried."""
    import litellm.main

    def broken(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'something_optional'")

    monkeypatch.setattr(litellm.main, "validate_and_fix_openai_messages", broken)
    before = len(fake_upstream.received)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, max_retries=0).chat.completions.create(model="echo-litellm", messages=MESSAGES)
    error = caught.value.response.json()["error"]
    assert caught.value.status_code == 500 and error["code"] == "internal_error"
    assert "upstream error" not in error["message"].lower() and "something_optional" not in error["message"]
    assert calls_since(fake_upstream, before) == 0


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_tool_calls_through_both_transports(gateway, fake_upstream, suffix):
    client = sdk(gateway, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="echo" + suffix, messages=MESSAGES, tools=[TOOL], tool_choice="auto"
    )
    completion = raw.parse()
    [call] = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "run_shell"
    assert json.loads(call.function.arguments) == {"text": MESSAGES[0]["content"]}
    forwarded = fake_upstream.received[-1]
    assert forwarded["tools"][0]["function"]["name"] == "run_shell"
    assert not any(key.startswith("_") for key in forwarded)  # nothing of litellm's own leaks upstream
    row = gateway.row(raw.headers["x-request-id"])
    assert row["status"] == 200
    [logged] = json.loads(row["response"])  # the answer is its tool calls, as the importer keeps them
    assert logged["function"]["name"] == "run_shell" and logged["id"] == call.id

    stream = client.chat.completions.create(
        model="echo" + suffix,
        messages=MESSAGES,
        tools=[TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    [logged] = json.loads(gateway.row(stream.response.headers["x-request-id"])["response"])
    assert json.loads(logged["function"]["arguments"]) == {"text": MESSAGES[0]["content"]}
    assert logged["function"]["name"] == "run_shell" and logged["type"] == "function"
    pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert pieces[0].function.name == "run_shell"
    arguments = "".join(piece.function.arguments or "" for piece in pieces)
    assert json.loads(arguments) == {"text": MESSAGES[0]["content"]}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("suffix", TRANSPORTS)
def test_max_completion_tokens_reaches_a_self_hosted_server_as_max_tokens(gateway, fake_upstream, suffix):
    completion = sdk(gateway, max_retries=0).chat.completions.create(
        model="echo" + suffix, messages=[{"role": "user", "content": "one two three four five"}],
        max_completion_tokens=3,
    )  # fmt: skip
    forwarded = fake_upstream.received[-1]
    assert forwarded.get("max_tokens") == 3 and "max_completion_tokens" not in forwarded
    assert completion.choices[0].message.content == "echo: one two"
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 3


def test_which_backends_get_max_tokens():
    body = {"messages": [], "max_completion_tokens": 7}

    def model(**kwargs) -> UpstreamModel:
        return UpstreamModel(name="m", litellm_model="openai/m", **kwargs)

    renamed = {"messages": [], "max_tokens": 7}
    assert for_backend(model(api_base="http://127.0.0.1:8000/v1"), body) == renamed
    assert for_backend(model(api_base="https://gpu-box.internal/v1"), body) == renamed
    assert for_backend(model(local=True), body) == renamed
    assert for_backend(model(), body) == body  # the provider itself, through litellm
    assert for_backend(model(api_base="https://api.openai.com/v1"), body) == body
    assert for_backend(model(api_base="http://127.0.0.1/v1", max_tokens_field="as_sent"), body) == body
    assert for_backend(model(max_tokens_field="max_tokens"), body) == renamed
    both = {**body, "max_tokens": 9}
    assert for_backend(model(local=True), both) == both  # the client said both: leave it


def test_retry_delay_jitters_and_respects_the_cap():
    upstream = Upstream(Settings(retry_backoff_s=0.2, upstream_retries=2, retry_after_max_s=5), secrets=[])
    error_5xx = error_for_status(503, UpstreamDetail("busy"), [])
    delays = [upstream.retry_delay(error_5xx, 1) for _ in range(50)]
    assert all(0.2 <= d <= 0.4 for d in delays) and len(set(delays)) > 40  # 0.2 * 2**1, half of it random
    assert upstream.retry_delay(error_5xx, 2) is None  # retries used up
    assert upstream.retry_delay(error_for_status(400, UpstreamDetail("bad"), []), 0) is None
    assert upstream.retry_delay(error_for_status(429, UpstreamDetail(""), [], retry_after_s=3.0), 0) == 3.0
    assert upstream.retry_delay(error_for_status(429, UpstreamDetail(""), [], retry_after_s=6.0), 0) is None


def test_upstream_error_bodies_are_read_and_cleaned():
    fastapi_422 = json.dumps(
        {"detail": [{"loc": ["body", "messages", 0, "content"], "msg": "Field required"}]}
    )
    assert error_detail(fastapi_422.encode()).message == "messages.0.content: Field required"
    openai_400 = {"error": {"message": "too long", "code": "context_length_exceeded", "param": "messages"}}
    detail = error_detail(json.dumps(openai_400).encode())
    assert (detail.code, detail.param) == ("context_length_exceeded", "messages")
    passed = error_for_status(400, detail, [])
    assert (passed.status, passed.code, passed.param) == (400, "context_length_exceeded", "messages")
    assert error_detail(b"<html>oops</html>").message == "<html>oops</html>"

    text = (
        "failed to open /home/alice/models/x.gguf and C:\\Users\\bob\\m.bin; see "
        "https://api.example.com/v1/chat/completions or POST /v1/chat/completions, key sk-abcdefghijklmnop"
        '\n\nTraceback (most recent call last):\n  File "/usr/lib/python3/x.py", line 1'
    )
    cleaned = clean_upstream_message(text, ["sk-abcdefghijklmnop"])
    assert cleaned == (
        "failed to open <path> and <path>; see https://api.example.com/v1/chat/completions or "
        "POST /v1/chat/completions, key ***"
    )
