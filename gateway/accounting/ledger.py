"""The accounting of one request, computed in one place when its log row is built.

The request path only records facts (which backend served it, its usage, seconds waited, local compute);
`Ledger.columns` turns them into the row's money columns:

- `spend`: what the request really cost. Upstream tokens at the model's price (pricing.py), or for a local
  upstream (the embedded llama.cpp) its seconds at `local_cost_per_hour`; a request served by an
  internalized model costs its compute; a fallback adds the local compute it wasted.
- `local_compute_s`: seconds of this machine's compute the request used (NULL when none).
- for a templated request that succeeded, the counterfactual columns (savings.py): what the full prompt
  would have cost upstream, uncached and with provider prompt caching.

Counting the counterfactual's tokens may load a tokenizer, so a templated request's columns are computed off
the event loop (`columns_async`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.accounting.pricing import Pricer, Usage, counterfactual_price
from gateway.accounting.savings import Savings, for_local_request, for_upstream_request, local_compute_cost
from gateway.local.tokens import TokenCounters
from gateway.settings import Price, UpstreamModel

log = logging.getLogger("promptintern.gateway")


@dataclass(frozen=True)
class Template:
    """A request that matched a mined template: what its counterfactual is computed from."""

    upstream: UpstreamModel  # the upstream the client asked for (its price is the counterfactual's)
    messages: Sequence[dict[str, Any]]  # the full prompt as the client sent it
    slot_values: Sequence[str]  # the variable parts: the provider cache would reuse what comes before


@dataclass(frozen=True)
class Served:
    """How one request was served: the facts its accounting needs."""

    route: str  # upstream | local | fallback | shadow | none
    backend: UpstreamModel | None
    usage: Usage | None
    backend_s: float  # seconds waiting on the upstream
    local_compute_s: float  # seconds of an internalized model's compute (served, or wasted by a fallback)
    answer: str | None
    template: Template | None = None  # set for a templated request that succeeded


class Ledger:
    def __init__(self, pricer: Pricer, token_counters: TokenCounters) -> None:
        self.pricer = pricer
        self.token_counters = token_counters
        self.cost_per_hour = pricer.settings.local_cost_per_hour

    async def columns_async(self, served: Served) -> dict[str, Any]:
        if served.template is None:
            return self.columns(served)
        return await asyncio.to_thread(self.columns, served)

    def columns(self, served: Served) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "spend": self._spend(served),
            "local_compute_s": self._local_compute_s(served),
        }
        if served.template is not None:
            try:
                savings = self._counterfactual(served, served.template)
            except Exception as exc:  # accounting never fails a request
                log.error("savings not computed: %s", exc)
            else:
                columns.update({k: v for k, v in savings.as_columns().items() if k != "local_compute_s"})
        return columns

    def shadow_charges(self, compute_s: float) -> dict[str, float]:
        """What a shadow run adds to its request's row, once the local answer is in."""
        return {"local_compute_s": compute_s, "spend": local_compute_cost(compute_s, self.cost_per_hour)}

    def _spend(self, served: Served) -> float | None:
        backend, local_cost = served.backend, local_compute_cost(served.local_compute_s, self.cost_per_hour)
        if served.route == "local":  # the internalized model's compute is the whole bill
            return local_cost
        spend = None
        if backend is not None and (served.usage is not None or backend.local):
            spend = self.pricer.spend(backend, served.usage or Usage(), served.backend_s)
        if served.local_compute_s:  # a fallback's wasted local compute counts
            spend = (spend or 0.0) + local_cost
        return spend

    def _local_compute_s(self, served: Served) -> float | None:
        if served.route == "local":
            return served.local_compute_s
        upstream_local = served.backend is not None and served.backend.local
        if not upstream_local and not served.local_compute_s:
            return None
        return (served.backend_s if upstream_local else 0.0) + served.local_compute_s

    def _counterfactual(self, served: Served, template: Template) -> Savings:
        upstream = template.upstream
        price = counterfactual_price(self.pricer, upstream)
        count_prompt = count_text = None
        if upstream.gguf_path is not None:  # a llama.cpp upstream: its exact tokenizer and chat template
            counter = self.token_counters.for_model(upstream.gguf_path)
            count_prompt = lambda m: counter.count(list(m), "").prompt_tokens  # noqa: E731
            count_text = lambda t: counter.count([], t).completion_tokens  # noqa: E731
        if served.route == "local":
            savings = for_local_request(
                price or Price(), upstream.litellm_model, template.messages, template.slot_values,
                served.answer or "", served.local_compute_s, count_prompt, count_text,
            )  # fmt: skip
        else:
            usage = served.usage or Usage()
            savings = for_upstream_request(
                price or Price(), upstream.litellm_model, template.messages, template.slot_values,
                usage.prompt_tokens, usage.completion_tokens, served.local_compute_s, count_prompt,
            )  # fmt: skip
        if price is None:  # nobody knows this upstream's price: tokens only, no dollars
            savings = dataclasses.replace(
                savings, counterfactual_spend=None, counterfactual_cached_spend=None
            )
        return savings
