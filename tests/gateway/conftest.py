"""Fixtures for the gateway server tests: real servers on 127.0.0.1 (uvicorn in a thread), a fake provider
that speaks the OpenAI protocol over HTTP, and helpers to read the request log."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.loopback import bind_free_socket, serve_in_thread
from gateway.settings import Settings, UpstreamModel
from tests.support.fake_upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


@dataclass
class RunningGateway:
    url: str  # ends in /v1
    settings: Settings
    stop: Callable[[], None]

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def client(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=api_key, max_retries=0, **kwargs)

    def rows(self, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
        return read_rows(self.settings.db_path, where, params)

    def row(self, request_id: str) -> dict[str, Any]:
        rows = self.rows("request_id = ?", (request_id,))
        assert len(rows) == 1, f"expected one log row for {request_id}, found {len(rows)}"
        return rows[0]

    def post(self, body: bytes | dict, **kwargs: Any) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.post(f"{self.url}/chat/completions", json=body, timeout=30, **kwargs)
        return httpx.post(f"{self.url}/chat/completions", content=body, timeout=30, **kwargs)


def read_rows(db_path: Path, where: str = "1", params: tuple = ()) -> list[dict[str, Any]]:
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        cursor = conn.execute(f"SELECT * FROM requests WHERE {where} ORDER BY startTime", params)
        return [dict(row) for row in cursor]


def start_gateway(settings: Settings) -> RunningGateway:
    server, thread, port = serve_in_thread(create_app(settings), timeout_s=180)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return RunningGateway(f"http://127.0.0.1:{port}/v1", settings, stop)


def closed_port_url() -> str:
    """An address where nothing listens (bound then released), for connection-refused tests."""
    sock = bind_free_socket()
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def fake_models(upstream_url: str) -> list[UpstreamModel]:
    """One client-facing model per fake behaviour, on both transports (`<name>` direct, `<name>-litellm`)."""
    behaviours = {
        "echo": "echo",
        "boom": "error-500",
        "busy": "error-429",
        "hang": "hang",
        "broken-stream": "midstream-error",
        "leaky": "leak-key",
        "dripping": "drip-100",
        "rejects": "error-422",
        "gone": "error-404",
        "patient": "ratelimit-0.3",
        "impatient": "ratelimit-60",
        "pathy": "leak-path",
    }
    models = []
    for name, upstream_name in behaviours.items():
        for transport, suffix in (("direct", ""), ("litellm", "-litellm")):
            models.append(
                UpstreamModel(
                    name=name + suffix,
                    litellm_model=f"openai/{upstream_name}",
                    api_base=upstream_url,
                    api_key=UPSTREAM_KEY,
                    transport=transport,
                )
            )
    for transport, suffix in (("direct", ""), ("litellm", "-litellm")):
        models.append(
            UpstreamModel(name="refused" + suffix, litellm_model="openai/echo", api_base=closed_port_url(),
                          api_key=UPSTREAM_KEY, transport=transport)
        )  # fmt: skip
    return models


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-home")


@pytest.fixture(scope="module")
def gateway(fake_upstream: FakeUpstream, gateway_home: Path) -> Iterator[RunningGateway]:
    """A gateway (no auth) in front of the fake provider, shared by a test module."""
    assert fake_upstream.url is not None
    settings = Settings(
        home=gateway_home,
        models=fake_models(fake_upstream.url),
        upstream_timeout_s=1.0,
        upstream_retries=2,
        retry_backoff_s=0.01,
        max_body_bytes=64 * 1024,
        prices={
            "echo": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_read_ratio": 0.1}
        },
    )
    running = start_gateway(settings)
    yield running
    running.stop()
