"""Selective routing end to end: a local answer below its route's confidence threshold is escalated.

Real uvicorn gateway, the official openai client, the fake provider (it echoes the query) as upstream, the
SmolLM2 GGUF on llama.cpp as the calibrated "internalized" model. The client always gets one normal
answer: the local one when it is confident enough, else the upstream's for the original full request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.gateway.conftest import RunningGateway
from tests.gateway.routing_helpers import (
    PRICE,
    Traffic,
    body,
    is_echo_of,
    nl2bash_traffic,
    routed_gateway,
    upstream_saw,
    wait_for,
    with_db,
)
from tests.support.fake_upstream import FakeUpstream

MODEL_ID = "m-calibrated"
SERVE_ALL = -1e9  # a threshold every answer clears


def calibrate_route(
    gw: RunningGateway, template_id: str, threshold: float, target: float = 0.9, signal: str = "mean"
) -> None:
    """Give the model a calibration (mean token log-probability by default, exact match) and the route a
    threshold."""
    calibration = {"signal": signal, "metric": "exact", "target": target, "route_threshold": threshold,
                   "curve": [], "n": 0}  # fmt: skip

    def update(db):
        with db.conn:
            db.conn.execute(
                "update models set calibration = ? where id = ?", [json.dumps(calibration), MODEL_ID]
            )
            db.conn.execute(
                "update routes set threshold = ?, mode = 'active', note = null, updated_at = ? "
                "where template_id = ?",
                [threshold, datetime.now(UTC).isoformat(), template_id],
            )

    with_db(gw.settings.db_path, update)


def send(
    gw: RunningGateway, traffic: Traffic, query: str, stream: bool = False, **extra
) -> tuple[str, str, str]:
    """(route header, request id, the text the client got) through the official client."""
    client = gw.client(timeout=60)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            **body(traffic, query, **extra), stream=True
        ) as raw:
            chunks = list(raw.parse())
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
            assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role == "assistant") <= 1
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return raw.headers["x-promptintern-route"], raw.headers["x-request-id"], text
    raw = client.chat.completions.with_raw_response.create(**body(traffic, query, **extra))
    return (
        raw.headers["x-promptintern-route"],
        raw.headers["x-request-id"],
        raw.parse().choices[0].message.content,
    )


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return nl2bash_traffic()


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory, fake_upstream: FakeUpstream, traffic: Traffic
) -> Iterator[tuple[RunningGateway, str]]:
    # Streamed answers are scored when they fit in 3 tokens; a longer one streams on unchecked.
    running, template_id = routed_gateway(
        tmp_path_factory.mktemp("selective"), fake_upstream.url, traffic, MODEL_ID,
        local_confidence_stream_tokens=3, live_calibration_share=0.0,
    )  # fmt: skip
    yield running, template_id
    running.stop()


def _wait_for_route(gw, traffic, query: str, want: tuple[str, ...], **extra) -> None:
    """The route change reaches the gateway (the first request after a change goes upstream)."""
    wait_for(lambda: send(gw, traffic, query, **extra)[0] in want, what=f"route {want}")


def test_a_low_confidence_request_is_answered_upstream_with_the_full_prompt(routed, traffic, fake_upstream):
    gw, template_id = routed
    queries = traffic.queries[200:206]
    calibrate_route(gw, template_id, SERVE_ALL)
    _wait_for_route(gw, traffic, queries[0], ("local",), max_tokens=3)
    # Every answer is served and its confidence logged; then a threshold between the most and the least
    # confident answer splits them, request by request.
    scored = {}
    for query in queries:
        header, request_id, _ = send(gw, traffic, query, max_tokens=3)
        assert header == "local"
        scored[query] = gw.row(request_id)["local_confidence"]
    assert all(c is not None and c < 0 for c in scored.values())
    sure, unsure = max(scored, key=scored.get), min(scored, key=scored.get)
    # Far enough apart that llama.cpp's run-to-run jitter (~0.02: its prompt cache changes the batching)
    # cannot move either across the threshold.
    assert scored[sure] - scored[unsure] > 0.3, scored
    threshold = (scored[sure] + scored[unsure]) / 2
    calibrate_route(gw, template_id, threshold)
    _wait_for_route(gw, traffic, sure, ("local",), max_tokens=3)

    for stream in (False, True):
        header, request_id, text = send(gw, traffic, unsure, stream=stream, max_tokens=3)
        assert header == "escalated"
        assert is_echo_of(text, unsure)  # one normal answer: the upstream's
        row = gw.row(request_id)
        assert (row["route"], row["status"], row["stream"], row["template_id"]) == (
            "escalated", 200, int(stream), template_id,
        )  # fmt: skip
        assert row["response"] == text and row["model_served"] == "openai/echo"
        assert row["prompt_tokens"] > 300  # the original full prompt went upstream
        assert (
            row["local_confidence"] == pytest.approx(scored[unsure], abs=0.1)
            and row["local_confidence"] < threshold
        )
        # Honest accounting: the upstream bill plus the local compute the refused answer cost.
        cached = row["cached_prompt_tokens"] or 0
        upstream_dollars = (
            (row["prompt_tokens"] - cached) * PRICE["input_cost_per_token"]
            + cached * PRICE["input_cost_per_token"] * PRICE["cache_read_ratio"]
            + row["completion_tokens"] * PRICE["output_cost_per_token"]
        )
        assert row["local_compute_s"] > 0
        assert row["spend"] == pytest.approx(upstream_dollars + row["local_compute_s"] * 0.10 / 3600)
        # The refused local answer is kept beside the upstream's (free calibration data).
        row = wait_for(
            lambda rid=request_id: (r := gw.row(rid))["shadow_response"] is not None and r,
            what="the local answer",
        )
        assert row["shadow_response"].strip() and row["shadow_agreement"] == 0.0
    assert upstream_saw(fake_upstream.url, unsure)

    for stream in (False, True):
        header, request_id, text = send(gw, traffic, sure, stream=stream, max_tokens=3)
        row = gw.row(request_id)
        assert header == row["route"] == "local" and text.strip() and not is_echo_of(text, sure)
        assert row["local_confidence"] >= threshold

    report = httpx.get(f"{gw.root}/dashboard/report.json", timeout=30).json()
    [entry] = [t for t in report["by_template"] if t["template_id"] == template_id]
    assert entry["escalated"] == len(gw.rows("route = 'escalated'")) >= 2
    assert entry["coverage"] == pytest.approx(
        entry["routed"] / (entry["routed"] + entry["escalated"] + entry["fallbacks"])
    )
    [calibration] = [c for c in report["calibration"] if c["template_id"] == template_id]
    assert calibration["threshold"] == pytest.approx(threshold) and calibration["model"]["target"] == 0.9


def test_a_stream_longer_than_the_scoring_window_is_served_as_before(routed, traffic):
    gw, template_id = routed
    calibrate_route(gw, template_id, 0.0)  # no answer is that sure: every scored answer escalates
    query = traffic.queries[210]
    _wait_for_route(gw, traffic, query, ("escalated",), max_tokens=3)
    header, request_id, text = send(gw, traffic, query, stream=True, max_tokens=12)
    row = gw.row(request_id)
    assert header == row["route"] == "local" and text.strip() and row["completion_tokens"] > 3
    assert send(gw, traffic, query, stream=False, max_tokens=12)[0] == "escalated"  # JSON is always scored


def test_an_answer_that_falls_below_the_threshold_stops_there_and_escalates(routed, traffic):
    """Under `sum` an answer's confidence can only fall: once below the threshold it is escalated
    whatever follows, so the local model stops generating and the upstream call starts at once."""
    gw, template_id = routed
    query = traffic.queries[212]
    calibrate_route(gw, template_id, SERVE_ALL, signal="sum")
    _wait_for_route(gw, traffic, query, ("local",), max_tokens=12)
    header, request_id, whole = send(gw, traffic, query, max_tokens=12)
    served = gw.row(request_id)
    assert header == "local" and served["completion_tokens"] > 3, served
    # A threshold the first tokens already miss: the answer is cut there.
    calibrate_route(gw, template_id, served["local_confidence"] / 4, signal="sum")
    _wait_for_route(gw, traffic, traffic.queries[213], ("escalated",), max_tokens=12)
    for stream in (False, True):
        header, request_id, text = send(gw, traffic, query, stream=stream, max_tokens=12)
        assert header == "escalated" and is_echo_of(text, query)  # one normal answer: the upstream's
        row = wait_for(
            lambda rid=request_id: (r := gw.row(rid))["shadow_response"] is not None and r,
            what="the local answer",
        )
        kept = row["shadow_response"]
        assert kept.strip() and whole.startswith(kept) and len(kept) < len(whole), (kept, whole)
        assert row["shadow_agreement"] is None  # a beginning is not scored against the upstream's answer
        assert row["local_confidence"] < served["local_confidence"] / 4 and row["local_compute_s"] > 0


def test_live_calibration_sets_a_route_that_breaks_its_promise_to_shadow(tmp_path, fake_upstream, traffic):
    """Every local answer is also asked upstream; the echoing provider never agrees, so after three
    comparisons the route goes to shadow, with a note in the routes, the report and the log."""
    gw, template_id = routed_gateway(
        tmp_path, fake_upstream.url, traffic, MODEL_ID, live_calibration_share=1.0,
        live_calibration_min_samples=3,
    )  # fmt: skip
    try:
        calibrate_route(gw, template_id, SERVE_ALL)
        queries = traffic.queries[220:230]
        _wait_for_route(gw, traffic, queries[0], ("local",), max_tokens=3)

        def mode() -> str:
            return with_db(gw.settings.db_path, lambda db: db["routes"].get(template_id)["mode"])

        for query in queries[1:]:
            header, _, _ = send(gw, traffic, query, max_tokens=3)
            assert header in ("local", "upstream", "shadow")
            if mode() == "shadow":
                break
        wait_for(lambda: mode() == "shadow", timeout_s=30, what="the route to go to shadow")
        note = with_db(gw.settings.db_path, lambda db: db["routes"].get(template_id)["note"])
        assert "live agreement 0.00" in note and "shadow" in note
        compared = gw.rows("route = 'local' and shadow_agreement is not null")
        assert len(compared) >= 3
        for row in compared:  # the upstream answer was bought for the comparison: it is in the spend
            assert is_echo_of(row["shadow_response"], json.loads(row["messages"])[-1]["content"])
            assert row["spend"] > row["local_compute_s"] * 0.10 / 3600
        _wait_for_route(gw, traffic, queries[-1], ("shadow",), max_tokens=3)
        report = httpx.get(f"{gw.root}/dashboard/report.json", timeout=30).json()
        [entry] = [t for t in report["by_template"] if t["template_id"] == template_id]
        assert entry["live_compared"] >= 3 and entry["live_agreement"] == 0.0
        [calibration] = [c for c in report["calibration"] if c["template_id"] == template_id]
        assert calibration["mode"] == "shadow" and calibration["note"] == note
    finally:
        gw.stop()
