"""The price model of the paper table: dollars per 1,000 requests, upstream API versus local compute.

- Upstream API: the provider's per-token prices from litellm's cost map (default `gpt-4o-mini`), applied to
  the app's full prompt. "With provider prompt caching" bills the prompt's static prefix (the
  instructions, plus the examples when they are fixed) at the cache-read price on every request, as if
  every request hit the cache and the provider cached prefixes of any length: the most favourable case for
  the upstream (OpenAI, for one, only caches prefixes of 1,024 tokens or more).
- Local compute: a machine priced per hour (default $0.10/h, about a 2-vCPU on-demand cloud VM like this
  one), divided by the throughput llama.cpp reached on it, one request at a time.
Token counts come from SmolLM2's tokenizer, an approximation of the provider's own.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PriceModel:
    upstream_model: str
    input_per_token: float
    output_per_token: float
    cache_read_per_token: float
    local_per_hour: float

    def upstream_per_1k(self, input_tokens: float, output_tokens: float, cached_tokens: float = 0.0) -> float:
        """Dollars per 1,000 upstream requests of these mean token counts, `cached_tokens` of them cached."""
        uncached = input_tokens - cached_tokens
        per_request = (
            uncached * self.input_per_token
            + cached_tokens * self.cache_read_per_token
            + output_tokens * self.output_per_token
        )
        return 1000 * per_request

    def local_per_1k(self, throughput_rps: float) -> float:
        """Dollars per 1,000 requests served locally at this sustained throughput."""
        if throughput_rps <= 0:
            return float("nan")
        return self.local_per_hour * 1000 / throughput_rps / 3600

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def litellm_cost_map() -> dict[str, Any]:
    """The cost map litellm ships (`model_prices_and_context_window_backup.json`), read without importing
    litellm (a long import): the same prices litellm uses offline with LITELLM_LOCAL_MODEL_COST_MAP."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise KeyError("litellm is not installed: no cost map")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((folder / "model_prices_and_context_window_backup.json").read_text())


def load_price_model(upstream_model: str = "gpt-4o-mini", local_per_hour: float = 0.10) -> PriceModel:
    """Prices of `upstream_model` from litellm's bundled cost map."""
    entry = litellm_cost_map().get(upstream_model)
    if entry is None:
        raise KeyError(f"no price for {upstream_model!r} in litellm's cost map")
    input_price = float(entry["input_cost_per_token"])
    return PriceModel(
        upstream_model=upstream_model,
        input_per_token=input_price,
        output_per_token=float(entry["output_cost_per_token"]),
        cache_read_per_token=float(entry.get("cache_read_input_token_cost") or input_price),
        local_per_hour=local_per_hour,
    )
