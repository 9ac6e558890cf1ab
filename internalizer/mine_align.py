"""Turn one group of same-structure requests into a template: static spans, slots, example pools.

Mining has already cut every message into runs that line up across the group (same role skeleton, same
recurring lines in the same order): a recurring line (static), a variable run (the text between recurring
lines), an inline examples region. Here each variable run is aligned across the group: the longest common
prefix and suffix (snapped to word boundaries) are static, what is left is a slot. A run that is the same
in every request is static. Slots get names; the main one is "query".
"""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.templates.matcher import (
    QUERY_SLOT,
    Examples,
    MessageSpec,
    Part,
    Slot,
    Template,
    example_hash,
    template_id,
    turn_raw,
)
from gateway.templates.request_shape import TURNS_ROLE
from internalizer.mine_blocks import MARKER, ExampleRegion

LABEL_TAIL = re.compile(r"[:>] ((?:[A-Za-z0-9'-]+ ){1,4})$")
QUERY_LABELS = {"question", "query", "q", "input", "request", "task", "user", "instruction", "prompt", "text"}
QUERY_END = re.compile(r"[.?!]+\n")  # the queries' own final punctuation before the next line

# A run kind, with its per-request payload: "K" a recurring line (str), "V" variable text (str),
# "E" an inline examples region (ExampleRegion).
Run = tuple[str, object]


@dataclass
class ExampleInfo:
    input: str
    output: str
    raw: str


@dataclass
class AlignedRequest:
    """One request cut into runs: one list of runs per message, None for the few-shot turns run."""

    elements: list[list[Run] | None]
    pairs: list[tuple[str, str]]


@dataclass
class MinedTemplate:
    template: Template
    examples: dict[str, ExampleInfo] = field(default_factory=dict)  # hash -> text


@dataclass(frozen=True)
class AlignConfig:
    min_static_chars: int = 20  # non-blank characters of static text a template needs
    # Few-shot turns: share of their uses that must be of turns seen twice or more. Inline blocks have
    # example markers to go by; bare user/assistant turns could as well be a conversation's history.
    min_example_reuse: float = 0.5


def align_group(
    skeleton: tuple[str, ...], group: list[AlignedRequest], config: AlignConfig
) -> MinedTemplate | None:
    """The template shared by every request of the group, or None when the group is not one."""
    examples: dict[str, ExampleInfo] = {}
    turn_uses: Counter[str] = Counter()
    specs: list[MessageSpec] = []
    slot_numbers = itertools.count()  # provisional slot names, until _name_slots names them
    inline_pool: dict[str, str] = {}
    turn_pool: dict[tuple[str, str], str] = {}
    for position, role in enumerate(skeleton):
        if role == TURNS_ROLE:
            for request in group:
                for user, assistant in request.pairs:
                    raw = turn_raw(user, assistant)
                    digest = example_hash(raw)
                    turn_pool[(user, assistant)] = digest
                    examples[digest] = ExampleInfo(user, assistant, raw)
                    turn_uses[digest] += 1
            specs.append(MessageSpec(TURNS_ROLE))
            continue
        parts: list[Part] = []
        runs = [request.elements[position] or [] for request in group]
        block_start = ""
        for index, (kind, first) in enumerate(runs[0]):
            if kind == "K":
                parts.append(first)  # type: ignore[arg-type]
            elif kind == "E":
                regions: list[ExampleRegion] = [r[index][1] for r in runs]  # type: ignore[misc]
                seps = Counter(sep for region in regions for sep in region.seps)
                parts.append(Examples(seps.most_common(1)[0][0] if seps else "\n\n"))
                for region in regions:
                    for block in region.blocks:
                        digest = example_hash(block.raw)
                        inline_pool[block.raw] = digest
                        examples[digest] = ExampleInfo(block.input, block.output, block.raw)
                first_line = regions[0].blocks[0].raw.split("\n", 1)[0]
                found = MARKER.match(first_line)
                block_start = first_line[: found.end()] if found else ""
            else:
                parts += _align_values([r[index][1] for r in runs], slot_numbers)  # type: ignore[misc]
        if block_start:  # a slot must not swallow an example block the pool does not know
            parts = [
                Slot(p.name, p.multiline, ("\n" + block_start,)) if isinstance(p, Slot) and p.multiline else p
                for p in parts
            ]
        specs.append(MessageSpec(role, tuple(_merge_static(parts))))
    if not _valid(specs, turn_uses, config):
        return None
    specs = _name_slots(specs)
    template = Template(template_id(specs), specs, _name(specs), inline_pool, turn_pool)
    return MinedTemplate(template, examples)


def _align_values(values: list[str], slot_numbers: Iterator[int]) -> list[Part]:
    """Static prefix, slot, static suffix of one variable run (only static if it never varies)."""
    if all(v == values[0] for v in values):
        return [values[0]]
    prefix = _trim_label_tail(_snap_prefix(os.path.commonprefix(values), values))
    rests = [v[len(prefix) :] for v in values]
    reversed_suffix = os.path.commonprefix([r[::-1] for r in rests])
    suffix = _snap_suffix(reversed_suffix[::-1], rests)
    suffix = suffix.lstrip(".?!") if QUERY_END.match(suffix) else suffix
    cores = [r[: len(r) - len(suffix)] for r in rests]
    label = _inner_label(cores)
    if label is not None:  # `{context}\nQuestion: {query}`: two slots around a label every value has once
        cuts = [c.index(label) for c in cores]
        left = _align_values([c[:cut] for c, cut in zip(cores, cuts, strict=True)], slot_numbers)
        right = [c[cut + len(label) :] for c, cut in zip(cores, cuts, strict=True)]
        return [prefix, *left, label, *_align_values(right, slot_numbers), suffix]
    return [prefix, Slot(f"slot#{next(slot_numbers)}", multiline=any("\n" in c for c in cores)), suffix]


