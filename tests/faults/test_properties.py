"""Property tests: arbitrary JSON from clients, arbitrary replies from upstreams (both transports).

Whatever comes in: an answer within the timeout (never a hang), an OpenAI error object when it is not a
success, never a 5xx that is the gateway's own fault except a logged 500, and exactly one log row per
request, with the status the client got.
"""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.conftest import GatewayProcess

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UPSTREAM_STATUSES = {502, 504}  # the upstream's fault, reported as such
ASK = [{"role": "user", "content": "hi"}]

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
text = st.text(st.characters(codec="utf-8") | surrogates, max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text


def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4)


json_values = st.recursive(scalars, _containers, max_leaves=12)
roles = st.sampled_from(["user", "system", "assistant"]) | json_values
message = st.fixed_dictionaries(
    {"role": roles}, optional={"content": text | json_values, "name": json_values}
)
chat_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["echo", "echo-litellm", "nope"]) | json_values,
        "messages": st.lists(message, max_size=4) | json_values,
    },
    optional={
        "stream": st.booleans() | json_values,
        "max_tokens": st.integers() | json_values,
        "temperature": st.floats(allow_nan=False) | json_values,
        "n": st.integers(-2, 3),
        "stream_options": json_values,
        "tools": json_values,
        "extra": json_values,
    },
)
usage_values = st.integers(-(2**70), 2**70) | st.floats() | text | st.none() | json_values
usage_keys = st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"])
reply_message = st.fixed_dictionaries({"role": st.just("assistant"), "content": text | json_values})
reply_choice = st.fixed_dictionaries(
    {
        "index": st.integers(0, 2) | json_values,
        "message": reply_message | json_values,
        "finish_reason": st.sampled_from(["stop", "length", None]) | json_values,
    }
)
replies = st.fixed_dictionaries(
    {"choices": st.lists(reply_choice, max_size=2) | json_values},
    optional={
        "usage": st.dictionaries(usage_keys, usage_values) | json_values,
        "error": json_values,
        "id": json_values,
        "model": json_values,
    },
)
# A well-formed answer whose usage is anything: the case a validator must get right, drawn often.
well_formed_reply = st.fixed_dictionaries(
    {
        "choices": st.just(
            [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]
        ),
        "usage": st.dictionaries(usage_keys, usage_values, min_size=1),
    }
)
chunk_choice = st.fixed_dictionaries(
    {
        "index": st.just(0) | json_values,
        "delta": st.fixed_dictionaries({}, optional={"content": text | json_values}) | json_values,
        "finish_reason": st.sampled_from([None, None, "stop"]) | json_values,
    }
)
chunks = st.fixed_dictionaries(
    {"choices": st.lists(chunk_choice, max_size=1) | json_values},
    optional={"usage": st.dictionaries(usage_keys, usage_values), "error": json_values},
)
junk_lines = st.sampled_from([b"", b"data: {oops\n\n", b": ping\n\n"])


def assert_sane_usage(usage) -> None:
    """What a client gets as usage: counts that any JSON reader keeps exactly, or nothing."""
    if usage is None:
        return
    details = usage.get("prompt_tokens_details") or {}
    for value in [*usage.values(), *(details.values() if isinstance(details, dict) else [])]:
        if not isinstance(value, dict) and value is not None:
            assert isinstance(value, int) and 0 <= value < 2**53, usage


def assert_proper(gateway: GatewayProcess, response: httpx.Response, events: list[str] | None = None) -> None:
    status = response.status_code
    row = gateway.one_row(response)
    if status != 200:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and "Traceback" not in error["message"]
        assert (
            status < 500 or status in UPSTREAM_STATUSES or (status in (500, 503) and row["status"] == status)
        )
        assert row["status"] == status
        return
    if events is None:  # JSON success
        assert row["status"] == 200
        assert_sane_usage(response.json().get("usage"))
        return
    for event in events[:-1]:
        assert_sane_usage(json.loads(event).get("usage"))
    if events and events[-1] == "[DONE]":
        assert row["status"] == 200
    else:  # a stream that ended with an error event: its status is the row's
        assert events and "error" in json.loads(events[-1]) and row["status"] >= 400


@SETTINGS
@given(body=chat_bodies | json_values)
def test_arbitrary_json_from_a_client(gateway: GatewayProcess, body):
    raw = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    if isinstance(body, dict) and body.get("stream") is True:
        response, events = gateway.stream(body, timeout=30)
        assert_proper(gateway, response, events if response.status_code == 200 else None)
    else:
        response = gateway.post(raw, timeout=30)
        assert_proper(gateway, response)


@SETTINGS
@given(
    reply=well_formed_reply | replies | json_values,
    status=st.sampled_from([200, 200, 200, 400, 429, 500]),
    transport=st.sampled_from(["", "-litellm"]),
    garbage=st.booleans(),
)
def test_arbitrary_json_replies_from_an_upstream(gateway, upstream, reply, status, transport, garbage):
    raw = b"\x00not json{" if garbage else json.dumps(reply).encode()
    upstream.script = (status, "application/json", raw)
    response = gateway.post(
        {"model": "scripted" + transport, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert_proper(gateway, response)


@SETTINGS
@given(
    events=st.lists(chunks | json_values, max_size=5),
    done=st.booleans(),
    transport=st.sampled_from(["", "-litellm"]),
    junk=junk_lines,
)
def test_arbitrary_sse_replies_from_an_upstream(gateway, upstream, events, done, transport, junk):
    raw = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + junk
    if done:
        raw += b"data: [DONE]\n\n"
    upstream.script = (200, "text/event-stream", raw)
    body = {"model": "scripted" + transport, "messages": ASK}
    response, received = gateway.stream(body, timeout=30)
    assert_proper(gateway, response, received if response.status_code == 200 else None)
    if received and received[-1] != "[DONE]":
        assert "[DONE]" not in received  # nothing after an error; no [DONE] the upstream did not send
