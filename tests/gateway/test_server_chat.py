"""The happy path through a real gateway: the official openai client (sync, async, streaming) in front,
the fake OpenAI-compatible provider behind, on both transports; every request checked against its log row."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.gateway.conftest import UPSTREAM_KEY

MODELS = ["echo", "echo-litellm"]  # the direct pass-through and the litellm path
MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "list the files in this folder"},
]


@pytest.mark.parametrize("model", MODELS)
def test_sync_completion_is_logged_with_the_usage_the_client_saw(gateway, model):
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: list the files in this folder"
    assert completion.usage is not None

    assert raw.headers["x-promptintern-route"] == "upstream"
    assert float(raw.headers["x-promptintern-overhead-ms"]) >= 0
    row = gateway.row(raw.headers["x-request-id"])
    assert row["status"] == 200 and row["error"] is None
    assert row["model"] == model and row["model_served"] == "openai/echo"
    assert row["route"] == "upstream" and row["source"] == "gateway" and row["stream"] == 0
    assert json.loads(row["messages"]) == MESSAGES
    assert json.loads(row["params"]) == {"max_tokens": 50}
    assert row["response"] == completion.choices[0].message.content
    assert row["finish_reason"] == "stop"
    assert row["prompt_tokens"] == completion.usage.prompt_tokens == 11
    assert row["completion_tokens"] == completion.usage.completion_tokens == 7
    assert row["total_tokens"] == completion.usage.total_tokens
    assert row["latency_ms"] > 0 and 0 <= row["overhead_ms"] <= row["latency_ms"]
    assert row["startTime"] < row["endTime"]
    assert row["api_base"] == gateway.settings.models[0].api_base
    assert len(row["content_hash"]) == 64


def test_spend_uses_the_price_override_and_cached_tokens(gateway):
    long_prompt = " ".join(f"w{i}" for i in range(100))  # the fake caches half of a prompt this long
    completion = gateway.client().chat.completions.create(
        model="echo", messages=[{"role": "user", "content": long_prompt}], max_tokens=3
    )
    row = gateway.rows("response = ?", (completion.choices[0].message.content,))[-1]
    assert row["cached_prompt_tokens"] == completion.usage.prompt_tokens_details.cached_tokens == 50
    # 50 uncached + 50 cached at 10% of 1e-6, 3 output tokens at 2e-6
    assert row["spend"] == pytest.approx(50e-6 + 50 * 1e-7 + 3 * 2e-6)
    assert row["finish_reason"] == "length"


@pytest.mark.parametrize("model", MODELS)
def test_stream_with_usage_matches_the_non_streamed_answer(gateway, model):
    client = gateway.client()
    plain = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0)
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, temperature=0, stream=True, stream_options={"include_usage": True}
    ) as response:
        request_id = response.headers["x-request-id"]
        assert response.headers["x-promptintern-route"] == "upstream"
        assert "x-promptintern-overhead-ms" in response.headers
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == plain.usage.total_tokens
    assert chunks[-1].choices == []  # as OpenAI sends it, on every transport

    row = gateway.row(request_id)
    assert row["stream"] == 1 and row["status"] == 200
    assert row["response"] == text and row["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["ttft_ms"] is not None and 0 < row["ttft_ms"] <= row["latency_ms"]


@pytest.mark.parametrize("model", MODELS)
def test_stream_without_include_usage_hides_usage_but_logs_tokens(gateway, model):
    with gateway.client().chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk the client did not ask for
    row = gateway.row(request_id)
    assert row["prompt_tokens"] == 11 and row["completion_tokens"] == 7


@pytest.mark.parametrize("model", MODELS)
def test_unknown_fields_pass_through_to_the_upstream(gateway, fake_upstream, model):
    gateway.client().chat.completions.create(
        model=model, messages=MESSAGES, seed=7, extra_body={"custom_flag": {"keep": True}, "top_k": 3}
    )
    forwarded = fake_upstream.received[-1]
    assert forwarded["custom_flag"] == {"keep": True} and forwarded["top_k"] == 3 and forwarded["seed"] == 7
    assert forwarded["model"] == "echo"  # the backend's own model name, not the client-facing one


def test_async_client_concurrent_requests_are_all_logged_and_grouped(gateway):
    async def run() -> list[str]:
        client = gateway.async_client()
        responses = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model="echo", messages=[{"role": "user", "content": f"concurrent {i}"}]
                )
                for i in range(40)
            )
        )
        await client.close()
        return [r.headers["x-request-id"] for r in responses]

    request_ids = asyncio.run(run())
    assert len(set(request_ids)) == 40
    rows = gateway.rows(f"request_id IN ({','.join('?' * 40)})", tuple(request_ids))
    assert len(rows) == 40
    assert sorted(r["response"] for r in rows) == sorted(f"echo: concurrent {i}" for i in range(40))


def test_models_health_and_metrics(gateway):
    models = gateway.client().models.list()
    assert {m.id for m in models.data} == {m.name for m in gateway.settings.models}

    health = httpx.get(f"{gateway.root}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["x-promptintern-route"] == "none"
    assert "x-promptintern-overhead-ms" in health.headers

    gateway.client().chat.completions.create(model="echo", messages=MESSAGES)
    metrics = httpx.get(f"{gateway.root}/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert 'promptintern_requests_total{model="echo",route="upstream",status="200"}' in text
    assert 'promptintern_tokens_total{kind="prompt",model="echo",route="upstream"}' in text
    for histogram in ("request_latency", "upstream_latency", "overhead"):
        assert f'promptintern_{histogram}_seconds_count{{model="echo",route="upstream"}}' in text
    assert "promptintern_requests_in_flight 0.0" in text


def test_provider_key_never_reaches_the_log(gateway):
    rows = gateway.rows()
    assert rows
    for row in rows:
        assert UPSTREAM_KEY not in json.dumps(row)


def test_a_client_cannot_redirect_the_provider_call(gateway, fake_upstream):
    closed = "http://127.0.0.1:9/v1"
    completion = gateway.client().chat.completions.create(
        model="echo-litellm",
        messages=MESSAGES,
        extra_body={"api_base": closed, "api_key": "sk-client-supplied"},
    )
    assert completion.choices[0].message.content == "echo: list the files in this folder"
    forwarded = fake_upstream.received[-1]  # the call still reached the configured upstream...
    assert forwarded["api_base"] == closed  # ...with the client's fields as plain, harmless data
