"""`promptintern mine`: find recurring prompt templates in the request log and write them to the database.

1. Every request is cut into its role skeleton (system messages, few-shot turns, the rest) and each message
   into lines and inline example regions (mine_blocks). Identical message texts are cut once.
2. Exact structure first: a line sent in at least `min_support` requests is a recurring line. A request's
   key is its skeleton plus, per message, the sequence of its recurring lines, variable runs and example
   regions. Requests with the same key are candidates for one template; a changed word in a recurring line
   gives another key, so v1 and v2 of a template stay apart; one-off prompts share no key.
3. Each group of `min_support` or more requests is aligned (mine_align): static spans, slots, example pool.
4. The matcher built from these templates (and the templates of earlier runs, which keep their ids and come
   first) is run over the whole log: what it matches is what the gateway would match, so the counts, the
   `request_templates` rows and the examples' use counts come from it. Everything is written in one
   transaction: a failure leaves the previous tables intact.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from gateway.templates.matcher import Matcher, Template, load_templates
from gateway.templates.request_shape import TURNS_ROLE, Shape, shape_of
from internalizer.mine_align import AlignConfig, AlignedRequest, ExampleInfo, MinedTemplate, Run, align_group
from internalizer.mine_blocks import find_example_region
from internalizer.mine_store import known_examples, load_requests, template_rows, write_tables

THREE_LETTERS = re.compile(r"[^\W\d_].*?[^\W\d_].*?[^\W\d_]")
SENTENCE_END = re.compile(r"(?<=[.?!] )(?=\S)")


@dataclass(frozen=True)
class MineConfig:
    min_support: int = 5  # requests a template needs, and sends of a line that make it a recurring line
    min_static_chars: int = 20
    min_example_reuse: float = 0.5


@dataclass
class MineResult:
    n_requests: int  # rows in the log
    n_matchable: int  # text-only chat requests
    n_assigned: int  # requests that belong to a template
    templates: list[dict]  # template rows as written, by potential saving
    new_ids: list[str]
    seconds: float


# ---- steps 1-3: candidate templates --------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def _pieces(text: str) -> list[tuple[str, object]]:
    """("L", line) and ("E", example region) pieces that concatenate back to the text.

    A one-line message is cut into sentences instead (`You are a bash expert. Convert: {query}`),
    so instructions that share its only line with the query still recur as units.
    """
    if "\n" not in text:
        return [("L", part) for part in SENTENCE_END.split(text) if part]
    region = find_example_region(text)
    if region is None:
        return [("L", line) for line in _lines(text)]
    return (
        [("L", line) for line in _lines(text[: region.start])]
        + [("E", region)]
        + [("L", line) for line in _lines(text[region.end :])]
    )


def _eligible(line: str) -> bool:
    """Lines that may key a group: real text, not blank lines or lone punctuation shared by everything."""
    return THREE_LETTERS.search(line) is not None


def candidate_templates(shapes: list[Shape], config: MineConfig) -> list[MinedTemplate]:
    # Each distinct message text is cut once: a static system prompt sent 10,000 times costs one cut.
    cut: dict[str, tuple[list[tuple[str, object]], frozenset[str]]] = {}
    line_counts: Counter[str] = Counter()
    for shape in shapes:
        seen: set[str] = set()
        for text in shape.texts:
            if text is None:
                continue
            entry = cut.get(text)
            if entry is None:
                pieces = _pieces(text)
                lines = frozenset(p for kind, p in pieces if kind == "L" and _eligible(p))  # type: ignore[misc]
                entry = cut[text] = (pieces, lines)
            seen |= entry[1]
        line_counts.update(seen)
    recurring = {line for line, n in line_counts.items() if n >= config.min_support}

    runs_of: dict[str, tuple[list[Run], tuple]] = {}
    groups: dict[tuple, list[AlignedRequest]] = defaultdict(list)
    for shape in shapes:
        key: list[object] = [shape.skeleton]
        runs_per_element: list[list[Run] | None] = []
        for text in shape.texts:
            if text is None:
                runs_per_element.append(None)
                key.append(TURNS_ROLE)
                continue
            entry = runs_of.get(text)
            if entry is None:
                runs = _runs(cut[text][0], recurring)
                entry = runs_of[text] = (
                    runs,
                    tuple(payload if kind == "K" else kind for kind, payload in runs),
                )
            runs_per_element.append(entry[0])
            key.append(entry[1])
        if any(kind == "K" for runs in runs_per_element if runs for kind, _ in runs):
            groups[tuple(key)].append(AlignedRequest(runs_per_element, shape.pairs))

    align_config = AlignConfig(config.min_static_chars, config.min_example_reuse)
    mined = []
    for key, group in sorted(groups.items(), key=lambda item: -len(item[1])):
        if len(group) >= config.min_support:
            template = align_group(key[0], group, align_config)
            if template is not None:
                mined.append(template)
    return mined


def _runs(pieces: list[tuple[str, object]], recurring: set[str]) -> list[Run]:
    runs: list[Run] = []
    variable: list[str] = []
    for kind, payload in pieces:
        if kind == "L" and payload in recurring:
            if variable:
                runs.append(("V", "".join(variable)))
                variable = []
            runs.append(("K", payload))
        elif kind == "L":
            variable.append(payload)  # type: ignore[arg-type]
        else:
            if variable:
                runs.append(("V", "".join(variable)))
                variable = []
            runs.append(("E", payload))
    if variable:
        runs.append(("V", "".join(variable)))
    return runs


# ---- step 4: assign, count, write ------------------------------------------------------------------------


def mine(
    db: sqlite_utils.Database, config: MineConfig | None = None, progress: Callable[[str], None] | None = None
) -> MineResult:
    config = config or MineConfig()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    n_rows, requests = load_requests(db)
    say(f"read {n_rows} requests ({len(requests)} text-only chat requests)")
    shapes = [shape_of(r.messages) for r in requests]
    mined = candidate_templates(shapes, config)
    say(f"found {len(mined)} candidate templates")

    known = load_templates(db)
    by_id: dict[str, Template] = {t.id: t for t in known}
    examples: dict[str, ExampleInfo] = known_examples(db)
    for candidate in mined:
        fresh = candidate.template
        examples.update(candidate.examples)
        old = by_id.get(fresh.id)
        if old is not None:  # same template as an earlier run: keep its name, widen its pool
            fresh = Template(
                fresh.id,
                fresh.messages,
                old.name,
                {**old.inline_pool, **fresh.inline_pool},
                {**old.turn_pool, **fresh.turn_pool},
            )
        by_id[fresh.id] = fresh
    known_ids = {t.id for t in known}
    ordered = [by_id[t.id] for t in known] + [t for tid, t in by_id.items() if tid not in known_ids]
    matcher = Matcher(ordered)
    matches = [matcher.match_shape(shape) for shape in shapes]
    say(f"matched the log against {len(matcher)} templates")

    counts = Counter(m.template_id for m in matches if m is not None)
    kept = [t for t in ordered if t.id in known_ids or counts[t.id] >= config.min_support]
    if len(kept) < len(ordered):  # requests of a dropped candidate may belong to a kept template
        kept_ids, matcher = {t.id for t in kept}, Matcher(kept)
        matches = [
            m if m is None or m.template_id in kept_ids else matcher.match_shape(shape)
            for m, shape in zip(matches, shapes, strict=True)
        ]
    rows = template_rows(kept, requests, matches)
    write_tables(db, kept, rows, examples, requests, matches)
    new_ids = [t.id for t in kept if t.id not in known_ids]
    return MineResult(
        n_rows,
        len(requests),
        sum(m is not None for m in matches),
        sorted(rows, key=lambda r: -r["est_monthly_saving"]),
        new_ids,
        time.perf_counter() - started,
    )
