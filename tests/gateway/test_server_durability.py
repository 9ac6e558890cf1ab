"""The log survives `kill -9` of the gateway mid-traffic: every request whose response completed is in it,
whole, and the database is intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from gateway.loopback import bind_free_socket
from tests.gateway.conftest import read_rows
from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def slow_upstream():
    fake = FakeUpstream(latency_s=0.02)
    fake.start()
    yield fake
    fake.stop()


def start_gateway_process(tmp_path, upstream_url: str) -> tuple[subprocess.Popen, str]:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"models": [
        {"name": "echo", "litellm_model": "openai/echo", "api_base": upstream_url, "transport": "direct"},
    ]}))  # fmt: skip
    with bind_free_socket() as sock:
        port = sock.getsockname()[1]
    env = {**os.environ, "PROMPTINTERN_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                return process, f"{root}/v1"
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("gateway did not start")


def test_log_survives_kill_9_mid_traffic(tmp_path, slow_upstream):
    process, url = start_gateway_process(tmp_path, slow_upstream.url)
    completed: dict[str, str] = {}  # request id -> answer, for every response that completed
    lock = threading.Lock()
    stop = threading.Event()

    def traffic(worker: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=10)
        i = 0
        while not stop.is_set():
            i += 1
            messages = [{"role": "user", "content": f"worker {worker} request {i}"}]
            try:
                if i % 2:
                    raw = client.chat.completions.with_raw_response.create(model="echo", messages=messages)
                    request_id, answer = raw.headers["x-request-id"], raw.parse().choices[0].message.content
                else:
                    with client.chat.completions.with_streaming_response.create(
                        model="echo", messages=messages, stream=True
                    ) as response:
                        request_id = response.headers["x-request-id"]
                        answer = "".join(
                            c.choices[0].delta.content or "" for c in response.parse() if c.choices
                        )
            except openai.APIError:
                return  # the gateway is gone
            with lock:
                completed[request_id] = answer

    workers = [threading.Thread(target=traffic, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120  # the machine may be busy: wait for traffic, not for a fixed time
    while len(completed) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)

    db_path = tmp_path / "home" / "logs.db"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = {row["request_id"]: row for row in read_rows(db_path)}
    assert len(completed) >= 30, "too little traffic before the kill to mean anything"
    missing = set(completed) - set(rows)
    assert not missing, f"{len(missing)} completed requests missing from the log"
    for request_id, answer in completed.items():
        row = rows[request_id]
        assert row["status"] == 200 and row["response"] == answer and row["prompt_tokens"] == 4
    for row in rows.values():  # whole rows only, in flight or not
        assert row["status"] is not None and row["endTime"] is not None and row["messages"]
