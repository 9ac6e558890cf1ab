"""Gateway API keys: a real gateway with two keys, the openai client with good, bad and missing keys."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest

from gateway.api.auth import Authenticator, install_secret, key_id
from gateway.api.errors import GatewayError
from gateway.settings import Settings
from tests.gateway.conftest import fake_models, start_gateway
from tests.support import chromium

KEYS = ["gw-key-alpha-123456", "gw-key-beta-654321"]
METRICS_KEY = "scraper-key-777777"
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def secured(fake_upstream, tmp_path_factory):
    settings = Settings(
        home=tmp_path_factory.mktemp("auth-home"),
        models=fake_models(fake_upstream.url),
        api_keys=",".join(KEYS),
        metrics_api_keys=METRICS_KEY,
    )
    running = start_gateway(settings)
    yield running
    running.stop()


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_works_and_only_its_hash_is_logged(secured, key):
    raw = secured.client(api_key=key).chat.completions.with_raw_response.create(
        model="echo", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content == "echo: hello"
    row = secured.row(raw.headers["x-request-id"])
    secret = install_secret(secured.settings.home)
    assert row["api_key_id"] == key_id(key, secret) and row["api_key_id"].startswith("key-")
    assert key not in json.dumps(row)
    # A plain hash of the key (what a guesser would try) is not its id.
    assert row["api_key_id"] != "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    secret_file = secured.settings.home / "install-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("bad_key", ["wrong-key", KEYS[0] + "x", KEYS[0][:-1], "GW-KEY-ALPHA-123456"])
def test_bad_keys_get_401_in_openai_format(secured, bad_key):
    with pytest.raises(openai.AuthenticationError) as caught:
        secured.client(api_key=bad_key).chat.completions.create(model="echo", messages=MESSAGES)
    response = caught.value.response
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "x-promptintern-overhead-ms" in response.headers
    row = secured.row(response.headers["x-request-id"])
    assert row["status"] == 401 and row["api_key_id"] is None
    assert row["messages"] is None  # an unauthenticated caller's prompt is not stored


def test_missing_header_and_other_schemes_get_401(secured):
    for headers in ({}, {"authorization": f"Basic {KEYS[0]}"}, {"authorization": "Bearer"}):
        response = secured.post({"model": "echo", "messages": MESSAGES}, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "invalid_request_error"


def test_models_listing_needs_a_key_but_health_does_not(secured):
    assert httpx.get(f"{secured.url}/models").status_code == 401
    assert secured.client(api_key=KEYS[1]).models.list().data
    assert httpx.get(f"{secured.root}/health").status_code == 200


def test_health_without_a_key_is_a_liveness_answer_that_reveals_nothing(secured):
    assert httpx.get(f"{secured.root}/health").json() == {"status": "ok"}
    assert httpx.get(f"{secured.root}/health", headers=bearer("wrong-key")).status_code == 401
    details = httpx.get(f"{secured.root}/health", headers=bearer(KEYS[0])).json()
    assert details["log"]["path"] == str(secured.settings.db_path) and "echo" in details["models"]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/report.json", "/metrics"])
def test_dashboard_report_and_metrics_need_a_key(secured, path):
    url = secured.root + path
    refused = httpx.get(url, timeout=60)
    assert refused.status_code == 401 and "template" not in refused.text
    assert httpx.get(url, headers=bearer("wrong-key"), timeout=60).status_code == 401
    assert httpx.get(url, headers=bearer(KEYS[1]), timeout=60).status_code == 200
    if path.startswith("/dashboard"):
        # A browser is asked for the key (HTTP Basic: any user name, the key as the password).
        assert refused.headers["www-authenticate"].startswith("Basic ")
        assert httpx.get(url, auth=("me", KEYS[0]), timeout=60).status_code == 200
        assert httpx.get(url, auth=("me", "wrong-key"), timeout=60).status_code == 401


def test_the_metrics_key_reads_metrics_and_nothing_else(secured):
    assert httpx.get(f"{secured.root}/metrics", headers=bearer(METRICS_KEY)).status_code == 200
    assert httpx.get(f"{secured.root}/dashboard/report.json", headers=bearer(METRICS_KEY)).status_code == 401
    assert (
        secured.post({"model": "echo", "messages": MESSAGES}, headers=bearer(METRICS_KEY)).status_code == 401
    )
    with pytest.raises(openai.AuthenticationError):
        secured.client(api_key=METRICS_KEY).models.list()


def test_a_browser_opens_the_dashboard_with_the_key(secured):
    """Chromium with the key as Basic-auth password in the address: the page renders its figures."""
    try:
        dom = chromium.dump_dom(
            secured.root.replace("http://", f"http://me:{KEYS[0]}@") + "/dashboard?since=all"
        )
    except chromium.ChromiumMissing as exc:
        pytest.skip(str(exc))
    assert 'data-figure="served"' in dom and 'id="headline"' in dom


def test_authenticator_without_keys_is_open():
    assert Authenticator([]).authenticate(None) is None
    with pytest.raises(GatewayError):
        Authenticator(Settings(api_keys="a-key-1234").api_keys).authenticate("Bearer other")


def test_serve_without_keys_refuses_a_public_host(tmp_path, fake_upstream):
    config = tmp_path / "config.yaml"
    model = {
        "name": "echo",
        "litellm_model": "openai/echo",
        "api_base": fake_upstream.url,
        "transport": "direct",
    }
    config.write_text(json.dumps({"models": [model]}))
    env = {
        "PROMPTINTERN_HOME": str(tmp_path / "home"),
        "PATH": "/usr/bin:/bin",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "--config",
            str(config),
            "serve",
            "--host",
            "0.0.0.0",
            "--port=0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            if "http://" in line:
                break
        output = "".join(lines)
        assert "refusing to listen on 0.0.0.0" in output and "binding 127.0.0.1 only" in output
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", output).group(1))
        assert port != 0  # the port actually bound (--port=0: any free one), printed once it listens
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=10)
