"""What a request cost: per-token prices for remote models, per compute-second for local ones.

Prices come from, in order: `settings.prices[<client name or litellm model string>]`, the model's own
`price`, then litellm's cost map (the copy bundled with litellm: LITELLM_LOCAL_MODEL_COST_MAP=True). A model
that none of them knows is logged with spend NULL (unpriced) rather than a guess.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.environment import apply_defaults
from gateway.settings import Price, Settings, UpstreamModel


def import_litellm():
    """litellm, imported on first use (slow to import), never allowed to fetch its cost map online."""
    apply_defaults()
    import litellm

    litellm.suppress_debug_info = True
    return litellm


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


class Pricer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[str, Price | None] = {}

    def warm(self, models: list[UpstreamModel]) -> None:
        """Look every model's price up now, so no request waits for the cost map to load."""
        for model in models:
            self.price_for(model)

    def price_for(self, model: UpstreamModel) -> Price | None:
        """The per-token price of a remote model, or None when nobody knows it."""
        for name in (model.name, model.litellm_model):
            if name in self.settings.prices:
                return self.settings.prices[name]
        if model.price is not None:
            return model.price
        if model.litellm_model not in self._cache:
            self._cache[model.litellm_model] = _litellm_price(model.litellm_model)
        return self._cache[model.litellm_model]

    def spend(self, model: UpstreamModel, usage: Usage, backend_seconds: float) -> float | None:
        """Dollars for one request (None: unpriced). Local backends: compute time at `local_cost_per_hour`."""
        if model.local and not self._has_override(model):
            return backend_seconds * self.settings.local_cost_per_hour / 3600
        price = self.price_for(model)
        if price is None:
            return None
        return token_cost(price, usage)

    def _has_override(self, model: UpstreamModel) -> bool:
        return model.name in self.settings.prices or model.litellm_model in self.settings.prices


def counterfactual_price(pricer: Pricer, upstream: UpstreamModel) -> Price | None:
    """The price of the full prompt at the upstream the client asked for; for a local upstream (priced per
    compute-second), the litellm price of `settings.counterfactual_price_model`."""
    prices = pricer.settings.prices
    if upstream.local and upstream.name not in prices and upstream.litellm_model not in prices:
        reference = pricer.settings.counterfactual_price_model
        return pricer.price_for(UpstreamModel(name=reference, litellm_model=reference))
    return pricer.price_for(upstream)


def token_cost(price: Price, usage: Usage) -> float:
    """Cost of one request's tokens; cached prompt tokens at `cache_read_ratio` of the input price."""
    cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
    uncached = usage.prompt_tokens - cached
    return (
        uncached * price.input_cost_per_token
        + cached * price.input_cost_per_token * price.cache_read_ratio
        + usage.completion_tokens * price.output_cost_per_token
    )


@functools.cache
def litellm_cost_map() -> dict[str, Any]:
    """litellm's bundled cost map, read as JSON (importing litellm takes seconds; this takes ~0.1 s)."""
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        path = (
            Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
        )
        if path.is_file():
            return json.loads(path.read_text())
    return import_litellm().model_cost


def _litellm_price(litellm_model: str) -> Price | None:
    cost_map = litellm_cost_map()
    # The map keys some models with their provider prefix (`anthropic/...`) and OpenAI's without.
    candidates = [litellm_model]
    if "/" in litellm_model:
        candidates.append(litellm_model.split("/", 1)[1])
    for key in candidates:
        entry = cost_map.get(key)
        if entry and entry.get("input_cost_per_token") is not None:
            input_cost = float(entry.get("input_cost_per_token") or 0.0)
            cache_cost = entry.get("cache_read_input_token_cost")
            ratio = float(cache_cost) / input_cost if cache_cost is not None and input_cost else 1.0
            return Price(
                input_cost_per_token=input_cost,
                output_cost_per_token=float(entry.get("output_cost_per_token") or 0.0),
                cache_read_ratio=ratio,
            )
    return None
