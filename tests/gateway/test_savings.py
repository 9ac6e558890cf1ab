"""Counterfactual accounting: two upstream baselines, local compute cost, token estimates, static prefix."""

from __future__ import annotations

import pytest

from gateway.accounting.savings import (
    actual_spend,
    counterfactual,
    estimate_prompt_tokens,
    estimate_static_prefix_tokens,
    estimate_text_tokens,
    for_local_request,
    for_upstream_request,
    local_compute_cost,
    static_prefix_messages,
    upstream_spend,
)
from gateway.settings import Price

# gpt-4o-mini: $0.15 / $0.60 per million tokens, cached input at half price.
MINI = Price(input_cost_per_token=0.15e-6, output_cost_per_token=0.60e-6, cache_read_ratio=0.5)
SYSTEM = "You are ShellPilot. Answer with one bash command. " * 40
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "list files"},
    {"role": "assistant", "content": "ls"},
    {"role": "user", "content": "Query: count lines in every python file under src"},
]
QUERY = "count lines in every python file under src"


def test_upstream_spend_prices_cached_tokens_at_the_cache_read_ratio():
    assert upstream_spend(MINI, 1000, 100) == pytest.approx(1000 * 0.15e-6 + 100 * 0.60e-6)
    cached = upstream_spend(MINI, 1000, 100, cached_prompt_tokens=800)
    assert cached == pytest.approx(200 * 0.15e-6 + 800 * 0.075e-6 + 100 * 0.60e-6)
    # More cached tokens than the prompt holds cannot make it cheaper than all-cached.
    assert upstream_spend(MINI, 1000, 0, cached_prompt_tokens=5000) == pytest.approx(1000 * 0.075e-6)


def test_counterfactual_columns():
    savings = counterfactual(MINI, full_prompt_tokens=1200, completion_tokens=20, static_prefix_tokens=1100)
    assert savings.as_columns() == {
        "counterfactual_prompt_tokens": 1200,
        "counterfactual_completion_tokens": 20,
        "counterfactual_spend": pytest.approx(1200 * 0.15e-6 + 20 * 0.6e-6),
        "counterfactual_cached_spend": pytest.approx(100 * 0.15e-6 + 1100 * 0.075e-6 + 20 * 0.6e-6),
        "local_compute_s": 0.0,
    }
    # A prefix longer than the prompt (the estimate of another tokenizer) is clipped to the prompt.
    clipped = counterfactual(MINI, 800, 0, static_prefix_tokens=1100)
    assert clipped.counterfactual_cached_spend == pytest.approx(800 * 0.075e-6)


def test_local_compute_cost_and_actual_spend():
    assert local_compute_cost(36.0, cost_per_hour=0.10) == pytest.approx(0.001)
    assert local_compute_cost(-1.0, 0.10) == 0.0
    assert actual_spend(0.002, compute_s=36.0, cost_per_hour=0.10) == pytest.approx(0.003)


def test_static_prefix_stops_at_the_first_variable_part():
    prefix = static_prefix_messages(MESSAGES, [QUERY])
    assert prefix[:3] == MESSAGES[:3]
    assert prefix[3] == {"role": "user", "content": "Query: "}
    # An example slot earlier in the prompt ends the prefix there; a system-only prefix is kept whole.
    assert static_prefix_messages(MESSAGES, [QUERY, "list files"]) == MESSAGES[:1]
    # A slot value that opens a message leaves nothing of that message.
    assert static_prefix_messages(MESSAGES, ["You are ShellPilot"]) == []
    assert static_prefix_messages(MESSAGES, []) == MESSAGES


def test_token_estimates_use_the_upstream_tokenizer_offline():
    full = estimate_prompt_tokens("openai/gpt-4o-mini", MESSAGES)
    prefix = estimate_static_prefix_tokens("openai/gpt-4o-mini", MESSAGES, [QUERY])
    assert 400 < prefix < full < 600  # ~11 tokens x 40 repeats of the system line, plus the turns
    assert full - prefix < 30  # only the query (and its framing) is variable
    assert estimate_text_tokens("openai/gpt-4o-mini", "find . -name '*.py' | xargs wc -l") in range(8, 20)
    assert estimate_text_tokens("openai/gpt-4o-mini", "") == 0


def test_unknown_model_falls_back_to_a_character_estimate():
    tokens = estimate_prompt_tokens("no-such-provider/no-such-model-xyz", MESSAGES)
    assert tokens == pytest.approx(sum(len(m["content"]) for m in MESSAGES) / 4, rel=0.2)


def test_routed_and_upstream_requests():
    local = for_local_request(MINI, "openai/gpt-4o-mini", MESSAGES, [QUERY], "find src -name '*.py'", 0.25)
    assert local.counterfactual_prompt_tokens == estimate_prompt_tokens("openai/gpt-4o-mini", MESSAGES)
    assert local.counterfactual_completion_tokens == estimate_text_tokens(
        "openai/gpt-4o-mini", "find src -name '*.py'"
    )
    assert local.local_compute_s == 0.25
    assert 0 < local.counterfactual_cached_spend < local.counterfactual_spend
    upstream = for_upstream_request(MINI, "openai/gpt-4o-mini", MESSAGES, [QUERY], 512, 9)
    assert (upstream.counterfactual_prompt_tokens, upstream.counterfactual_completion_tokens) == (512, 9)
    assert upstream.counterfactual_spend == pytest.approx(upstream_spend(MINI, 512, 9))


def test_exact_counters_replace_the_estimate():
    """With the upstream's own tokenizer at hand (a llama.cpp upstream), its counts are used as they are."""

    def words(messages):
        return sum(len(m["content"].split()) for m in messages)

    local = for_local_request(
        MINI,
        "any",
        MESSAGES,
        [QUERY],
        "find src",
        0.1,
        count_prompt=words,
        count_text=lambda t: len(t.split()),
    )
    prefix_words = words(static_prefix_messages(MESSAGES, [QUERY]))
    assert (local.counterfactual_prompt_tokens, local.counterfactual_completion_tokens) == (
        words(MESSAGES),
        2,
    )
    assert local.counterfactual_cached_spend == pytest.approx(
        upstream_spend(MINI, words(MESSAGES), 2, cached_prompt_tokens=prefix_words)
    )
