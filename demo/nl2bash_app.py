"""A realistic NL->bash application, as a client of the gateway: it builds the chat requests a real app sends.

Every request = a long system prompt (role, instructions, output rules) + 5 few-shot examples + the user's
query. Examples are either the same 5 for every request ("fixed", the most common app) or retrieved per query
from a pool ("retrieved", a RAG-style app). They are laid out either as alternating user/assistant turns or
as inline `Input:/Output:` blocks in one user message. Everything is deterministic for a given seed, so the
demo, the mining benchmark and the paper benchmark all replay exactly the same traffic.

The retriever is lexical (idf-weighted word overlap) so this module stays light: the gateway never imports
torch or faiss.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

DATA_DIR = Path(__file__).resolve().parent / "data" / "nl2bash"  # package data: ships in the wheel

ExampleMode = Literal["fixed", "retrieved"]
Layout = Literal["turns", "inline"]

SYSTEM_PROMPT = """\
You are ShellPilot, the command-line assistant built into a terminal application used by developers, \
data engineers and system administrators. The user describes, in plain English, something they want to do \
on a Linux or macOS machine, and you answer with the single Bash command that does it.

How to write the command:
- Use standard POSIX and GNU tools that ship with a typical Linux distribution: find, grep, sed, awk, \
sort, uniq, xargs, tar, du, df, ps, kill, chmod, chown, ln, cp, mv, rm, head, tail, wc, cut, tr, date, \
ssh, rsync, curl and similar. Do not invent tools or options that do not exist.
- Prefer one pipeline over several commands. Chain with && only when the steps must run in order.
- Keep the file names, paths, user names, patterns and numbers exactly as the user wrote them. When the \
user does not name a file or directory, use the current directory.
- Quote arguments that contain spaces or shell metacharacters. Use single quotes for patterns given to \
grep, sed and awk.
- When a task can be done with or without a pipe, prefer the shorter command that a senior engineer \
would type.
- Do not add sudo unless the user asks for it or the task cannot work without it.
- If the request is ambiguous, pick the most common interpretation; do not ask a question back.

Output rules:
- Reply with the command only, on a single line.
- No explanation, no comments, no Markdown, no code fences, no leading $ prompt, no trailing period.
- Never output more than one command line, even if several commands would work.

Safety rules:
- Never run destructive commands on / or on the home directory as a whole.
- For deletions, answer with the command the user asked for; the terminal asks for confirmation itself.

The examples below show requests from other users and the exact answers expected."""

INLINE_INTRO = "Examples:"
INLINE_TASK = "Now answer this request."


@dataclass(frozen=True)
class Pair:
    """One NL2Bash item: a natural-language request and the reference command."""

    id: str
    nl: str
    cmd: str


def load_pairs(split: str = "train", data_dir: Path = DATA_DIR) -> list[Pair]:
    """The NL2Bash pairs of one split (train or dev), in file order."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"NL2Bash split not found: {path}")
    with path.open(encoding="utf-8") as lines:
        return [Pair(row["id"], row["nl"], row["cmd"]) for row in map(json.loads, lines)]


