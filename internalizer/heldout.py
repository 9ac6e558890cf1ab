"""Held-out evaluation in llama.cpp, as fast as serving, and how long it will take.

llama-cpp-python keeps the previous prompt's KV cache and, when the next prompt begins with the same tokens,
evaluates only the rest. The held-out requests are therefore sent in the order of their prompts, so that
requests sharing a template follow each other, and the cache is never reset between them: the template's
prefix is evaluated once, not once per request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.templates.query_format import query_only_messages
from internalizer.base import BaseModel
from internalizer.calibrate import calibrate, generate_scored
from internalizer.config import InternalizeConfig
from internalizer.dataset import TemplateData, prompt_ids
from internalizer.evaluate import score
from internalizer.export import open_llama
from internalizer.packing import IGNORE, Sequence

Messages = list[dict[str, str]]
# Export, besides its llama.cpp checks: merge + GGUF write + quantization, parameters per second (2 cores).
EXPORT_PARAMS_PER_S = 10e6
LLAMA_LOAD_S = 1.0  # opening a GGUF in llama.cpp (several times per job)


def generate_answers(
    gguf_path: Path,
    conversations: list[Messages],
    max_tokens: int,
    n_ctx: int = 4096,
    reuse_prefix: bool = True,
) -> list[str]:
    """Greedy answers of llama.cpp (the serving engine, with the GGUF's own chat template), in input order.

    `reuse_prefix=False` resets the cache before every request (the slow way, kept for measurements)."""
    if not conversations:
        return []
    llm = open_llama(gguf_path, n_ctx=n_ctx)
    order = range(len(conversations))
    if reuse_prefix:
        order = sorted(order, key=lambda i: json.dumps(conversations[i]))
    answers = [""] * len(conversations)
    try:
        for i in order:
            if not reuse_prefix:
                llm.reset()
            reply = llm.create_chat_completion(
                messages=conversations[i], max_tokens=max_tokens, temperature=0.0, top_k=1
            )
            answers[i] = reply["choices"][0]["message"]["content"] or ""
        return answers
    finally:
        llm.close()


def llama_speed(gguf_path: Path, prompt: list[int], max_generate: int = 8) -> tuple[float, float, int]:
    """(prompt tokens/s, generated tokens/s, answer tokens) of llama.cpp on this machine, from one probe:
    the model answers the prompt greedily until it stops or reaches `max_generate` tokens."""
    llm: Any = open_llama(gguf_path, n_ctx=max(len(prompt) + max_generate + 16, 256))
    try:
        started = time.perf_counter()
        llm.eval(prompt)
        prompt_s = time.perf_counter() - started
        started = time.perf_counter()
        generated = 0
        for token in llm.generate([], top_k=1, temp=0.0, reset=False):
            generated += 1
            if token == llm.token_eos() or generated >= max_generate:
                break
        generate_s = time.perf_counter() - started
    finally:
        llm.close()
    return len(prompt) / max(prompt_s, 1e-6), generated / max(generate_s, 1e-6), generated


def context_length(base: BaseModel) -> int:
    return int(getattr(base.model.config, "max_position_embeddings", 0) or 2048)


def n_ctx_for(conversations: list[Messages], tokenizer: Any, cfg: InternalizeConfig, limit: int) -> int:
    """A context just long enough for the longest prompt and its answer (within the model's own)."""
    longest = max((len(prompt_ids(tokenizer, c)) for c in conversations), default=0)
    return min(max(512, longest + cfg.max_new_tokens + 16), max(limit, 512))


def evaluate_model(
    gguf_path: Path,
    base: BaseModel,
    data: TemplateData,
    cfg: InternalizeConfig,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Held-out scores: the internalized model from the query alone; the base model as references."""
    references = [r.target for r in data.eval]
    query_only = [query_only_messages(r.slots) for r in data.eval]
    limit = context_length(base)
    n_ctx = n_ctx_for(query_only, base.tokenizer, cfg, limit)
    scored = generate_scored(gguf_path, query_only, cfg.max_new_tokens, n_ctx)  # answers + token logprobs
    scores: dict[str, Any] = {
        "internalized": score([a.text for a in scored], references, cfg.task_metric),
        "calibration": calibrate(
            scored,
            references,
            metric=cfg.route_metric,
            signal=cfg.route_signal,
            target=cfg.route_target,
            level=cfg.route_level,
            min_coverage=cfg.route_min_coverage,
        ),
    }
    if base.gguf_path is None:
        return scores  # the references run in llama.cpp, which needs the base as a GGUF
    answers = generate_answers(base.gguf_path, query_only, cfg.max_new_tokens, n_ctx)
    scores["base_query_only"] = score(answers, references, cfg.task_metric)
    full = [r.messages for r in data.eval if r.messages]
    if cfg.eval_base_reference and len(full) == len(data.eval):
        longest = max(len(prompt_ids(base.tokenizer, messages)) for messages in full)
        if longest + cfg.max_new_tokens > limit:
            say(f"no full-prompt reference: a {longest}-token prompt does not fit the base model's {limit}")
            return scores
        n_ctx = n_ctx_for(full, base.tokenizer, cfg, limit)
        answers = generate_answers(base.gguf_path, full, cfg.max_new_tokens, n_ctx)
        scores["base_full_prompt"] = score(answers, references, cfg.task_metric)
    return scores


def estimate_finish_s(
    base: BaseModel, data: TemplateData, cfg: InternalizeConfig, final: list[Sequence]
) -> float:
    """Seconds of export and evaluation, from a llama.cpp probe of the base model answering the longest
    held-out prompt: the internalized model's answers as long as the training answers, the base model's
    with the full prompt as long as its probe answer (it was not taught where to stop: on code prompts it
    often runs to the cap), the query-only base model's up to the cap."""
    tokenizer = base.tokenizer
    n_eval = max(len(data.eval), 1)
    answer = sum(sum(1 for label in s.labels if label != IGNORE) for s in final) / max(len(final), 1)
    answer = min(answer, cfg.max_new_tokens)
    queries = [prompt_ids(tokenizer, query_only_messages(r.slots)) for r in data.eval]
    query = sum(map(len, queries)) / n_eval
    full = [prompt_ids(tokenizer, r.messages) for r in data.eval if r.messages]
    if base.gguf_path is not None:
        probe = max(full or queries, key=len)
        prompt_speed, generate_speed, probe_answer = llama_speed(base.gguf_path, probe, cfg.max_new_tokens)
    else:  # nothing to probe: a 2-core CPU's order of magnitude
        prompt_speed, generate_speed, probe_answer = 200.0, 20.0, cfg.max_new_tokens
    evaluate = n_eval * (query / prompt_speed + answer / generate_speed)  # the internalized model
    if base.gguf_path is not None:
        evaluate += n_eval * (query / prompt_speed + cfg.max_new_tokens / generate_speed)
        if cfg.eval_base_reference and len(full) == len(data.eval):
            shared = len(os.path.commonprefix(full))  # evaluated once: the cache keeps it
            rest = sum(len(f) - shared for f in full)
            evaluate += (shared + rest) / prompt_speed + n_eval * max(answer, probe_answer) / generate_speed
    n_params = sum(p.numel() for p in base.model.parameters())
    # Export writes the GGUF and checks it: greedy answers from torch (slower) and llama.cpp.
    export = n_params / EXPORT_PARAMS_PER_S + 4 * cfg.verify_samples * answer / generate_speed
    return 4 * LLAMA_LOAD_S + evaluate + export
