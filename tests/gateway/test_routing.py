"""Routing end to end: a mined NL2Bash template served query-only by a local llama.cpp model.

Real uvicorn gateway, the official openai client, the fake provider as upstream, the SmolLM2 GGUF on
llama.cpp as the "internalized" model, templates mined by internalizer.mine from a seeded log.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.routing.routes_store import route_off
from internalizer.mine import mine
from internalizer.registry import retire
from tests.gateway.conftest import RunningGateway
from tests.gateway.routing_helpers import (
    CLIENT_MODEL,
    Traffic,
    add_model,
    body,
    is_echo_of,
    nl2bash_traffic,
    route,
    routed_gateway,
    upstream_saw,
    wait_for,
    with_db,
)
from tests.internalizer.mine_traffic import add_requests
from tests.support.fake_upstream import FakeUpstream

MODEL_ID = "m-internal"


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return nl2bash_traffic()


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory, fake_upstream: FakeUpstream, traffic: Traffic
) -> Iterator[tuple[RunningGateway, str]]:
    assert fake_upstream.url is not None
    running, template_id = routed_gateway(
        tmp_path_factory.mktemp("routed"), fake_upstream.url, traffic, MODEL_ID
    )
    yield running, template_id
    running.stop()


@pytest.fixture
def gw(routed) -> RunningGateway:
    return routed[0]


@pytest.fixture
def template_id(routed) -> str:
    return routed[1]


def test_a_matched_request_is_served_locally_with_the_query_only_prompt(
    gw, template_id, traffic, fake_upstream
):
    query = traffic.queries[0]
    raw = gw.client().chat.completions.with_raw_response.create(**body(traffic, query))
    reply = raw.parse()
    assert raw.headers["x-promptintern-route"] == "local"
    assert reply.model == CLIENT_MODEL and reply.choices[0].message.content.strip()
    assert not upstream_saw(fake_upstream.url, query)
    row = gw.row(raw.headers["x-request-id"])
    assert (row["route"], row["status"], row["template_id"]) == ("local", 200, template_id)
    assert row["model_served"] == f"local/{MODEL_ID}"
    assert row["prompt_tokens"] == reply.usage.prompt_tokens
    # The local model saw the query alone: a few dozen tokens, against ~900 for the full few-shot prompt.
    assert reply.usage.prompt_tokens < 60 < 500 < row["counterfactual_prompt_tokens"]
    assert row["counterfactual_completion_tokens"] >= 1
    assert 0 < row["counterfactual_cached_spend"] < row["counterfactual_spend"]
    assert row["local_compute_s"] > 0 and row["spend"] == pytest.approx(row["local_compute_s"] * 0.10 / 3600)


def test_a_streamed_matched_request_is_served_locally_with_usage(gw, template_id, traffic, fake_upstream):
    query = traffic.queries[1]
    stream = gw.client().chat.completions.create(
        **body(traffic, query), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and all(c.model == CLIENT_MODEL for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.prompt_tokens < 60
    [row] = gw.rows("response = ? and stream = 1", (text,))
    assert (row["route"], row["template_id"], row["prompt_tokens"]) == (
        "local",
        template_id,
        usage.prompt_tokens,
    )
    assert row["counterfactual_prompt_tokens"] > 500 and row["ttft_ms"] > 0
    assert not upstream_saw(fake_upstream.url, query)


def _near_misses(traffic: Traffic, query: str) -> dict[str, list[dict]]:
    messages = traffic.messages(query)
    system = messages[0]["content"]
    changed = [
        {**messages[0], "content": system.replace("single Bash command", "single Zsh command")},
        *messages[1:],
    ]
    extra = [{**messages[0], "content": system + "\nAlways use long option names."}, *messages[1:]]
    unknown = [
        messages[0],
        {"role": "user", "content": "list all files"},
        {"role": "assistant", "content": "ls -a"},
    ]
    return {"changed word": changed, "extra instruction": extra, "unknown example": unknown + messages[3:]}


def test_near_miss_requests_are_never_routed_locally(gw, traffic, fake_upstream):
    for i, (kind, messages) in enumerate(_near_misses(traffic, traffic.queries[2]).items()):
        query = f"{traffic.queries[2]} ({i})"
        messages[-1] = {"role": "user", "content": query}
        raw = gw.client().chat.completions.with_raw_response.create(
            model=CLIENT_MODEL, messages=messages, max_tokens=6
        )
        assert raw.headers["x-promptintern-route"] == "upstream", kind
        row = gw.row(raw.headers["x-request-id"])
        assert (row["route"], row["template_id"]) == ("upstream", None), kind
        assert upstream_saw(fake_upstream.url, query), kind


UNSUPPORTED = {
    "tools": {"tools": [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]},
    "response_format": {"response_format": {"type": "json_object"}},
    "logprobs": {"logprobs": True},
    "logit_bias": {"logit_bias": {"50256": -100}},
}


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_requests_the_local_model_cannot_honour_go_upstream(gw, traffic, fake_upstream, kind):
    query = f"{traffic.queries[3]} [{kind}]"
    response = gw.post(body(traffic, query, **UNSUPPORTED[kind]))
    assert response.status_code == 200, response.text
    assert response.headers["x-promptintern-route"] == "upstream"
    assert gw.row(response.headers["x-request-id"])["route"] == "upstream"
    assert upstream_saw(fake_upstream.url, query)


def test_an_image_request_goes_upstream(gw, traffic):
    messages = traffic.messages(traffic.queries[4])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    messages[-1] = {"role": "user", "content": [{"type": "text", "text": traffic.queries[4]}, image]}
    response = gw.post({"model": CLIENT_MODEL, "messages": messages, "max_tokens": 6})
    assert response.status_code == 200 and response.headers["x-promptintern-route"] == "upstream"
    assert gw.row(response.headers["x-request-id"])["route"] == "upstream"


def test_models_metrics_and_dashboard_show_the_routing(gw, template_id, traffic):
    gw.client().chat.completions.create(**body(traffic, traffic.queries[5]))
    ids = [m.id for m in gw.client().models.list().data]
    assert CLIENT_MODEL in ids and MODEL_ID in ids
    metrics = httpx.get(f"{gw.root}/metrics", timeout=5).text
    assert f'promptintern_routed_requests_total{{route="local",template="{template_id}"}}' in metrics
    report = httpx.get(f"{gw.root}/dashboard/report.json", timeout=30).json()
    [entry] = [t for t in report["by_template"] if t["template_id"] == template_id]
    local_rows = gw.rows("route = 'local' and template_id = ?", (template_id,))
    assert entry["routed"] == len(local_rows) >= 1
    assert entry["input_tokens_after"] < entry["input_tokens_before"]


def test_canary_zero_sends_nothing_local(gw, template_id, traffic):
    route(gw.settings.db_path, template_id, canary_percent=0)
    try:
        routes = [
            gw.post(body(traffic, f"{traffic.queries[6]} #{i}")).headers["x-promptintern-route"]
            for i in range(5)
        ]
        assert routes == ["upstream"] * 5
    finally:
        route(gw.settings.db_path, template_id, canary_percent=100)
    _wait_until_local(gw, traffic)


def _wait_until_local(gw: RunningGateway, traffic: Traffic) -> None:
    wait_for(
        lambda: gw.post(body(traffic, traffic.queries[7])).headers["x-promptintern-route"] == "local",
        what="the route to serve locally again",
    )


def test_the_kill_switch_stops_local_traffic_on_the_next_request(gw, template_id, traffic):
    _wait_until_local(gw, traffic)
    with_db(gw.settings.db_path, lambda db: route_off(db, template_id))
    response = gw.post(body(traffic, traffic.queries[8]))  # no wait: the very next request
    assert response.headers["x-promptintern-route"] == "upstream"
    route(gw.settings.db_path, template_id, mode="active")
    _wait_until_local(gw, traffic)


def test_retiring_or_deleting_the_model_stops_local_traffic_immediately(gw, template_id, traffic):
    db_path = gw.settings.db_path
    _wait_until_local(gw, traffic)
    with_db(db_path, lambda db: retire(db, MODEL_ID))
    assert gw.post(body(traffic, traffic.queries[9])).headers["x-promptintern-route"] == "upstream"
    # Reactivate it, then delete its row: the route remains but its model is gone.
    with_db(db_path, lambda db: db.execute("update models set status = 'active' where id = ?", [MODEL_ID]))
    with_db(db_path, lambda db: db.conn.commit())
    route(db_path, template_id, mode="active")
    _wait_until_local(gw, traffic)
    with_db(db_path, lambda db: (db.execute("delete from models where id = ?", [MODEL_ID]), db.conn.commit()))
    assert gw.post(body(traffic, traffic.queries[10])).headers["x-promptintern-route"] == "upstream"
    assert MODEL_ID not in wait_for(
        lambda: (ids := [m.id for m in gw.client().models.list().data]) and MODEL_ID not in ids and ids,
        what="the deleted model to leave /v1/models",
    )
    from gateway.upstream.base_model import smollm2_gguf_path

    add_model(db_path, template_id, MODEL_ID, smollm2_gguf_path())
    route(db_path, template_id, mode="active", model_id=MODEL_ID)
    _wait_until_local(gw, traffic)


def test_shadow_mode_serves_upstream_and_logs_both_answers(gw, template_id, traffic, fake_upstream):
    route(gw.settings.db_path, template_id, mode="shadow")
    try:
        query = traffic.queries[11]
        raw = wait_for(
            lambda: (
                (r := gw.client().chat.completions.with_raw_response.create(**body(traffic, query))).headers[
                    "x-promptintern-route"
                ]
                == "shadow"
                and r
            ),
            what="the shadow route",
        )
        reply = raw.parse()
        assert is_echo_of(reply.choices[0].message.content, query) and upstream_saw(fake_upstream.url, query)
        request_id = raw.headers["x-request-id"]
        row = wait_for(lambda: (r := gw.row(request_id))["shadow_response"] is not None and r, what="shadow")
        assert row["route"] == "shadow" and row["template_id"] == template_id
        assert row["response"] == reply.choices[0].message.content  # the client got the upstream answer
        assert row["shadow_response"].strip() and 0 <= row["shadow_agreement"] <= 1
        assert row["local_compute_s"] > 0 and row["counterfactual_prompt_tokens"] == row["prompt_tokens"]
    finally:
        route(gw.settings.db_path, template_id, mode="active")
    _wait_until_local(gw, traffic)


def test_a_template_mined_while_the_gateway_runs_is_picked_up(gw, traffic):
    other_prompt = (
        "You turn requests into one-line shell commands for a Debian server. Reply with the command."
    )
    queries = traffic.queries[100:110]
    messages = [
        [{"role": "system", "content": other_prompt}, {"role": "user", "content": q}] for q in queries
    ]
    db_path = gw.settings.db_path
    new_ids = with_db(db_path, lambda db: (add_requests(db, messages[:8], start=5000), mine(db).new_ids)[1])
    assert len(new_ids) == 1

    def tagged() -> str | None:
        response = gw.post({"model": CLIENT_MODEL, "messages": messages[9], "max_tokens": 4})
        return gw.row(response.headers["x-request-id"])["template_id"]

    assert wait_for(tagged, what="the new template to be matched") == new_ids[0]