_WORD = re.compile(r"[a-z0-9_.\-/*]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class LexicalRetriever:
    """The k pool items most similar to a query: idf-weighted word overlap, ties broken by pool order."""

    def __init__(self, pool: Sequence[Pair]) -> None:
        self.pool = list(pool)
        self._postings: dict[str, list[int]] = defaultdict(list)
        for index, pair in enumerate(self.pool):
            for word in set(_words(pair.nl)):
                self._postings[word].append(index)
        n = len(self.pool)
        self._stopword_df = max(50, n // 10)
        self._idf = {word: math.log(1 + n / len(ids)) for word, ids in self._postings.items()}
        self._norms = [math.sqrt(sum(self._idf[w] ** 2 for w in set(_words(p.nl)))) or 1.0 for p in self.pool]

    def top_k(self, query: str, k: int, exclude_ids: frozenset[str] = frozenset()) -> list[Pair]:
        scores: dict[int, float] = defaultdict(float)
        for word in set(_words(query)):
            postings = self._postings.get(word, ())
            if len(postings) > self._stopword_df:
                continue  # words like "the" and "files" cost most of the time and barely change the ranking
            weight = self._idf[word] ** 2
            for index in postings:
                scores[index] += weight
        # A few spare candidates cover the excluded ids and a pool item equal to the query.
        ranked = heapq.nsmallest(
            k + len(exclude_ids) + 4, scores, key=lambda i: (-scores[i] / self._norms[i], i)
        )
        picked = [
            self.pool[i] for i in ranked if self.pool[i].id not in exclude_ids and self.pool[i].nl != query
        ]
        picked = picked[:k]
        # A query sharing no word with the pool still gets k examples: the first pool items.
        for pair in self.pool:
            if len(picked) >= k:
                break
            if pair not in picked and pair.id not in exclude_ids and pair.nl != query:
                picked.append(pair)
        return picked


def pick_fixed_examples(pool: Sequence[Pair], k: int, seed: int) -> list[Pair]:
    """k short, clear examples that each use a different utility, chosen the same way for a given seed."""
    candidates = [p for p in pool if 10 <= len(p.cmd) <= 70 and 20 <= len(p.nl) <= 120 and "\n" not in p.cmd]
    random.Random(seed).shuffle(candidates)
    chosen: list[Pair] = []
    utilities: set[str] = set()
    for pair in candidates:
        utility = pair.cmd.split()[0]
        if utility not in utilities:
            chosen.append(pair)
            utilities.add(utility)
        if len(chosen) == k:
            break
    return chosen


@dataclass
class NL2BashApp:
    """Builds the chat messages the app sends for one user query."""

    pool: Sequence[Pair]
    n_shots: int = 5
    examples: ExampleMode = "fixed"
    layout: Layout = "turns"
    seed: int = 0
    system_prompt: str = SYSTEM_PROMPT
    _fixed: list[Pair] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.examples not in ("fixed", "retrieved"):
            raise ValueError(f"examples must be 'fixed' or 'retrieved', not {self.examples!r}")
        if self.layout not in ("turns", "inline"):
            raise ValueError(f"layout must be 'turns' or 'inline', not {self.layout!r}")
        if self.examples == "fixed":
            self._fixed = pick_fixed_examples(self.pool, self.n_shots, self.seed)

    @cached_property
    def retriever(self) -> LexicalRetriever:
        return LexicalRetriever(self.pool)

    @property
    def fixed_examples(self) -> list[Pair]:
        return list(self._fixed)

    def shots_for(self, query: str, exclude_ids: frozenset[str] = frozenset()) -> list[Pair]:
        """The few-shot examples sent with this query (never the query's own pair)."""
        if self.examples == "fixed":
            return list(self._fixed)
        return self.retriever.top_k(query, self.n_shots, exclude_ids)

    def messages(self, query: str, exclude_ids: frozenset[str] = frozenset()) -> list[dict[str, str]]:
        return render_messages(self.system_prompt, self.shots_for(query, exclude_ids), query, self.layout)


def render_messages(
    system_prompt: str, shots: Sequence[Pair], query: str, layout: Layout
) -> list[dict[str, str]]:
    """The chat messages for one request: system prompt, examples in the chosen layout, then the query."""
    messages = [{"role": "system", "content": system_prompt}]
    if layout == "turns":
        for shot in shots:
            messages.append({"role": "user", "content": shot.nl})
            messages.append({"role": "assistant", "content": shot.cmd})
        messages.append({"role": "user", "content": query})
        return messages
    blocks = [f"Input: {shot.nl}\nOutput: {shot.cmd}" for shot in shots]
    content = "\n\n".join([INLINE_INTRO, *blocks, INLINE_TASK, f"Input: {query}\nOutput:"])
    messages.append({"role": "user", "content": content})
    return messages


@dataclass(frozen=True)
class AppRequest:
    """One request of the replayed traffic: the query's pair (with its reference command) and the messages."""

    pair: Pair
    messages: list[dict[str, str]]
    shots: tuple[Pair, ...]

    def body(self, model: str, max_tokens: int = 48, temperature: float = 0.0) -> dict[str, Any]:
        """Keyword arguments for `client.chat.completions.create(**body)`."""
        return {
            "model": model,
            "messages": self.messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }


def iter_requests(app: NL2BashApp, queries: Sequence[Pair], n: int, seed: int = 0) -> Iterator[AppRequest]:
    """n requests for queries drawn without replacement (seeded) from `queries`, skipping the fixed shots."""
    shot_ids = frozenset(p.id for p in app.fixed_examples)
    candidates = [q for q in queries if q.id not in shot_ids]
    if n > len(candidates):
        raise ValueError(f"asked for {n} requests but only {len(candidates)} queries are available")
    for pair in random.Random(seed).sample(candidates, n):
        shots = app.shots_for(pair.nl, exclude_ids=frozenset({pair.id}))
        yield AppRequest(pair, render_messages(app.system_prompt, shots, pair.nl, app.layout), tuple(shots))


def build_requests(
    n: int,
    *,
    split: str = "train",
    examples: ExampleMode = "fixed",
    layout: Layout = "turns",
    seed: int = 0,
    data_dir: Path = DATA_DIR,
) -> list[AppRequest]:
    """The standard replayed traffic: the app built on the train pool, n queries from `split`."""
    pool = load_pairs("train", data_dir)
    queries = pool if split == "train" else load_pairs(split, data_dir)
    app = NL2BashApp(pool, examples=examples, layout=layout, seed=seed)
    return list(iter_requests(app, queries, n, seed=seed))
