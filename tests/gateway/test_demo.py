"""`promptintern demo`: its steps against the fake provider (fast), and the real thing on SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.demo import demo_traffic, format_summary, log_summary, replay, running_gateway
from gateway.fake_upstream import reply_for
from gateway.settings import Settings, UpstreamModel

ROOT = Path(__file__).resolve().parents[2]


def test_replay_logs_every_request_and_summary_reads_the_log(fake_upstream, tmp_path):
    settings = Settings(
        home=tmp_path / "home",
        models=[
            UpstreamModel(
                name="fake", litellm_model="openai/echo", api_base=fake_upstream.url, transport="direct"
            )
        ],
        prices={
            "fake": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "cache_read_ratio": 0.5}
        },
    )
    traffic = demo_traffic(4, "fixed", "turns", seed=0)
    with running_gateway(settings) as base_url:
        result = replay(base_url, "fake", traffic, max_tokens=16)
    assert result.errors == [] and len(result.request_ids) == 4 and all(result.request_ids)
    # the fake echoes the query: the answers prove each request carried its own query
    assert [answer for _, answer in result.answers] == [
        " ".join(["echo:", *r.pair.nl.split()][:16]) for r in traffic
    ]

    summary = log_summary(settings, result.request_ids)
    usages = [reply_for(r.body("echo", max_tokens=16))[2] for r in traffic]
    assert summary["requests"] == 4 and summary["errors"] == 0
    assert summary["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert summary["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert summary["cached_prompt_tokens"] == sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert summary["spend"] > 0 and summary["latency_ms_p50"] > 0
    assert summary["latency_ms_p95"] >= summary["latency_ms_p50"]

    text = format_summary(summary, result, settings)
    assert "requests logged     4 of 4 sent (0 errors)" in text
    assert f"query      {traffic[0].pair.nl}" in text


def test_summary_ignores_rows_of_other_runs(fake_upstream, tmp_path):
    settings = Settings(
        home=tmp_path / "home",
        models=[
            UpstreamModel(
                name="fake", litellm_model="openai/echo", api_base=fake_upstream.url, transport="direct"
            )
        ],
    )
    with running_gateway(settings) as base_url:
        first = replay(base_url, "fake", demo_traffic(2, "fixed", "turns", seed=0), max_tokens=8)
        second = replay(base_url, "fake", demo_traffic(3, "retrieved", "inline", seed=1), max_tokens=8)
    assert log_summary(settings, first.request_ids)["requests"] == 2
    assert log_summary(settings, second.request_ids)["requests"] == 3


@pytest.mark.slow
def test_make_demo_runs_offline_on_the_embedded_model(tmp_path):
    env = {**os.environ, "PROMPTINTERN_HOME": str(tmp_path / "home")}
    env.pop("PROMPTINTERN_MODELS", None)
    cli = [sys.executable, "-m", "gateway.cli"]
    done = subprocess.run(
        [*cli, "demo", "--requests", "3"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "requests logged     3 of 3 sent (0 errors)" in done.stdout
    assert "replaying" in done.stderr  # the progress bar

    usage = subprocess.run(
        [*cli, "logs", "--usage", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    totals = json.loads(usage.stdout)
    assert totals["requests"] == 3 and totals["errors"] == 0
    assert totals["prompt_tokens"] > 3 * 500  # the long NL2Bash app prompt, counted by llama.cpp
    assert totals["completion_tokens"] > 0 and totals["spend"] > 0  # local compute is priced
