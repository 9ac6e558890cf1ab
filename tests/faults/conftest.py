"""A real gateway process (`promptintern serve` under uvicorn on 127.0.0.1) in front of a real misbehaving
upstream on loopback (tests/support/fake_upstream.py), with small limits so each fault shows in seconds.

Every configured behaviour exists on both transports: `<name>` (the direct pass-through) and
`<name>-litellm`. The gateway has an API key and the upstream a provider key: neither may ever appear in a
response, a log row or the server's output (`assert_no_key_leaked`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.loopback import bind_free_socket
from tests.support.fake_upstream import REPO_ROOT, FakeUpstream

GATEWAY_KEY = "gw-fault-key-7c1e29d4b0"
UPSTREAM_KEY = "sk-upstream-fault-secret-0123456789abcdef"
KEYS = (GATEWAY_KEY, UPSTREAM_KEY)
BEHAVIOURS = [
    "echo", "echo-key", "usage-huge", "usage-sum", "usage-float", "usage-cached", "usage-negative",
    "content-list", "error-200", "truncate", "traceback", "not-json", "hang", "huge-20000000",
    "flood-60000000", "scripted",
]  # fmt: skip
LIMITS = {
    "body_read_timeout_s": 1.5,
    "stream_write_timeout_s": 1.5,
    "max_upstream_response_bytes": 16 * 1024 * 1024,
    "max_body_bytes": 8 * 1024 * 1024,
    "log_commit_timeout_s": 1.5,
    "log_busy_timeout_ms": 300,
    "shutdown_timeout_s": 2.0,
    "upstream_timeout_s": 5.0,
    "upstream_retries": 0,
}


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    root: str  # http://127.0.0.1:PORT
    home: Path
    output: Path  # the server's stdout + stderr

    @property
    def url(self) -> str:
        return self.root + "/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {GATEWAY_KEY}"}

    def post(self, body: dict | bytes, timeout: float = 30, **kwargs: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {**self.headers, "content-type": "application/json", **kwargs.pop("headers", {})}
        return httpx.post(f"{self.url}/chat/completions", content=content, headers=headers, timeout=timeout)

    def stream(self, body: dict, timeout: float = 30) -> tuple[httpx.Response, list[str]]:
        """POST a streaming request; the response and its SSE `data:` payloads, in order."""
        content = json.dumps({**body, "stream": True}).encode()  # json.dumps: Infinity is fair game too
        headers = {**self.headers, "content-type": "application/json"}
        with httpx.stream(
            "POST", f"{self.url}/chat/completions", content=content, headers=headers, timeout=timeout
        ) as response:
            response.read()
        lines = response.text.split("\n")  # SSE lines end at LF only (str.splitlines also splits at U+2028)
        events = [line[5:].strip() for line in lines if line.startswith("data:")]
        return response, events

    def rows(self, request_id: str | None = None) -> list[dict[str, Any]]:
        with sqlite3.connect(self.home / "logs.db") as conn:
            conn.row_factory = sqlite3.Row
            if request_id is None:
                return [dict(r) for r in conn.execute("select * from requests order by startTime")]
            cursor = conn.execute("select * from requests where request_id = ?", [request_id])
            return [dict(r) for r in cursor]

    def one_row(self, response: httpx.Response) -> dict[str, Any]:
        rows = self.rows(response.headers["x-request-id"])
        assert len(rows) == 1, f"expected exactly one log row, found {len(rows)}"
        return rows[0]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit (killed after 30)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return time.monotonic() - started


def start_gateway_process(
    home: Path, upstream_url: str, behaviours: list[str] = BEHAVIOURS, litellm: bool = True, **settings: Any
) -> GatewayProcess:
    transports = (("direct", ""), ("litellm", "-litellm")) if litellm else (("direct", ""),)
    models = [
        {"name": name + suffix, "litellm_model": f"openai/{name}", "api_base": upstream_url,
         "api_key": UPSTREAM_KEY, "transport": transport}
        for name in behaviours
        for transport, suffix in transports
    ]  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text(json.dumps({"models": models, "api_keys": [GATEWAY_KEY], **LIMITS, **settings}))
    with bind_free_socket() as sock:
        port = sock.getsockname()[1]
    env = {**os.environ, "PROMPTINTERN_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    output = home / "server-output.txt"
    command = [sys.executable, "-m", "gateway.cli", "--config", str(config), "serve", "--port", str(port),
               "--log-level", "info"]  # fmt: skip
    with output.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {output.read_text()[-2000:]}")
        try:
            httpx.get(f"{root}/health", timeout=2)
            return GatewayProcess(process, root, home, output)
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gateway did not start")


def assert_no_key_leaked(gateway: GatewayProcess, *responses: httpx.Response | str) -> None:
    texts = [r if isinstance(r, str) else r.text for r in responses]
    texts.append(json.dumps(gateway.rows(), default=str))
    texts.append(gateway.output.read_text(errors="replace"))
    for key in KEYS:
        for text in texts:
            assert key not in text, f"a key leaked: ...{text[max(0, text.find(key) - 80) : text.find(key)]}"


def assert_next_request_served(gateway: GatewayProcess) -> None:
    response = gateway.post({"model": "echo", "messages": [{"role": "user", "content": "still there?"}]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: still there?"
    assert gateway.one_row(response)["status"] == 200


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    assert upstream.url is not None
    running = start_gateway_process(tmp_path_factory.mktemp("faults") / "home", upstream.url)
    yield running
    took = running.stop()  # SIGTERM after all the faults: still a prompt, graceful stop
    assert took < 8 and "Application shutdown complete" in running.output.read_text()


@pytest.fixture
def check(gateway: GatewayProcess) -> Iterator[list]:
    """Collects a test's responses; afterwards: the gateway is alive, serves the next one, leaks no key."""
    responses: list = []
    yield responses
    assert gateway.alive(), gateway.output.read_text()[-3000:]
    assert_next_request_served(gateway)
    assert_no_key_leaked(gateway, *responses)
