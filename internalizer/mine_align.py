"""Turn one group of requests into a template: static lines, regions that vary, slots and example pools.

The group shares a role skeleton. In each message, the units (lines, or sentences of a one-line message) found
exactly once in every request of the group, always in the same order, are the template's static lines: its
anchors. (Not a numbered line whose number counts up in other requests, `Example 1:`, nor a line shaped like
the example blocks next to it: an example every request of a small group happened to carry.) The text
between two anchors is a region. Across the group a region is the same everywhere (static), a run of
example blocks drawn from a pool followed by a tail (mine_blocks), or text that varies, aligned into static
prefix, slot(s) and static suffix. Static text that writes out the same examples in every request gets an
examples part too. Label patterns (`Question:`) only propose where one slot may end and the next begin:
the requests decide.

A region whose values repeat as wholes (two wordings of the instructions), or whose varying values share a
recurring line, is not a slot: the group mixes templates, and the outcome names a unit to split it on.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.templates.matcher import (
    MessageSpec,
    Part,
    Slot,
    Template,
    example_hash,
    template_id,
    turn_raw,
)
from gateway.templates.request_shape import TURNS_ROLE
from internalizer.mine_blocks import RunFound, find_run, fixed_run
from internalizer.mine_cut import repeats_as_frame
from internalizer.mine_finish import (
    AlignConfig,
    GroupRequest,
    conversation,
    merge_static,
    name_slots,
    template_name,
    valid,
)
from internalizer.mine_frame import Frame
from internalizer.mine_text import DIGITS, Units, align_slots, eligible, normalized

_PARTS = Template("", [])  # matches static/slot parts the way the gateway will


@dataclass
class ExampleInfo:
    input: str
    output: str
    raw: str


@dataclass
class MinedTemplate:
    template: Template
    examples: dict[str, ExampleInfo] = field(default_factory=dict)  # hash -> text


@dataclass
class Outcome:
    """What a group gave: a template, or a unit to split the group on (None: split on its commonest unit)."""

    template: MinedTemplate | None = None
    hint: tuple[int, str] | None = None  # (skeleton element, unit)
    anchors: set[tuple[int, str]] = field(default_factory=set)
    pool_units: set[tuple[int, str]] = field(default_factory=set)  # lines of pool blocks: never group keys


@dataclass
class _Region:
    parts: list[Part]
    blocks: dict[str, ExampleInfo] = field(default_factory=dict)  # raw -> example
    pool_lines: set[str] = field(default_factory=set)
    frame: Frame | None = None  # the shape of its example blocks, if it holds a run
    block_anchors: set[str] = field(default_factory=set)


class _Split(Exception):
    """A region that says the group mixes templates; `unit` (if any) tells them apart."""

    def __init__(self, unit: str | None) -> None:
        self.unit = unit


def align_group(
    skeleton: tuple[str, ...],
    group: list[GroupRequest],
    config: AlignConfig,
    never_anchor: frozenset[tuple[int, str]] = frozenset(),
) -> Outcome:
    """The template shared by every request of the group, or where to split the group. Units in
    `never_anchor` (lines of pool blocks seen elsewhere) are never static lines."""
    outcome = Outcome()
    n = len(group)
    texts = [Counter(r.elements[e] for r in group) for e in range(len(skeleton))]
    banned = [{u for f, u in never_anchor if f == e} for e in range(len(skeleton))]
    anchors = [
        [] if role == TURNS_ROLE else _anchors(texts[e], n, banned[e]) for e, role in enumerate(skeleton)
    ]
    if not any(eligible(a) for found in anchors for a in found):
        return outcome  # nothing static in common: a mix of templates
    slot_numbers = itertools.count()
    examples: dict[str, ExampleInfo] = {}
    inline_pool: dict[str, str] = {}
    turn_pool: dict[tuple[str, str], str] = {}
    specs: list[MessageSpec] = []
    for e, role in enumerate(skeleton):
        if role == TURNS_ROLE:
            for request in group:
                for user, assistant in request.pairs:
                    raw = turn_raw(user, assistant)
                    digest = example_hash(raw)
                    turn_pool[(user, assistant)] = digest
                    examples[digest] = ExampleInfo(user, assistant, raw)
            specs.append(MessageSpec(TURNS_ROLE))
            continue
        while True:
            try:
                message = _message(texts[e], anchors[e], slot_numbers, config)
            except _Split as split:
                outcome.anchors = {(f, a) for f, found in enumerate(anchors) for a in found}
                outcome.hint = (e, split.unit) if split.unit else None
                return outcome
            if not message.block_anchors:
                break
            banned[e] |= message.block_anchors  # an example every request happened to carry
            anchors[e] = _anchors(texts[e], n, banned[e])
        for raw, info in message.blocks.items():
            digest = example_hash(raw)
            inline_pool[raw] = digest
            examples[digest] = info
        outcome.pool_units |= {(e, line) for line in message.pool_lines}
        parts = _with_fixed_examples(merge_static(message.parts), inline_pool, examples)
        specs.append(MessageSpec(role, tuple(parts)))
    outcome.anchors = {(e, a) for e, found in enumerate(anchors) for a in found}
    if not valid(specs, config) or (TURNS_ROLE in skeleton and conversation(group, config)):
        return outcome
    specs = name_slots(specs)
    template = Template(template_id(specs), specs, template_name(specs), inline_pool, turn_pool)
    outcome.template = MinedTemplate(template, examples)
    return outcome


def _message(
    texts: Counter[Units | None], anchors: list[str], slot_numbers: Iterator[int], config: AlignConfig
) -> _Region:
    """One message of the template: its anchors with the parts of each region between them.

    An example every request of a small group happened to carry is static in all of them: it comes back in
    `block_anchors` when it is shaped like the blocks of an example run next to it and text varies on both
    of its sides (a fixed first example has static text on one side, and stays static)."""
    regions = _regions(texts, anchors)
    found: list[_Region | _Split] = []
    for region in regions:
        try:
            found.append(_region(region, slot_numbers, config))
        except _Split as split:
            found.append(split)
    message = _Region([])
    for j, region in enumerate(found):
        if isinstance(region, _Region) and region.frame is not None and region.frame.informative:
            message.block_anchors |= _block_anchors(anchors, regions, j, region.frame)
    if message.block_anchors:
        return message  # align again without them first: that may also explain a region that failed
    for j, region in enumerate(found):
        if isinstance(region, _Split):
            raise region
        message.parts += region.parts
        message.blocks.update(region.blocks)
        message.pool_lines |= region.pool_lines
        if j < len(anchors):
            message.parts.append(anchors[j])
    return message


def _block_anchors(anchors: list[str], regions: list[Counter[Units]], j: int, frame: Frame) -> set[str]:
    """Anchors next to region j (an example run) that are shaped like its blocks, with text that varies on
    their far side: a whole block (its lines in a row), or the first line of a block after the run (its
    last line varies: it ends the message in some requests) or the last line of one before it."""
    height = len(frame.lines)
    found: set[str] = set()
    for start, beyond in ((j, j + height), (j - height, j - height)):
        near = anchors[max(0, start) : start + height]
        if start >= 0 and len(near) == height and 0 <= beyond < len(regions) and len(regions[beyond]) > 1:
            if frame.fits("".join(near).removesuffix("\n")):
                found |= set(near)
    if j < len(anchors) and j + 1 < len(regions) and len(regions[j + 1]) > 1:
        if frame.fits_line(anchors[j].removesuffix("\n"), 0):
            found.add(anchors[j])
    if j > 0 and len(regions[j - 1]) > 1 and frame.fits_line(anchors[j - 1].removesuffix("\n"), -1):
        found.add(anchors[j - 1])
    return found


# ---- anchors and regions ------------------------------------------------------------------------------


def _anchors(texts: Counter[Units | None], n: int, banned: set[str]) -> list[str]:
    """Units found exactly once in every request, at the same rank among such units in every request."""
    possible = {u for u in next(iter(texts)) or () if u.strip() and u not in banned}  # in the first text
    lines = {u.rstrip("\n") for u in possible}
    once: Counter[str] = Counter()
    for units, weight in texts.items():
        seen: dict[str, int] = {}
        for unit in units or ():
            line = unit.rstrip("\n")  # `</example>` ends the message in some requests, a line in others
            if line in lines:
                seen[line] = seen.get(line, 0) + 1
        for unit in units or ():
            if unit in possible and seen[unit.rstrip("\n")] == 1:
                once[unit] += weight
    candidates = {u for u, k in once.items() if k == n}
    # `Example 1:` once in every request, `Example 2:`... in some (a fifth at least): a run of examples
    forms = {normalized(u) for u in candidates if DIGITS.search(u)}
    if forms:
        numbered: Counter[str] = Counter()
        for units, weight in texts.items():
            found: dict[str, list[str]] = defaultdict(list)
            for unit in units or ():
                if normalized(unit) in forms:
                    found[normalized(unit)].append(unit)
            numbered.update({form: weight for form, lines in found.items() if repeats_as_frame(lines)})
        candidates = {u for u in candidates if 5 * numbered[normalized(u)] < n}
    if not candidates:
        return []
    rank: dict[str, int] = {}
    unstable: set[str] = set()
    for units in texts:
        r = 0
        for unit in units or ():
            if unit in candidates:
                if rank.setdefault(unit, r) != r:
                    unstable.add(unit)  # example blocks in every request, in varying order
                r += 1
    first = next(iter(texts)) or ()
    return [unit for unit in first if unit in candidates and unit not in unstable]


def _regions(texts: Counter[Units | None], anchors: list[str]) -> list[Counter[Units]]:
    """Per region (before the first anchor, between anchors, after the last): its values and their counts."""
    regions: list[Counter[Units]] = [Counter() for _ in range(len(anchors) + 1)]
    for units, weight in texts.items():
        j, current = 0, []
        for unit in units or ():
            if j < len(anchors) and unit == anchors[j]:
                regions[j][tuple(current)] += weight
                current, j = [], j + 1
            else:
                current.append(unit)
        regions[j][tuple(current)] += weight
    return regions


def _region(region: Counter[Units], slot_numbers: Iterator[int], config: AlignConfig) -> _Region:
    values = list(region)
    weights = [region[v] for v in values]
    texts = ["".join(v) for v in values]
    if len(set(texts)) == 1:
        return _Region([texts[0]])
    found = find_run(texts, weights)
    if isinstance(found, str):
        raise _Split(found)
    if found is None:
        _check_varying(values, weights, config.min_support)
        return _Region(align_slots(texts, slot_numbers))
    return _run_region(texts, weights, found, slot_numbers, config)


def _run_region(
    texts: list[str], weights: list[int], found: RunFound, slot_numbers: Iterator[int], config: AlignConfig
) -> _Region:
    """Leading text, the example run, and the tail (what follows the last block: often the query)."""
    clean = [
        (text[run[-1][1] :], w)
        for text, run, w in zip(texts, found.runs, weights, strict=True)
        if run and run[-1][0] in found.known
    ]
    if not clean:  # no run ends with a block seen twice (a large pool): take every run as it is
        clean = [
            (text[run[-1][1] :], w) for text, run, w in zip(texts, found.runs, weights, strict=True) if run
        ]
    if not clean:
        raise _Split(None)
    tails = Counter()
    for tail, w in clean:
        tails[tail] += w
    _check_varying([_lines(t) for t in tails], list(tails.values()), config.min_support)
    tail_parts = _guarded(align_slots(list(tails), slot_numbers), found, list(tails))
    blocks: dict[str, ExampleInfo] = {}
    for text, run in zip(texts, found.runs, strict=True):
        for n in range(len(run or ()), 0, -1):
            if _PARTS._match_parts(tuple(tail_parts), text[run[n - 1][1] :], {}, []):  # type: ignore[index]
                for block, _ in run[:n]:  # type: ignore[index]
                    blocks[block] = ExampleInfo(*found.frame.input_output(block), block)
                break
    pool_lines = {line + end for block in found.known for line in block.split("\n") for end in ("\n", "")}
    return _Region([found.leading, found.examples, *tail_parts], blocks, pool_lines, found.frame)


def _guarded(parts: list[Part], found: RunFound, tails: list[str]) -> list[Part]:
    """Multi-line slots after a run may not hold the start of another block, so that a request carrying a
    block the pool does not know is not matched with that block swallowed into its query."""
    starts = [found.frame.lines[0][0] if found.frame.lines else "", found.frame.first_prefix]
    forbid = tuple({"\n" + s for s in starts if len(s.strip()) >= 2} | {found.examples.sep} - {""})
    forbid = tuple(f for f in forbid if f.strip())
    if not forbid:
        return parts
    guarded = [Slot(p.name, p.multiline, forbid) if isinstance(p, Slot) and p.multiline else p for p in parts]
    if all(_PARTS._match_parts(tuple(guarded), tail, {}, []) for tail in tails):
        return guarded
    return parts


def _check_varying(values: list[Units], weights: list[int], min_support: int) -> None:
    """Raise _Split when text that should vary per request does not: a whole value sent by many requests
    (another wording of the template) or a line recurring inside values that differ (a template mixed in)."""
    if len(values) < 2:
        return  # the same text everywhere: static
    total = sum(weights)
    unit_weight: Counter[str] = Counter()
    unit_values: Counter[str] = Counter()
    for units, weight in zip(values, weights, strict=True):
        for unit in set(units):
            if eligible(unit):
                unit_weight[unit] += weight
                unit_values[unit] += 1
    candidates = [u for u, w in unit_weight.items() if min_support <= w < total]
    repeated = [(v, w) for v, w in zip(values, weights, strict=True) if w >= min_support]
    if any("".join(v).strip() for v, _ in repeated) and 2 * sum(w for _, w in repeated) >= total:
        raise _Split(max(candidates, key=lambda u: (unit_weight[u], u), default=None))
    inside = [u for u in candidates if unit_values[u] >= 2]
    if inside:
        raise _Split(max(inside, key=lambda u: (unit_weight[u], u)))


def _lines(text: str) -> Units:
    lines = text.split("\n")
    return tuple(line + "\n" for line in lines[:-1]) + ((lines[-1],) if lines[-1] else ())


# ---- the template -------------------------------------------------------------------------------------


def _with_fixed_examples(
    parts: list[Part], inline_pool: dict[str, str], examples: dict[str, ExampleInfo]
) -> list[Part]:
    """Static text that holds example blocks (the same ones in every request) gets an examples part, so the
    examples are known as examples (internalization drops them stage by stage), not as instructions."""
    out: list[Part] = []
    for part in parts:
        found = fixed_run(part) if isinstance(part, str) else None
        if found is None:
            out.append(part)
            continue
        start, end, run, blocks, frame = found
        for block in blocks:
            digest = example_hash(block)
            inline_pool[block] = digest
            examples[digest] = ExampleInfo(*frame.input_output(block), block)
        out += [p for p in (part[:start], run, part[end:]) if p != ""]
    return out
