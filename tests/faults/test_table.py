"""One test per fault a hostile client or a misbehaving provider showed (each reproduced before the fix).

Each asserts the request gets a proper answer (an OpenAI error object with the right status, or a
success), and through the `check` fixture: the gateway is alive, the next request is served, no key leaked
into any response, log row or the server's output. Each request has exactly one log row, with the status
the client got.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.faults.conftest import GATEWAY_KEY, UPSTREAM_KEY, GatewayProcess
from tests.support.fake_upstream import REPO_ROOT

ASK = [{"role": "user", "content": "a b c"}]
TRANSPORTS = ["", "-litellm"]


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"}
    return error


def stream_error(events: list[str]) -> dict:
    """The error event a stream ended with (and it did not end with [DONE])."""
    assert events and events[-1] != "[DONE]", events[-3:]
    return json.loads(events[-1])["error"]


def request_id_of(response: httpx.Response) -> str:
    return response.headers["x-request-id"]


def request_head(host: str, body: bytes) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {GATEWAY_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()


def register(db, model_id: str, template_id: str, gguf) -> None:
    from internalizer import registry

    registry.register(
        db, model_id=model_id, template_id=template_id, gguf_path=gguf, sha256="", quant="q", base_model="b",
        config={}, stage_losses=[], eval_scores={}, n_train_requests=1,
    )  # fmt: skip


# ---- the writer-killers: after them every later request used to hang ------------------------------------


def test_a_lone_surrogate_as_model_is_a_400_and_the_log_keeps_working(gateway: GatewayProcess, check):
    raw = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
    response = gateway.post(raw)
    check.append(response)
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_unicode"
    row = gateway.one_row(response)
    assert row["status"] == 400 and row["model"] == "\ufffd" and "invalid_unicode" in row["sanitized"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "model", ["usage-huge", "usage-sum", "usage-float", "usage-cached", "usage-negative"]
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_insane_usage_is_dropped_not_fatal(gateway: GatewayProcess, check, model, transport, stream):
    body = {"model": model + transport, "messages": ASK}
    if stream:
        response, events = gateway.stream({**body, "stream_options": {"include_usage": True}})
        if transport and events[-1] != "[DONE]":  # litellm itself refuses some (a float count)
            check.append(response)
            assert "Traceback" not in stream_error(events)["message"]
            assert gateway.one_row(response)["status"] == 502
            return
        assert events[-1] == "[DONE]"
        usage = [json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage")]
        usage = usage[-1] if usage else {}
    else:
        response = gateway.post(body)
        if transport and response.status_code == 502:  # litellm itself refuses some (a float count)
            check.append(response)
            assert "Traceback" not in error_of(response)["message"]
            assert gateway.one_row(response)["status"] == 502
            return
        assert response.status_code == 200, response.text
        usage = response.json().get("usage") or {}
    check.append(response)
    assert response.status_code == 200
    for value in [*usage.values(), *(usage.get("prompt_tokens_details") or {}).values()]:
        assert not isinstance(value, int | float) or 0 <= value < 2**53  # the client never sees them
    row = gateway.one_row(response)
    assert row["status"] == 200 and "usage" in (row["sanitized"] or "")
    for column in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_prompt_tokens"):
        assert row[column] is None or 0 <= row[column] < 2**53
    metrics = httpx.get(f"{gateway.root}/metrics", headers=gateway.headers).text
    assert "promptintern_upstream_fields_dropped_total" in metrics


# ---- the table ---------------------------------------------------------------------------------------------


def test_a_route_switched_off_stays_off_when_nightly_activates_a_model(tmp_path):
    from gateway.log.store import open_db
    from gateway.routing.routes_store import get_route, route_off, set_route
    from internalizer import registry

    db = open_db(tmp_path / "logs.db")
    db["templates"].insert({"id": "tpl-1", "name": "t"})
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for model_id in ("m-old", "m-new", "m-newer"):
        register(db, model_id, "tpl-1", gguf)
    registry.activate(db, "m-old")
    route_off(db, "tpl-1")  # the operator's kill switch
    registry.activate(db, "m-new")  # what nightly does with a model that passed the gate
    route = get_route(db, "tpl-1")
    assert (route.model_id, route.mode) == ("m-new", "off")
    set_route(db, "tpl-1", mode="shadow", canary_percent=10)
    registry.activate(db, "m-newer")
    route = get_route(db, "tpl-1")
    assert (route.model_id, route.mode, route.canary_percent) == ("m-newer", "shadow", 10)
    registry.activate(db, "m-new", by_operator=True)  # `models activate` by a person
    assert get_route(db, "tpl-1").mode == "active"
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "routes", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    ).stdout
    assert "off stays" in " ".join(help_text.split())


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_upstream_echoing_its_key_in_a_200_never_reaches_the_client(gateway, check, transport, stream):
    body = {"model": "echo-key" + transport, "messages": ASK}
    if stream:
        response, events = gateway.stream(body)
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                       if json.loads(e).get("choices"))  # fmt: skip
        check.append("\n".join(events))
    else:
        response = gateway.post(body)
        text = response.json()["choices"][0]["message"]["content"]
    check.append(response)
    assert response.status_code == 200 and text == "my key is ***"
    row = gateway.one_row(response)
    assert row["status"] == 200 and UPSTREAM_KEY not in (row["response"] or "")


def test_prefix_lookups_take_percent_and_underscore_literally(tmp_path):
    from gateway.log.store import open_db
    from gateway.routing.routes_store import RouteError, resolve_template_id
    from internalizer import registry

    db = open_db(tmp_path / "logs.db")
    db["templates"].insert_all([{"id": "a8ec01"}, {"id": "b8ec02"}])
    with pytest.raises(RouteError, match="no template"):
        resolve_template_id(db, "%8ec")
    with pytest.raises(RouteError, match="ambiguous"):
        resolve_template_id(db, "")
    assert resolve_template_id(db, "a8") == "a8ec01"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for model_id in ("m-ab2", "m-cb2"):
        register(db, model_id, "a8ec01", gguf)
    with pytest.raises(registry.RegistryError, match="no model"):
        registry.retire(db, "%b2")
    with pytest.raises(registry.RegistryError, match="no model"):
        registry.retire(db, "m_")
    with pytest.raises(registry.RegistryError, match="ambiguous"):
        registry.retire(db, "m-")
    assert {r["status"] for r in db["models"].rows} == {"candidate"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_content_that_is_not_a_string_is_a_502(gateway, check, transport):
    response = gateway.post({"model": "content-list" + transport, "messages": ASK})
    check.append(response)
    assert response.status_code == 502, response.text
    error = error_of(response)
    assert "Traceback" not in error["message"] and "/site-packages/" not in error["message"]
    assert gateway.one_row(response)["status"] == 502


def test_a_stream_delta_whose_content_is_an_int_ends_with_an_error_event(gateway, check):
    response, events = gateway.stream({"model": "content-list", "messages": ASK})
    check.append(response)
    assert response.status_code == 200  # the stream had started
    assert stream_error(events)["code"] == "upstream_bad_response"
    assert gateway.one_row(response)["status"] == 502


def test_a_stream_delta_int_through_litellm_is_a_proper_answer(gateway, check):
    response, events = gateway.stream({"model": "content-list-litellm", "messages": ASK})
    check.append(response)
    row = gateway.one_row(response)
    if events[-1] == "[DONE]":  # litellm turned it into text
        assert row["status"] == 200
    else:
        assert row["status"] == stream_error(events).get("status", row["status"]) >= 500


def test_a_lone_surrogate_in_messages_is_a_400_before_any_upstream_call(gateway, check, upstream):
    before = len(upstream.received)
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "bad \\udc80 text"}]}'
    response = gateway.post(raw)
    check.append(response)
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_unicode"
    assert len(upstream.received) == before
    row = gateway.one_row(response)
    assert row["status"] == 400 and "\ufffd" in row["messages"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_200_carrying_error_is_an_upstream_error(gateway, check, transport, stream):
    body = {"model": "error-200" + transport, "messages": ASK}
    if stream:
        response, events = gateway.stream(body)
        status = response.status_code
        if status == 200:
            assert stream_error(events)
    else:
        response = gateway.post(body)
        status = response.status_code
        assert status == 502 and error_of(response)["code"] == "upstream_error"
    check.append(response)
    assert gateway.one_row(response)["status"] == 502


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_cut_without_finish_or_done_is_reported_truncated(gateway, check, transport):
    response, events = gateway.stream({"model": "truncate" + transport, "messages": ASK})
    check.append(response)
    assert "[DONE]" not in events  # the gateway adds none
    assert stream_error(events)["code"] == "upstream_truncated"
    row = gateway.one_row(response)
    assert row["status"] == 502 and "truncated" in row["error"] and row["finish_reason"] is None


def test_litellm_error_text_reaches_the_client_without_traceback_or_paths(gateway, check):
    response = gateway.post({"model": "traceback-litellm", "messages": ASK})
    check.append(response)
    assert response.status_code == 502
    message = error_of(response)["message"]
    for leak in ("Traceback", 'File "', "/srv/", "site-packages", "sk-provider-internal"):
        assert leak not in message, message
    assert gateway.one_row(response)["status"] == 502


def test_deeply_nested_json_is_a_400(gateway, check):
    deep = b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "metadata": ' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}"
    shallow_but_too_deep = {"model": "echo", "messages": ASK, "metadata": json.loads("[" * 100 + "]" * 100)}
    for body in (deep, shallow_but_too_deep):
        response = gateway.post(body)
        check.append(response)
        assert response.status_code == 400 and "nested too deeply" in error_of(response)["message"]
        assert gateway.one_row(response)["status"] == 400


def test_100k_tiny_messages_do_not_block_other_clients(gateway, check):
    messages = [{"role": "user", "content": "x"}] * 100_000
    body = json.dumps({"model": "echo", "messages": messages}).encode()
    gaps: list[float] = []
    done = threading.Event()

    def ping() -> None:
        with httpx.Client(headers=gateway.headers, timeout=10) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{gateway.url}/models")
                gaps.append(time.perf_counter() - started)
                time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    time.sleep(0.2)
    try:
        response = gateway.post(body)
    finally:
        time.sleep(0.1)
        done.set()
        pinger.join()
    check.append(response)
    assert response.status_code == 400 and error_of(response)["code"] == "too_many_messages"
    assert gateway.one_row(response)["status"] == 400
    # Before: the event loop froze ~1 s parsing, validating and logging it; now that runs in worker threads
    # (~0.1 s gaps here when the machine is quiet). The bound is loose: this machine is shared and loaded.
    print(f"longest concurrent request: {max(gaps):.3f} s")
    assert max(gaps) < 1.0, f"a concurrent request waited {max(gaps):.2f} s"


def test_a_body_trickled_a_byte_a_second_gets_a_408(gateway, check):
    host, port = gateway.root.removeprefix("http://").split(":")
    body = json.dumps({"model": "echo", "messages": ASK}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_head(host, body))
        started = time.monotonic()
        answer = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.5)
            try:
                answer += sock.recv(65536)
                if b"\r\n\r\n" in answer:
                    break
            except TimeoutError:
                pass
            if time.monotonic() - started > 10:
                break
    check.append(answer.decode(errors="replace"))
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    rows = gateway.rows(request_id)
    assert len(rows) == 1 and rows[0]["status"] == 408


def test_a_stream_client_that_never_reads_is_dropped_and_the_upstream_closed(gateway, check, upstream):
    host, port = gateway.root.removeprefix("http://").split(":")
    model = "flood-60000000"  # more than every socket buffer on the way can hold
    body = json.dumps({"model": model, "messages": ASK, "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the server blocks soon
    sock.connect((host, int(port)))
    floods_before = len(upstream.floods)
    sock.sendall(request_head(host, body) + body)
    try:  # the socket stays open, unread: the gateway must give up on it by itself
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not [r for r in gateway.rows() if r["model"] == model]:
            time.sleep(0.1)
        rows = [r for r in gateway.rows() if r["model"] == model]
        assert len(rows) == 1 and rows[0]["status"] == 499
        assert len(rows[0]["response"] or "") < 16_000_000  # it stopped relaying long before the end
        flood = upstream.floods[floods_before]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not flood["reader_hung_up"]:
            time.sleep(0.1)
        assert flood["reader_hung_up"] and flood["sent"] < 60_000_000 // 65536, flood  # upstream closed
    finally:
        sock.close()


def test_another_process_holding_the_write_lock_gets_503s_then_every_row_lands(gateway, check):
    blocker = sqlite3.connect(gateway.home / "logs.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        response = gateway.post({"model": "echo", "messages": ASK})
        waited = time.monotonic() - started
        health = httpx.get(f"{gateway.root}/health", headers=gateway.headers, timeout=10)
        anonymous = httpx.get(f"{gateway.root}/health", timeout=10)  # liveness without details
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    check.append(response)
    assert response.status_code == 503 and error_of(response)["code"] == "log_unavailable"
    assert waited < 10
    assert health.status_code == 503 and health.json()["log"]["writable"] is False
    assert anonymous.status_code == 503 and anonymous.json() == {"status": "log_unavailable"}
    deadline = time.monotonic() + 15  # the row was kept and is written once the lock is gone
    while time.monotonic() < deadline and not gateway.rows(request_id_of(response)):
        time.sleep(0.1)
    row = gateway.one_row(response)
    assert row["status"] == 503  # the status the client got
    assert httpx.get(f"{gateway.root}/health", timeout=10).status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_an_answer_over_the_size_limit_is_a_502_not_a_huge_row(gateway, check, transport, stream):
    body = {"model": "huge-20000000" + transport, "messages": ASK}
    if stream:
        response, events = gateway.stream(body, timeout=60)
        assert stream_error(events)["code"] == "upstream_too_large"
        status = 502
    else:
        response = gateway.post(body, timeout=60)
        status = response.status_code
        assert error_of(response)["code"] == "upstream_too_large"
    check.append(response)
    assert status == 502
    row = gateway.one_row(response)
    assert row["status"] == 502 and len(row["response"] or "") <= 16 * 1024 * 1024


def test_import_of_a_huge_integer_is_one_clear_line(tmp_path):
    line = {"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": "yo"}}],
                         "usage": {"prompt_tokens": 10**30, "completion_tokens": 1}}}  # fmt: skip
    for i, text in enumerate([json.dumps(line), '{"messages": [], "x": 1' + "0" * 5000 + "}"]):
        path = tmp_path / f"traffic-{i}.jsonl"
        path.write_text(text + "\n")
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "import", str(path)], capture_output=True, text=True,
            cwd=REPO_ROOT, env={**__import__("os").environ, "PROMPTINTERN_HOME": str(tmp_path / "home")},
        )  # fmt: skip
        assert result.returncode == 1
        errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "Traceback" not in result.stderr and "line 1" in errors[0]


def test_a_key_id_in_the_log_is_keyed_by_the_install_secret(gateway, check):
    import hashlib

    response = gateway.post({"model": "echo", "messages": ASK})
    check.append(response)
    key_id = gateway.one_row(response)["api_key_id"]
    assert (
        key_id.startswith("key-") and key_id != "key-" + hashlib.sha256(GATEWAY_KEY.encode()).hexdigest()[:16]
    )
    assert (gateway.home / "install-secret").stat().st_mode & 0o777 == 0o600
