"""Bad input and failing upstreams: the right status, an OpenAI error object, a complete log row with that
status, route/overhead headers, and a server that keeps answering afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.gateway.conftest import UPSTREAM_KEY

GOOD = {"model": "echo", "messages": [{"role": "user", "content": "still alive"}]}


def assert_error(
    response: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert "x-promptintern-route" in response.headers
    assert float(response.headers["x-promptintern-overhead-ms"]) >= 0
    return error


def assert_logged(gateway, response: httpx.Response, status: int) -> dict:
    row = gateway.row(response.headers["x-request-id"])
    assert row["status"] == status
    assert row["error"] == response.json()["error"]["message"]
    assert row["endTime"] is not None and row["latency_ms"] is not None and row["source"] == "gateway"
    return row


def assert_still_serving(gateway) -> None:
    response = gateway.post(GOOD)
    assert (
        response.status_code == 200
        and response.json()["choices"][0]["message"]["content"] == "echo: still alive"
    )


BAD_BODIES = [
    pytest.param(b'{"model": "echo", "messages": [', "invalid_json", None, id="malformed-json"),
    pytest.param(b"\xff\xfe not utf-8", "invalid_json", None, id="not-utf8"),
    pytest.param(b'["a", "list"]', "invalid_json", None, id="not-an-object"),
    pytest.param(b'{"model": "echo"}', "invalid_value", "messages", id="missing-messages"),
    pytest.param(b'{"model": "echo", "messages": []}', "invalid_value", "messages", id="empty-messages"),
    pytest.param(b'{"model": "echo", "messages": "hi"}', "invalid_value", "messages", id="messages-a-string"),
    pytest.param(b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "invalid_value", "model",
                 id="model-not-a-string"),
    pytest.param(b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
                 "invalid_value", "temperature", id="temperature-not-a-number"),
    pytest.param(b'{"model": "echo", "messages": [{"content": "x"}]}', "invalid_value", "messages.0.role",
                 id="message-without-role"),
]  # fmt: skip


@pytest.mark.parametrize("body,code,param", BAD_BODIES)
def test_bad_request_bodies_get_400(gateway, body, code, param):
    response = gateway.post(body, headers={"content-type": "application/json"})
    assert_error(response, 400, code, param)
    row = assert_logged(gateway, response, 400)
    assert row["route"] == "none" and row["model_served"] is None
    assert_still_serving(gateway)


def test_body_over_the_limit_gets_413(gateway):
    huge = "x" * (gateway.settings.max_body_bytes + 1)
    response = gateway.post({"model": "echo", "messages": [{"role": "user", "content": huge}]})
    assert_error(response, 413, "request_too_large")
    row = assert_logged(gateway, response, 413)
    assert row["messages"] is None  # never parsed, never stored
    assert_still_serving(gateway)


def test_unknown_model_gets_404_model_not_found(gateway):
    client = gateway.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nonexistent", messages=GOOD["messages"])
    response = caught.value.response
    error = assert_error(response, 404, "model_not_found", "model")
    assert "gpt-nonexistent" in error["message"]
    row = assert_logged(gateway, response, 404)
    assert row["model"] == "gpt-nonexistent" and row["route"] == "none"


def test_n_greater_than_one_is_refused_with_a_clear_message(gateway):
    response = gateway.post({**GOOD, "n": 3})
    error = assert_error(response, 400, "unsupported_parameter", "n")
    assert "n=3 is not supported" in error["message"]
    assert_logged(gateway, response, 400)


@pytest.mark.parametrize("suffix", ["", "-litellm"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "model,status,code",
    [
        ("boom", 502, "upstream_error"),
        ("busy", 429, "upstream_rate_limited"),
        ("hang", 504, "upstream_timeout"),
        ("refused", 502, "upstream_unreachable"),
    ],
)
def test_upstream_failures_map_to_gateway_errors(gateway, fake_upstream, model, status, code, stream, suffix):
    before = len(fake_upstream.received)
    response = gateway.post({"model": model + suffix, "messages": GOOD["messages"], "stream": stream})
    error = assert_error(response, status, code)
    assert UPSTREAM_KEY not in error["message"]
    row = assert_logged(gateway, response, status)
    assert row["route"] == "upstream" and row["model"] == model + suffix and row["stream"] == int(stream)
    # Retries (2, with backoff) only for connection errors, 5xx and 429; a timeout is not retried.
    attempts = len(fake_upstream.received) - before
    expected = {"boom": 3, "busy": 3, "hang": 1, "refused": 0}[model]
    assert attempts == expected
    assert_still_serving(gateway)


@pytest.mark.parametrize("model", ["broken-stream", "broken-stream-litellm"])
def test_stream_that_breaks_midway_ends_with_an_error_event_and_is_logged(gateway, model):
    client = gateway.client()
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=[{"role": "user", "content": "one two three four five"}], stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError):
            list(response.parse())
    row = gateway.row(request_id)
    assert row["status"] == 502 and row["error"] and row["stream"] == 1
    assert row["response"] == "echo: one"  # what reached the client before the break
    assert_still_serving(gateway)


@pytest.mark.parametrize("model", ["leaky", "leaky-litellm"])
def test_provider_key_is_scrubbed_from_upstream_error_messages(gateway, model):
    response = gateway.post({"model": model, "messages": GOOD["messages"]})
    error = assert_error(response, 502)
    assert UPSTREAM_KEY not in response.text
    assert "***" in error["message"]
    row = assert_logged(gateway, response, 502)
    assert UPSTREAM_KEY not in row["error"]


def test_unknown_path_and_wrong_method_are_openai_errors(gateway):
    assert_error(httpx.get(f"{gateway.url}/nothing-here"), 404, "not_found")
    assert_error(httpx.get(f"{gateway.url}/chat/completions"), 405, "method_not_allowed")


@pytest.mark.parametrize("model", ["dripping", "dripping-litellm"])
def test_client_leaving_mid_stream_is_logged_as_499(gateway, model):
    words = " ".join(f"w{i}" for i in range(40))  # 40 chunks, 100 ms apart
    with httpx.stream("POST", f"{gateway.url}/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": words}], "stream": True}
                      ) as response:  # fmt: skip
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"echo:"' in line:
                break  # leave after the first word
    deadline = time.monotonic() + 20
    while not (rows := gateway.rows("request_id = ?", (request_id,))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows, "a stream the client left was not logged"
    assert rows[0]["status"] == 499 and rows[0]["error"] and rows[0]["response"].startswith("echo:")
    assert_still_serving(gateway)


def test_serve_rejects_an_unknown_default_model_in_one_line(tmp_path, fake_upstream):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"default_model": "nope", "models": [
        {"name": "echo", "litellm_model": "openai/echo", "api_base": fake_upstream.url}]}))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PROMPTINTERN_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: default_model 'nope' is not a configured model (known: echo)"
    )
    assert "Traceback" not in result.stderr
