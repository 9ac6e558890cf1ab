"""The prompts each method of the paper table sends: full, fixed-example, compressed and query-only.

A full prompt is what the app sends upstream: the task's instructions with 5 examples (retrieved per
query by MiniLM + FAISS, or the same 5 for every query) as the system message, then the query as the user
turn. It is rendered by the internalizer's own stage renderer, so the model fine-tuned on full prompts is
served exactly the format it was trained on. A compressed prompt is LLMLingua-style: everything but the
query pruned by the base model's token surprisal to a ratio. The query-only prompt is the internalized
model's format (gateway/templates/query_format.py), shared with training and serving.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from benchmarks.paper_tasks import Record, Task
from gateway.templates.query_format import query_only_messages
from internalizer.dataset import Example, render_stage_messages

Messages = list[dict[str, str]]
N_SHOTS = 5


def as_examples(records: Sequence[Record]) -> list[Example]:
    return [Example(r.id, r.query, r.target) for r in records]


def fixed_shots(pool: Sequence[Record], seed: int = 0, k: int = N_SHOTS) -> list[Example]:
    """The fixed-example app's k examples: short single-line ones with different first words, by seed."""
    candidates = [
        r for r in pool if 5 <= len(r.target) <= 70 and 15 <= len(r.query) <= 120 and "\n" not in r.target
    ]
    random.Random(seed).shuffle(candidates)
    chosen: list[Record] = []
    first_words: set[str] = set()
    for record in candidates:
        word = record.target.split()[0]
        if word not in first_words:
            chosen.append(record)
            first_words.add(word)
        if len(chosen) == k:
            break
    return as_examples(chosen)


def full_messages(task: Task, shots: Sequence[Example], query: str) -> Messages:
    return render_stage_messages(task.instructions, {"query": query}, list(shots))


def query_messages(query: str) -> Messages:
    return query_only_messages({"query": query})


def context_text(task: Task, shots: Sequence[Example]) -> str:
    """Instructions and examples as one text (the full prompt's system message): what a compressor prunes."""
    return full_messages(task, shots, "")[0]["content"]


def compressed_messages(compressed_context: str, query: str) -> Messages:
    return [{"role": "system", "content": compressed_context}, {"role": "user", "content": query}]
