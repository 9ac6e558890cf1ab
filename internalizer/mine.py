"""`promptintern mine`: find recurring prompt templates in the request log and write them to the database.

1. Every request is cut into its role skeleton (system messages, few-shot turns, the rest) and each message
   into units: lines, or sentences of a one-line message. Identical message texts are cut once.
2. Requests are grouped top down, by what they have in common rather than by a list of delimiters. A group
   (at first: all requests of one role skeleton) becomes a template when its requests share static lines and
   everything between them is explained: the same text, example blocks drawn from a pool, or slots
   (mine_align, mine_blocks). Otherwise the group is split: on the unit the alignment names (the line two
   wordings differ by, a line only most requests have), else by each request's most common unit, which
   keys apart templates that share nothing. Lines learned to be pool blocks never key a group: if a first
   pass let one anchor a template, mining runs again without them.
3. The matcher built from these templates (and the templates of earlier runs, which keep their ids and come
   first) is run over the whole log: what it matches is what the gateway would match, so the counts, the
   `request_templates` rows and the examples' use counts come from it. Everything is written in one
   transaction: a failure leaves the previous tables intact.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from gateway.templates.matcher import Matcher, Template, load_templates
from gateway.templates.request_shape import Shape, shape_of
from internalizer.mine_align import (
    AlignConfig,
    ExampleInfo,
    GroupRequest,
    MinedTemplate,
    Outcome,
    align_group,
)
from internalizer.mine_store import known_examples, load_requests, template_rows, write_tables
from internalizer.mine_text import Units, eligible, normalized, one_word_changed, units_of

MAX_DEPTH = 24  # splits below one role skeleton; each split makes a group strictly smaller
SAMPLE = 600  # requests of a group its template is learned from


@dataclass(frozen=True)
class MineConfig:
    min_support: int = 5  # requests a template needs, and sends that make a line or a value recur
    min_static_chars: int = 20
    max_conversation_share: float = 0.2


@dataclass
class MineResult:
    n_requests: int  # rows in the log
    n_matchable: int  # text-only chat requests
    n_assigned: int  # requests that belong to a template
    templates: list[dict]  # template rows as written, by potential saving
    new_ids: list[str]
    seconds: float


# ---- steps 1-2: candidate templates --------------------------------------------------------------------


def candidate_templates(shapes: list[Shape], config: MineConfig) -> list[MinedTemplate]:
    cut: dict[str, Units] = {}
    requests: list[GroupRequest] = []
    by_skeleton: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, shape in enumerate(shapes):
        elements = [None if text is None else _units(cut, text) for text in shape.texts]
        requests.append(GroupRequest(elements, shape.pairs))
        by_skeleton[shape.skeleton].append(index)
    grouper = _Grouper(shapes, requests, config)
    found = _without_near_misses(grouper.run(by_skeleton), requests)
    pool: Counter[tuple[int, str]] = Counter()
    for _, outcome in found:
        pool.update(outcome.pool_units)
    # A block of one template's pool anchored another template: mine that skeleton again, pool lines never
    # keying a group nor anchoring a template.
    redo = {shapes[members[0]].skeleton for members, outcome in found if outcome.anchors & pool.keys()}
    if redo:
        grouper.never_key = frozenset(pool)
        again = _without_near_misses(grouper.run({s: by_skeleton[s] for s in redo}), requests)
        found = [f for f in found if shapes[f[0][0]].skeleton not in redo] + again
    found.sort(key=lambda item: -len(item[0]))
    return [outcome.template for _, outcome in found]  # type: ignore[misc]


def _without_near_misses(
    found: list[tuple[list[int], Outcome]], requests: list[GroupRequest]
) -> list[tuple[list[int], Outcome]]:
    """Drop a group whose varying text, in most of its requests, holds a static line of a larger template
    with at most one word changed: requests that each changed a word of that template's instructions share
    all the rest, so they look like a template whose slot starts at the changed word. They are its
    near-misses. (Example blocks may be shared: two wordings of one app draw from one pool.)"""
    kept: list[tuple[list[int], Outcome]] = []
    claimed: set[str] = set()
    for members, outcome in sorted(found, key=lambda item: -len(item[0])):
        template = outcome.template.template  # type: ignore[union-attr]
        static = {unit for _, unit in outcome.anchors}
        for part in (p for spec in template.messages for p in spec.parts if isinstance(p, str)):
            static.update(line + end for line in part.split("\n") for end in ("\n", ""))
        own = static | {unit for _, unit in outcome.pool_units}
        for block in template.inline_pool:
            own.update(line + end for line in block.split("\n") for end in ("\n", ""))
        numbered = {normalized(unit) for unit in static}  # `## Example 3` comes from `## Example 1`
        sample = members[:200]
        near = 0
        for i in sample:
            varying = {
                u
                for units in requests[i].elements
                for u in units or ()
                if u not in own and eligible(u) and normalized(u) not in numbered
            }
            near += any(key in claimed for line in varying for key in one_word_changed(line))
        if claimed and 2 * near >= len(sample):
            continue
        kept.append((members, outcome))
        claimed.update(key for unit in static if eligible(unit) for key in one_word_changed(unit))
    return kept


def _units(cut: dict[str, Units], text: str) -> Units:
    """Each distinct message text is cut once: a system prompt sent 10,000 times costs one cut."""
    units = cut.get(text)
    if units is None:
        units = cut[text] = units_of(text)
    return units


class _Grouper:
    """Top-down grouping (step 2): align a group, keep its template or split it, recurse."""

    def __init__(self, shapes: list[Shape], requests: list[GroupRequest], config: MineConfig) -> None:
        self.shapes = shapes
        self.requests = requests
        self.config = config
        self.align = AlignConfig(config.min_support, config.min_static_chars, config.max_conversation_share)
        self.never_key: frozenset[tuple[int, str]] = frozenset()

    def run(self, by_skeleton: dict[tuple[str, ...], list[int]]) -> list[tuple[list[int], Outcome]]:
        found: list[tuple[list[int], Outcome]] = []
        for skeleton, members in by_skeleton.items():
            self._mine(skeleton, members, found, 0)
        return found

    def _mine(self, skeleton: tuple[str, ...], members: list[int], found: list, depth: int) -> None:
        if len(members) < self.config.min_support:
            return
        # A template is learned from an even sample of a large group; the matcher then runs over all of it.
        step = -(-len(members) // SAMPLE)
        sample = [self.requests[i] for i in members[::step]]
        outcome = align_group(skeleton, sample, self.align, self.never_key)
        if outcome.template is not None:
            if step > 1:
                self._complete_pool(skeleton, outcome.template, members, sample)
            found.append((members, outcome))
            return
        if depth >= MAX_DEPTH:
            return
        for part in self._split(members, outcome):
            if len(part) < len(members):
                self._mine(skeleton, part, found, depth + 1)

    def _complete_pool(
        self, skeleton: tuple[str, ...], mined: MinedTemplate, members: list[int], sample: list[GroupRequest]
    ) -> None:
        """Examples of the group that the sample did not show join the pool: the requests the template does
        not match are aligned again (with some of the sample), and if that gives the same template, its
        pool is merged in."""
        matcher = Matcher([mined.template])
        missed = [i for i in members if matcher.match_shape(self.shapes[i]) is None]
        if len(missed) < self.config.min_support:
            return
        again = align_group(
            skeleton,
            [self.requests[i] for i in missed[:SAMPLE]] + sample[:SAMPLE],
            self.align,
            self.never_key,
        )
        if again.template is not None and again.template.template.id == mined.template.id:
            old, new = mined.template, again.template.template
            mined.template = Template(
                old.id,
                old.messages,
                old.name,
                {**new.inline_pool, **old.inline_pool},
                {**new.turn_pool, **old.turn_pool},
            )
            mined.examples.update(again.template.examples)

    def _split(self, members: list[int], outcome: Outcome) -> list[list[int]]:
        """On the hint when there is one; else by each request's most common unit that does not key the
        whole group (static in all of it) and is not a pool line."""
        if outcome.hint is not None:
            e, unit = outcome.hint
            holds = [i for i in members if unit in (self.requests[i].elements[e] or ())]
            return [holds, [i for i in members if unit not in (self.requests[i].elements[e] or ())]]
        texts: Counter[tuple[int, Units]] = Counter()
        for i in members:
            for e, units in enumerate(self.requests[i].elements):
                if units is not None:
                    texts[(e, units)] += 1
        counts: Counter[tuple[int, str]] = Counter()
        for (e, units), weight in texts.items():
            for unit in set(units):
                if eligible(unit):
                    counts[(e, unit)] += weight
        skip = outcome.anchors | self.never_key
        n = len(members)
        usable = {key for key, c in counts.items() if self.config.min_support <= c < n and key not in skip}
        best_of: dict[tuple[int, Units], tuple[int, int, str] | None] = {}
        for e, units in texts:
            keys = [(counts[(e, u)], -e, u) for u in set(units) if (e, u) in usable]
            best_of[(e, units)] = max(keys) if keys else None
        parts: dict[object, list[int]] = defaultdict(list)
        for i in members:
            keys = [
                best_of[(e, units)]
                for e, units in enumerate(self.requests[i].elements)
                if units is not None and best_of[(e, units)] is not None
            ]
            parts[max(keys) if keys else None].append(i)  # type: ignore[type-var]
        return list(parts.values())


# ---- step 3: assign, count, write ------------------------------------------------------------------------


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