def _inner_label(values: list[str]) -> str | None:
    """A line-start label (`\nQuestion: `) found exactly once in every value, not at its very start."""
    for line in min(values, key=len).split("\n")[1:]:
        found = MARKER.match(line)
        if found is None or not found["label"]:
            continue
        label = "\n" + line[: found.end()] + (" " if line[found.end() : found.end() + 1] == " " else "")
        if all(v.count(label) == 1 for v in values):
            return label
    return None


def _trim_label_tail(prefix: str) -> str:
    """`Question: Change the ` -> `Question: `: a few plain words after a label, shared by every value of a
    small group, are the start of the queries (nl2bash has runs of "Change the ..."), not template text."""
    found = LABEL_TAIL.search(prefix)
    return prefix[: found.start(1)] if found else prefix


def _snap_prefix(prefix: str, values: list[str]) -> str:
    """Cut a common prefix back to a word boundary when it ends inside a word of some value."""
    n = len(prefix)
    if n and prefix[-1].isalnum() and any(len(v) > n and v[n].isalnum() for v in values):
        while n and prefix[n - 1].isalnum():
            n -= 1
    return prefix[:n]


def _snap_suffix(suffix: str, values: list[str]) -> str:
    n = len(suffix)
    if n and suffix[0].isalnum() and any(len(v) > n and v[len(v) - n - 1].isalnum() for v in values):
        cut = 0
        while cut < n and suffix[cut].isalnum():
            cut += 1
        return suffix[cut:]
    return suffix


def _merge_static(parts: list[Part]) -> list[Part]:
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += part
                continue
        merged.append(part)
    return merged


def _valid(specs: list[MessageSpec], turn_uses: Counter[str], config: AlignConfig) -> bool:
    slots = [p for spec in specs for p in spec.parts if isinstance(p, Slot)]
    if not slots:
        return False  # the same request over and over: nothing varies, nothing to learn
    static = sum(len("".join(p.split())) for spec in specs for p in spec.parts if isinstance(p, str))
    if static < config.min_static_chars:
        return False  # a few shared words, not a template
    for spec in specs:
        for part, following in zip(spec.parts, spec.parts[1:], strict=False):
            if isinstance(part, Slot) and not isinstance(following, str):
                return False  # no static text to tell where the slot ends
    if turn_uses:
        reused = sum(n for n in turn_uses.values() if n >= 2)
        if reused < config.min_example_reuse * sum(turn_uses.values()):
            return False  # turns that never recur: a conversation's history, not a few-shot pool
    return True


def _name_slots(specs: list[MessageSpec]) -> list[MessageSpec]:
    """Slots are named after the label before them (`Context:` -> context). The query is the slot of the
    last message that has slots whose label reads like a question (`Question:`, `Input:`...), else the
    last slot of that message (a context document comes before the question in most prompts)."""
    located = [
        (m, k) for m, spec in enumerate(specs) for k, p in enumerate(spec.parts) if isinstance(p, Slot)
    ]
    last_message = located[-1][0]
    labels = {loc: _label(specs[loc[0]].parts[loc[1] - 1] if loc[1] else "") for loc in located}
    in_last = [loc for loc in located if loc[0] == last_message]
    query_at = next((loc for loc in in_last if labels[loc] in QUERY_LABELS), in_last[-1])
    used = {QUERY_SLOT, "examples"}
    renamed: list[MessageSpec] = []
    for m, spec in enumerate(specs):
        parts: list[Part] = []
        for k, part in enumerate(spec.parts):
            if isinstance(part, Slot):
                name = QUERY_SLOT if (m, k) == query_at else _unique(labels[(m, k)], used)
                used.add(name)
                part = Slot(name, part.multiline, part.forbid)
            parts.append(part)
        renamed.append(MessageSpec(spec.role, tuple(parts)))
    return renamed


def _label(before: Part) -> str:
    """`Context:\n` -> context, `<document>` -> document: the label ending the static text before a slot."""
    if not isinstance(before, str):
        return ""
    for line in reversed(before.rstrip().split("\n")[-2:]):  # `Reference:\n- {{reference}}`
        plain = re.sub(r"<[^>]*?([A-Za-z][\w-]*)>", r"\1", line).lower()
        label = re.sub(r"[^a-z0-9]+", "_", plain).strip("_")[-24:].strip("_")
        if label:
            return label
    return ""


def _unique(label: str, used: set[str]) -> str:
    base = label if label and label[0].isalpha() else "slot"
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base}_{n}"
    return name


def _name(specs: list[MessageSpec]) -> str:
    """A readable name: the first words of the static text."""
    text = " ".join(p for spec in specs for p in spec.parts if isinstance(p, str))
    words = re.findall(r"[A-Za-z0-9']+", text)[:7]
    return "-".join(w.lower() for w in words)[:60] or "template"
