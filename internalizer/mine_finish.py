"""Finishing a mined template: whether it is worth keeping, and the names of its slots and of itself."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.templates.matcher import QUERY_SLOT, MessageSpec, Part, Slot
from internalizer.mine_text import Units

QUERY_LABELS = {"question", "query", "q", "input", "request", "task", "user", "instruction", "prompt", "text"}


@dataclass(frozen=True)
class AlignConfig:
    min_support: int = 5  # requests that make a value or a line recur
    min_static_chars: int = 20  # non-blank characters of static text a template needs
    # User/assistant turns are a conversation's history, not few-shot examples, when this share of the
    # requests carry an earlier request of the group as their history plus its last user message.
    max_conversation_share: float = 0.2


@dataclass
class GroupRequest:
    """One request cut for mining: its units per skeleton element (None for the few-shot turns run)."""

    elements: list[Units | None]
    pairs: list[tuple[str, str]]


def merge_static(parts: list[Part]) -> list[Part]:
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


def valid(specs: list[MessageSpec], config: AlignConfig) -> bool:
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
    return True


def conversation(group: list[GroupRequest], config: AlignConfig) -> bool:
    """Whether the turns of the group are chat histories: request B's turns start with request A's turns
    followed by A's last user message (A's answer came next). Few-shot turns never continue a query."""
    last = {(tuple(r.pairs), "".join(r.elements[-1] or ())) for r in group}
    continued = sum(
        any((tuple(r.pairs[:j]), r.pairs[j][0]) in last for j in range(len(r.pairs))) for r in group
    )
    return continued > config.max_conversation_share * len(group)


def name_slots(specs: list[MessageSpec]) -> list[MessageSpec]:
    """Slots are named after the label before them (`Context:` -> context). The query is the last slot of
    the last message that has slots whose label reads like a question (`Question:`, `Input:`...), else the
    last slot of that message (a context document, examples too rare to pool, come before the question)."""
    located = [
        (m, k) for m, spec in enumerate(specs) for k, p in enumerate(spec.parts) if isinstance(p, Slot)
    ]
    last_message = located[-1][0]
    labels = {loc: _label(specs[loc[0]].parts[loc[1] - 1] if loc[1] else "") for loc in located}
    in_last = [loc for loc in located if loc[0] == last_message]
    query_at = next((loc for loc in reversed(in_last) if labels[loc] in QUERY_LABELS), in_last[-1])
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


def template_name(specs: list[MessageSpec]) -> str:
    """A readable name: the first words of the static text."""
    text = " ".join(p for spec in specs for p in spec.parts if isinstance(p, str))
    words = re.findall(r"[A-Za-z0-9']+", text)[:7]
    return "-".join(w.lower() for w in words)[:60] or "template"
