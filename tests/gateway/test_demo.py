"""`promptintern demo`: its steps against the fake provider (fast), and the whole loop on SmolLM2 (slow)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from demo.loop import demo_traffic, format_summary, log_summary, replay, running_gateway
from demo.nightly import write_gold_labels
from gateway.accounting.report import build_report
from gateway.log.store import open_db
from gateway.settings import Settings, UpstreamModel
from internalizer.dataset import load_labels
from tests.support.fake_upstream import reply_for

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


def test_gold_labels_are_read_by_the_job_keyed_by_request_id(tmp_path):
    traffic = demo_traffic(3, "fixed", "turns", seed=0)
    path = write_gold_labels(tmp_path / "labels.jsonl", ["req-a", "", "req-c"], traffic)
    # a request the gateway gave no id (a failed one) has no label; the others carry their gold command
    assert load_labels(path) == {"req-a": traffic[0].pair.cmd, "req-c": traffic[2].pair.cmd}


def test_demo_rejects_an_empty_replay(tmp_path):
    env = {**os.environ, "PROMPTINTERN_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--fresh", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: --requests and --fresh must be at least 1"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_quick_runs_the_whole_loop_offline(tmp_path):
    """replay -> mine -> internalize -> activate -> routed replay -> report, on the embedded SmolLM2.

    `--gate-threshold 0` makes the gate pass whatever a few training steps reach, so the routing half is
    always exercised; the demo's own default threshold is a real one.
    """
    env = {**os.environ, "PROMPTINTERN_HOME": str(tmp_path / "home")}
    env.pop("PROMPTINTERN_MODELS", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--quick", "--gate-threshold", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check_quick_loop(tmp_path / "home", done.stdout, done.stderr)


def check_quick_loop(home: Path, out: str, err: str) -> None:
    """What `demo --quick --gate-threshold 0` must leave in the log and print."""
    for step in (
        "== 1/4 replay",
        "== 2/4 nightly",
        "== 3/4 replay",
        "== 4/4 report",
        "replaying",
    ):
        assert step in err  # each step announced, a progress bar for replay
    assert re.search(r"stage (\d+)/\1\b", err), err[-3000:]  # and a bar per training stage, the last included

    db = open_db(home / "logs.db")
    rows = list(db.query("SELECT * FROM requests ORDER BY startTime"))
    assert len(rows) == 12 + 3 and all(r["status"] == 200 for r in rows)
    (template,) = list(db.query("SELECT * FROM templates"))
    assert db.execute("SELECT count(*) FROM request_templates").fetchone()[0] == 12
    (model,) = list(db.query("SELECT * FROM models"))
    assert model["template_id"] == template["id"] and model["status"] == "active"
    scores = json.loads(model["eval_scores"])
    assert {"internalized", "base_full_prompt", "base_query_only"} <= set(scores)

    first, fresh = rows[:12], rows[12:]
    assert {r["route"] for r in first} == {"upstream"}
    assert all(r["route"] == "local" and r["template_id"] == template["id"] for r in fresh)
    # routed requests carry the query only; the log keeps what the full prompt would have cost
    assert all(r["prompt_tokens"] * 5 < r["counterfactual_prompt_tokens"] for r in fresh)

    since = datetime.fromisoformat(fresh[0]["startTime"])
    report = build_report(db, since, local_cost_per_hour=Settings().local_cost_per_hour)
    (figures,) = [t for t in report["by_template"] if t["template_id"] == template["id"]]
    assert figures["requests"] == figures["routed"] == 3 and figures["fallbacks"] == 0
    assert figures["input_tokens_after"] == sum(r["prompt_tokens"] for r in fresh)
    assert figures["input_tokens_before"] == sum(r["counterfactual_prompt_tokens"] for r in fresh)
    assert f"{figures['input_tokens_before']:,} -> {figures['input_tokens_after']:,}" in out
    assert f"({figures['input_token_reduction_pct']:.1f}% fewer)" in out
    assert f"internalized, query only      chrF {scores['internalized']['chrf']:.3f}" in out
    assert f"base model, full prompt       chrF {scores['base_full_prompt']['chrf']:.3f}" in out
    assert "3 routed local, 0 fallbacks" in out
