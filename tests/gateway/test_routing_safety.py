"""Routing never costs the client an error: fallbacks, a killed backend, a broken model, a model swap.

Each test runs its own gateway (real uvicorn, official openai client, fake provider upstream, llama.cpp
on the SmolLM2 GGUF as the internalized model) with the settings that provoke the failure.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gateway.upstream.base_model import smollm2_gguf_path
from internalizer.registry import activate
from tests.gateway.routing_helpers import (
    CLIENT_MODEL,
    Traffic,
    add_model,
    body,
    copy_gguf,
    is_echo_of,
    nl2bash_traffic,
    route,
    routed_gateway,
    wait_for,
    with_db,
)


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return nl2bash_traffic()


def _send(gw, traffic: Traffic, query: str, stream: bool) -> tuple[str, str, str]:
    """(route header, request id, answer text) of one request through the official client."""
    client = gw.client(timeout=60)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            **body(traffic, query), stream=True
        ) as raw:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            return raw.headers["x-promptintern-route"], raw.headers["x-request-id"], text
    raw = client.chat.completions.with_raw_response.create(**body(traffic, query))
    return (
        raw.headers["x-promptintern-route"],
        raw.headers["x-request-id"],
        raw.parse().choices[0].message.content,
    )


def test_a_local_timeout_falls_back_upstream_with_the_original_request(tmp_path, fake_upstream, traffic):
    gw, template_id = routed_gateway(tmp_path, fake_upstream.url, traffic, local_timeout_s=0.001)
    try:
        for stream in (False, True):
            query = traffic.queries[20 + stream]
            header, request_id, text = _send(gw, traffic, query, stream)
            assert header == "fallback"
            assert is_echo_of(text, query)  # the fake provider answered the full request
            row = gw.row(request_id)
            assert (row["route"], row["status"], row["template_id"]) == ("fallback", 200, template_id)
            assert row["error"].startswith("fallback: LocalTimeout")
            assert row["prompt_tokens"] > 300  # the original full prompt went upstream
            cached = row["cached_prompt_tokens"] or 0  # the fake provider reports a cache hit
            upstream_dollars = (
                (row["prompt_tokens"] - cached) * 1.5e-7 + cached * 0.75e-7 + row["completion_tokens"] * 6e-7
            )
            assert row["local_compute_s"] > 0
            assert row["spend"] == pytest.approx(upstream_dollars + row["local_compute_s"] * 0.10 / 3600)
            assert row["counterfactual_prompt_tokens"] == row["prompt_tokens"]
    finally:
        gw.stop()


def test_a_full_local_queue_falls_back_with_zero_client_errors(tmp_path, fake_upstream, traffic):
    gw, _ = routed_gateway(tmp_path, fake_upstream.url, traffic, local_queue_size=0)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(lambda i: _send(gw, traffic, traffic.queries[30 + i], i % 2 == 1), range(8))
            )
        routes = [header for header, _, _ in results]
        assert all(text for _, _, text in results)
        assert set(routes) <= {"local", "fallback"} and "fallback" in routes and "local" in routes
        fallbacks = gw.rows("route = 'fallback'")
        assert len(fallbacks) == routes.count("fallback")
        assert all(r["status"] == 200 and "LocalOverloaded" in r["error"] for r in fallbacks)
    finally:
        gw.stop()


@pytest.mark.parametrize(
    "content",
    [b"not a model" * 1000, b"GGUF" + bytes(range(256)) * 64],
    ids=["not-gguf", "crashes-llama-cpp"],
)
def test_a_model_that_cannot_load_stays_upstream(tmp_path, fake_upstream, traffic, content):
    # The second file has GGUF's magic: llama.cpp tries it and dies, in its child process, not the gateway.
    gw, template_id = routed_gateway(tmp_path, fake_upstream.url, traffic)
    try:
        garbage = tmp_path / "broken.gguf"
        garbage.write_bytes(content)
        add_model(gw.settings.db_path, template_id, "m-broken", garbage)
        route(gw.settings.db_path, template_id, model_id="m-broken")
        # The next request already goes upstream (route changed); once reloaded, it stays upstream.
        for i in range(4):
            header, request_id, text = _send(gw, traffic, traffic.queries[40 + i], False)
            assert header == "upstream" and is_echo_of(text, traffic.queries[40 + i])
            time.sleep(0.3)
        assert "m-broken" not in [m.id for m in gw.client().models.list().data]
    finally:
        gw.stop()


def test_a_newly_activated_model_takes_over_under_traffic_with_zero_failures(
    tmp_path, fake_upstream, traffic
):
    gw, template_id = routed_gateway(tmp_path, fake_upstream.url, traffic)
    try:
        new_gguf = copy_gguf(tmp_path / "models", "new.gguf")
        add_model(gw.settings.db_path, template_id, "m-new", new_gguf, status="candidate")
        with ThreadPoolExecutor(4) as pool:
            sent = [
                pool.submit(_send, gw, traffic, traffic.queries[50 + i % 40], i % 3 == 0) for i in range(6)
            ]
            with_db(gw.settings.db_path, lambda db: activate(db, "m-new"))
            sent += [
                pool.submit(_send, gw, traffic, traffic.queries[50 + i % 40], i % 3 == 0)
                for i in range(6, 24)
            ]
            results = [future.result() for future in sent]
        assert all(header in ("local", "upstream") and text for header, _, text in results)
        wait_for(lambda: _send(gw, traffic, traffic.queries[49], False)[0] == "local", what="the new model")
        served = {r["model_served"] for r in gw.rows("route = 'local'")}
        assert "local/m-new" in served
        assert gw.rows("status != 200") == []
    finally:
        gw.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_killing_the_local_backend_during_traffic_causes_no_client_errors(tmp_path, fake_upstream, traffic):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf_path()),
         "--model_alias", "m-internal", "--host", "127.0.0.1", "--port", str(port), "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        api_base = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _up(api_base), timeout_s=60, what="the llama.cpp server")
        gw, _ = routed_gateway(
            tmp_path, fake_upstream.url, traffic, local_backend="remote", local_api_base=api_base
        )
        try:
            assert _send(gw, traffic, traffic.queries[60], False)[0] == "local"
            with ThreadPoolExecutor(4) as pool:
                sent = [
                    pool.submit(_send, gw, traffic, traffic.queries[61 + i], i % 2 == 0) for i in range(4)
                ]
                server.kill()
                server.wait()
                sent += [
                    pool.submit(_send, gw, traffic, traffic.queries[65 + i], i % 2 == 0) for i in range(8)
                ]
                results = [future.result() for future in sent]
            assert all(text for _, _, text in results)
            after_kill = [header for header, _, _ in results[4:]]
            assert set(after_kill) == {"fallback"}
            assert gw.rows("status != 200") == []
        finally:
            gw.stop()
    finally:
        server.kill()
        server.wait()


def _up(api_base: str) -> bool:
    try:
        return httpx.get(f"{api_base}/models", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_client_model_name_is_kept_on_fallback_rows(tmp_path, fake_upstream, traffic):
    gw, _ = routed_gateway(tmp_path, fake_upstream.url, traffic, local_timeout_s=0.001)
    try:
        header, request_id, _ = _send(gw, traffic, traffic.queries[80], False)
        row = gw.row(request_id)
        assert header == "fallback" and row["model"] == CLIENT_MODEL and row["model_served"] == "openai/echo"
    finally:
        gw.stop()
