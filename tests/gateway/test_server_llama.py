"""The gateway on its embedded default: a real llama.cpp server on SmolLM2-135M-Instruct, started and
supervised by the gateway, reached through the direct pass-through (and, from a second gateway, through
litellm).

Short greedy generations (max_tokens=8) keep each request around a second on two CPU cores.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest

from gateway.settings import Settings, UpstreamModel
from gateway.upstream.base_model import smollm2_gguf_path
from tests.gateway.conftest import start_gateway

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Write a bash command that lists the files in /tmp."}]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    settings = Settings(
        home=tmp_path_factory.mktemp("embedded-home"), embedded_threads=2, embedded_n_ctx=1024
    )
    assert settings.models == []  # nothing configured: the gateway starts llama.cpp itself
    running = start_gateway(settings)
    yield running
    running.stop()


def _health(gateway) -> dict:
    return httpx.get(f"{gateway.root}/health", timeout=10).json()


def test_embedded_model_is_the_only_model(embedded):
    assert [m.id for m in embedded.client().models.list().data] == [MODEL]
    with pytest.raises(openai.NotFoundError):  # no default_model: other names are not silently served
        embedded.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **GREEDY)


def test_stream_and_non_stream_agree_and_log_exact_tokens(embedded):
    client = embedded.client()
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, **GREEDY)
    plain = raw.parse()
    assert raw.headers["x-promptintern-route"] == "upstream"
    assert float(raw.headers["x-promptintern-overhead-ms"]) < 100
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **GREEDY
    ) as response:
        stream_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content and streamed.strip()
    stream_usage = chunks[-1].usage
    # llama.cpp sends no usage in streams; the gateway's own count equals llama.cpp's non-streamed one.
    assert stream_usage.prompt_tokens == plain.usage.prompt_tokens
    assert stream_usage.completion_tokens == plain.usage.completion_tokens == 8

    for request_id, usage, stream in (
        (raw.headers["x-request-id"], plain.usage, 0),
        (stream_id, stream_usage, 1),
    ):
        row = embedded.row(request_id)
        assert row["status"] == 200 and row["stream"] == stream
        assert row["response"] == streamed and row["finish_reason"] == "length"
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        assert row["model_served"] == f"openai/{MODEL}"
        # A local backend is priced per compute-second.
        assert row["local_compute_s"] > 0
        expected = row["local_compute_s"] * embedded.settings.local_cost_per_hour / 3600
        assert row["spend"] == pytest.approx(expected)


def test_max_completion_tokens_is_honoured(embedded):
    """What LangChain and newer SDKs send; llama.cpp's server reads only max_tokens."""
    completion = embedded.client().chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=5, temperature=0
    )
    assert completion.usage.completion_tokens == 5 and completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "change,param",
    [
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
         "response_format.type"),
    ],
)  # fmt: skip
def test_a_request_llama_cpp_rejects_is_a_400_naming_the_field(embedded, change, param):
    body = {"model": MODEL, "messages": MESSAGES, **GREEDY, **change}
    started = time.perf_counter()
    response = httpx.post(f"{embedded.url}/chat/completions", json=body, timeout=60)
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param, error
    assert "Traceback" not in error["message"] and "/" not in error["message"].split(":", 1)[1]
    assert time.perf_counter() - started < 5  # answered at once: not retried as a server error
    assert embedded.row(response.headers["x-request-id"])["status"] == 400


def test_direct_transport_to_llama_cpp_matches_litellm(embedded):
    api_base = _health(embedded)["embedded"]["api_base"]
    litellm_model = UpstreamModel(
        name="smol-litellm", litellm_model=f"openai/{MODEL}", api_base=api_base, api_key="no-key",
        transport="litellm", local=True, gguf_path=smollm2_gguf_path(),
    )  # fmt: skip
    settings = Settings(home=embedded.settings.home / "litellm", models=[litellm_model])
    other = start_gateway(settings)
    try:
        via_direct = embedded.client().chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
        via_litellm = other.client().chat.completions.create(
            model="smol-litellm", messages=MESSAGES, **GREEDY
        )
        assert via_direct.choices[0].message.content == via_litellm.choices[0].message.content
        assert via_direct.usage.prompt_tokens == via_litellm.usage.prompt_tokens
        with embedded.client().chat.completions.with_streaming_response.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        ) as response:
            chunks = list(response.parse())
            row = embedded.row(response.headers["x-request-id"])
        assert chunks[-1].usage.prompt_tokens == via_direct.usage.prompt_tokens == row["prompt_tokens"]
        assert row["completion_tokens"] == via_direct.usage.completion_tokens
    finally:
        other.stop()


def test_embedded_server_is_restarted_when_it_dies(embedded):
    before = _health(embedded)["embedded"]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = _health(embedded)["embedded"]
        if now["restarts"] == before["restarts"] + 1 and now["healthy"]:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the embedded llama.cpp server was not restarted")
    completion = embedded.client().chat.completions.create(model=MODEL, messages=MESSAGES, **GREEDY)
    assert completion.choices[0].message.content
