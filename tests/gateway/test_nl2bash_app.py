"""The NL->bash app prompt builder: deterministic, both example modes and layouts, never leaks the answer."""

from __future__ import annotations

import json

import pytest

from demo.nl2bash_app import (
    INLINE_INTRO,
    SYSTEM_PROMPT,
    NL2BashApp,
    Pair,
    build_requests,
    iter_requests,
    load_pairs,
    pick_fixed_examples,
)


@pytest.fixture(scope="module")
def pool() -> list[Pair]:
    return load_pairs("train")


def test_loads_the_real_splits(pool):
    dev = load_pairs("dev")
    assert len(pool) == 11106 and len(dev) == 500
    assert pool[0].id == "nl2bash-00001" and pool[0].cmd.startswith("top ")
    with pytest.raises(FileNotFoundError):
        load_pairs("test")  # the held-out split is private


def test_fixed_turns_layout_is_a_long_realistic_prompt(pool):
    requests = build_requests(20, seed=3)
    first = requests[0]
    roles = [m["role"] for m in first.messages]
    assert roles == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert first.messages[0]["content"] == SYSTEM_PROMPT
    assert first.messages[-1]["content"] == first.pair.nl
    assert [m["content"] for m in first.messages[1:-1:2]] == [s.nl for s in first.shots]
    assert [m["content"] for m in first.messages[2:-1:2]] == [s.cmd for s in first.shots]
    assert sum(len(m["content"]) for m in first.messages) > 2000  # ~600 tokens, as a real app sends
    # the same 5 examples, all different utilities, in every request; never the query's own pair
    assert all(r.shots == first.shots for r in requests)
    assert len({s.cmd.split()[0] for s in first.shots}) == 5
    assert all(r.pair not in r.shots for r in requests)
    assert len({r.pair.id for r in requests}) == 20


def test_same_seed_same_traffic_other_seed_other_traffic():
    a, b, c = build_requests(10, seed=1), build_requests(10, seed=1), build_requests(10, seed=2)
    assert [json.dumps(r.messages) for r in a] == [json.dumps(r.messages) for r in b]
    assert a[0].shots != c[0].shots and [r.pair for r in a] != [r.pair for r in c]


def test_inline_layout_puts_examples_in_one_user_message(pool):
    app = NL2BashApp(pool, layout="inline", seed=0)
    messages = app.messages("Show the free disk space")
    assert [m["role"] for m in messages] == ["system", "user"]
    content = messages[1]["content"]
    assert content.startswith(INLINE_INTRO)
    assert content.count("Input: ") == 6 and content.count("Output: ") == 5
    assert content.endswith("Input: Show the free disk space\nOutput:")
    for shot in app.fixed_examples:
        assert f"Input: {shot.nl}\nOutput: {shot.cmd}" in content


def test_retrieved_examples_are_relevant_and_exclude_the_query(pool):
    app = NL2BashApp(pool, examples="retrieved", seed=0)
    queries = [p for p in pool if "tar" in p.nl.lower().split()][:3] + [p for p in pool if "ssh" in p.nl][:3]
    requests = list(iter_requests(app, queries, len(queries), seed=0))
    for request in requests:
        assert len(request.shots) == 5
        assert request.pair.id not in {s.id for s in request.shots}
        query_words = set(request.pair.nl.lower().split())
        assert query_words & set(request.shots[0].nl.lower().split())
    assert len({r.shots for r in requests}) == len(requests)  # per query, not one fixed set


def test_body_is_what_the_openai_client_takes():
    (request,) = build_requests(1)
    body = request.body("smollm2-135m-instruct", max_tokens=16)
    assert body == {
        "model": "smollm2-135m-instruct",
        "messages": request.messages,
        "max_tokens": 16,
        "temperature": 0.0,
    }


def test_bad_options_fail_loudly(pool):
    with pytest.raises(ValueError, match="examples must be"):
        NL2BashApp(pool, examples="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layout must be"):
        NL2BashApp(pool, layout="xml")  # type: ignore[arg-type]
    small = pool[:30]
    with pytest.raises(ValueError, match="only"):
        list(iter_requests(NL2BashApp(small), small, 100))
    assert len(pick_fixed_examples(small, 5, seed=0)) <= 5
