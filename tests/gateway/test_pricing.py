"""Spend: overrides, litellm's bundled cost map, cached tokens, local compute time, unpriced models."""

from __future__ import annotations

import pytest

from gateway.accounting.pricing import Pricer, Usage, token_cost
from gateway.settings import Price, Settings, UpstreamModel

USAGE = Usage(prompt_tokens=1000, completion_tokens=100, cached_prompt_tokens=400)


def test_litellm_cost_map_prices_a_known_model():
    model = UpstreamModel(name="mini", litellm_model="openai/gpt-4o-mini")
    pricer = Pricer(Settings())
    price = pricer.price_for(model)
    assert price is not None and price.input_cost_per_token > 0 and price.output_cost_per_token > 0
    assert 0 < price.cache_read_ratio < 1  # the map knows gpt-4o-mini's cached-input price
    expected = (
        600 + 400 * price.cache_read_ratio
    ) * price.input_cost_per_token + 100 * price.output_cost_per_token
    assert pricer.spend(model, USAGE, backend_seconds=1.0) == pytest.approx(expected)


def test_settings_override_wins_by_client_name_or_litellm_string():
    override = Price(input_cost_per_token=1e-6, output_cost_per_token=3e-6, cache_read_ratio=0.25)
    model = UpstreamModel(
        name="mini", litellm_model="openai/gpt-4o-mini", price=Price(input_cost_per_token=9)
    )
    for key in ("mini", "openai/gpt-4o-mini"):
        pricer = Pricer(Settings(prices={key: override}))
        assert pricer.spend(model, USAGE, 0) == pytest.approx(600e-6 + 400 * 0.25e-6 + 300e-6)


def test_model_price_is_used_when_no_override():
    model = UpstreamModel(
        name="x", litellm_model="openai/unknown-thing", price=Price(output_cost_per_token=1e-3)
    )
    assert Pricer(Settings()).spend(model, USAGE, 0) == pytest.approx(0.1)


def test_unknown_model_is_unpriced_not_guessed():
    model = UpstreamModel(name="x", litellm_model="openai/certainly-not-a-real-model")
    assert Pricer(Settings()).spend(model, USAGE, 0) is None


def test_local_backend_is_priced_per_compute_second():
    model = UpstreamModel(name="local", litellm_model="openai/local", local=True)
    pricer = Pricer(Settings(local_cost_per_hour=3.6))
    assert pricer.spend(model, USAGE, backend_seconds=2.0) == pytest.approx(0.002)


def test_token_cost_never_counts_more_cached_than_prompt_tokens():
    price = Price(input_cost_per_token=1.0, output_cost_per_token=0.0, cache_read_ratio=0.5)
    assert token_cost(price, Usage(prompt_tokens=10, cached_prompt_tokens=50)) == pytest.approx(5.0)
