"""Counterfactual accounting for one request: what the full prompt would have cost upstream.

Pure functions over token counts and prices, so the router, the importer and the tests compute the same
figures. They fill the `requests` columns counterfactual_prompt_tokens, counterfactual_completion_tokens,
counterfactual_spend, counterfactual_cached_spend and local_compute_s.

Two baselines, both for the full prompt sent to the upstream the client asked for:
- uncached: every prompt token at the upstream's input price;
- cached: the template's static prefix (everything before the first variable part) at the provider's
  cache-read price (`Price.cache_read_ratio` x input price), the rest at the full price. It assumes every
  request hits the cache and ignores cache-write surcharges and minimum cacheable lengths, so it is the
  cheapest upstream could be: savings measured against it are a lower bound.

Token counts for the counterfactual:
- a request that went upstream (route upstream, shadow or fallback) uses the upstream's reported usage;
- a request served locally never reached upstream, so its full prompt is counted with
  `estimate_prompt_tokens` (litellm's token_counter for the upstream model: tiktoken for OpenAI models,
  the provider's tokenizer where litellm bundles one, a 4-characters-per-token estimate when it has
  none), and the local answer's text is counted the same way for the completion.

`spend` in the log is always what a request really cost: upstream dollars plus local compute dollars
(`actual_spend`), so the report's "after" is a plain sum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.accounting.pricing import Usage, import_litellm, token_cost
from gateway.settings import Price
from gateway.templates.request_shape import message_text

Message = dict[str, Any]
PromptCounter = Callable[[Sequence[Message]], int]
TextCounter = Callable[[str], int]


@dataclass(frozen=True)
class Savings:
    """The counterfactual columns of one `requests` row."""

    counterfactual_prompt_tokens: int
    counterfactual_completion_tokens: int
    counterfactual_spend: float  # full prompt upstream, no caching
    counterfactual_cached_spend: float  # full prompt upstream, static prefix read from the provider cache
    local_compute_s: float

    def as_columns(self) -> dict[str, Any]:
        return asdict(self)


def upstream_spend(
    price: Price, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
) -> float:
    """Dollars for one upstream call; `cached_prompt_tokens` of the prompt billed at the cache-read rate."""
    cached = max(0, min(cached_prompt_tokens, prompt_tokens))
    return token_cost(price, Usage(prompt_tokens, completion_tokens, cached))


def local_compute_cost(compute_s: float, cost_per_hour: float) -> float:
    """Dollars for `compute_s` seconds of this machine at `cost_per_hour` (settings.local_cost_per_hour)."""
    return max(0.0, compute_s) * cost_per_hour / 3600.0


def actual_spend(upstream_dollars: float, compute_s: float, cost_per_hour: float) -> float:
    """What a request really cost: its upstream bill plus the local compute it used (shadow, fallback...)."""
    return upstream_dollars + local_compute_cost(compute_s, cost_per_hour)


def counterfactual(
    price: Price,
    full_prompt_tokens: int,
    completion_tokens: int,
    static_prefix_tokens: int,
    local_compute_s: float = 0.0,
) -> Savings:
    """The two upstream baselines for a full prompt of `full_prompt_tokens` tokens.

    For a request served upstream pass its reported usage; for a routed one, the estimates (module doc).
    """
    prefix = max(0, min(static_prefix_tokens, full_prompt_tokens))
    return Savings(
        counterfactual_prompt_tokens=full_prompt_tokens,
        counterfactual_completion_tokens=completion_tokens,
        counterfactual_spend=upstream_spend(price, full_prompt_tokens, completion_tokens),
        counterfactual_cached_spend=upstream_spend(price, full_prompt_tokens, completion_tokens, prefix),
        local_compute_s=local_compute_s,
    )


def for_local_request(
    price: Price,
    upstream_model: str,
    messages: Sequence[Message],
    slot_values: Sequence[str],
    answer_text: str,
    local_compute_s: float,
    count_prompt: PromptCounter | None = None,
    count_text: TextCounter | None = None,
) -> Savings:
    """Accounting for a request served by a local model: the full prompt and the answer, estimated.

    `count_prompt` / `count_text` replace the litellm estimate when the upstream's exact tokenizer is at
    hand (gateway/local/tokens.py for a llama.cpp upstream such as the embedded default).
    """
    count_prompt = count_prompt or (lambda m: estimate_prompt_tokens(upstream_model, m))
    count_text = count_text or (lambda t: estimate_text_tokens(upstream_model, t))
    prefix = static_prefix_messages(messages, slot_values)
    return counterfactual(
        price,
        full_prompt_tokens=count_prompt(messages),
        completion_tokens=count_text(answer_text) if answer_text else 0,
        static_prefix_tokens=count_prompt(prefix) if prefix else 0,
        local_compute_s=local_compute_s,
    )


def for_upstream_request(
    price: Price,
    upstream_model: str,
    messages: Sequence[Message],
    slot_values: Sequence[str],
    prompt_tokens: int,
    completion_tokens: int,
    local_compute_s: float = 0.0,
    count_prompt: PromptCounter | None = None,
) -> Savings:
    """Accounting for a templated request that went upstream (upstream, shadow, fallback): reported usage,
    with the static prefix estimated (the provider reports what it cached, not what it could have)."""
    prefix = static_prefix_messages(messages, slot_values)
    count_prompt = count_prompt or (lambda m: estimate_prompt_tokens(upstream_model, m))
    return counterfactual(
        price,
        full_prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        static_prefix_tokens=count_prompt(prefix) if prefix else 0,
        local_compute_s=local_compute_s,
    )


# ---- token estimates for requests that never reached upstream ------------------------------------------


def estimate_prompt_tokens(model: str, messages: Sequence[Message]) -> int:
    """Prompt tokens `model` would bill for `messages` (chat framing included), estimated offline."""
    try:  # litellm is slow to import: only on the first estimate (the gateway has loaded it anyway)
        return int(import_litellm().token_counter(model=model, messages=list(messages)))
    except Exception:  # no tokenizer for this model offline: ~4 characters per token, 3 tokens per message
        return sum(3 + len(message_text(m)) // 4 for m in messages) + 3


def estimate_text_tokens(model: str, text: str) -> int:
    """Tokens of a plain text (an answer) under `model`'s tokenizer, estimated offline."""
    if not text:
        return 0
    try:
        return int(import_litellm().token_counter(model=model, text=text))
    except Exception:
        return max(1, len(text) // 4)


def static_prefix_messages(messages: Sequence[Message], slot_values: Sequence[str]) -> list[Message]:
    """The messages a provider cache would reuse across requests of one template: all text before the
    first variable part (the earliest occurrence of any slot value), the message holding it cut there.

    A slot value that also happens to occur earlier, inside the static text, ends the prefix there:
    the prefix is then shorter and the cached baseline slightly dearer than the provider's would be.
    """
    needles = [value for value in slot_values if value]
    prefix: list[Message] = []
    for message in messages:
        text = message_text(message)
        cut = min((pos for pos in (text.find(v) for v in needles) if pos >= 0), default=-1)
        if cut < 0:
            prefix.append(message)
            continue
        if cut > 0:
            prefix.append({**message, "content": text[:cut]})
        break
    return prefix


def estimate_static_prefix_tokens(model: str, messages: Sequence[Message], slot_values: Sequence[str]) -> int:
    prefix = static_prefix_messages(messages, slot_values)
    return estimate_prompt_tokens(model, prefix) if prefix else 0
