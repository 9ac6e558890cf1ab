"""Text helpers for mining: cutting a message into units, and aligning text that varies into static + slots.

A unit is a line (with its newline), or a sentence when the whole message is one line: the pieces in which a
template's static text recurs whole across requests. `align_slots` turns the values one stretch of text takes
across a group of requests into static prefix, slot(s) and static suffix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache

from gateway.templates.matcher import Part, Slot

Units = tuple[str, ...]

THREE_LETTERS = re.compile(r"[^\W\d_].*?[^\W\d_].*?[^\W\d_]")
SENTENCE_END = re.compile(r"(?<=[.?!] )(?=\S)")
DIGITS = re.compile(r"\d+")
SHAPE = re.compile(r"\s*[^\w\s]*\w*")
# A label at a line start (`Question:`, `<question>`, `## Question`, `**Question**`): where a second slot may
# end and the query begin inside one stretch of varying text. Only a candidate: the data must confirm it.
LABEL = re.compile(
    r"[ \t]*(?:<[A-Za-z][\w-]*[^>\n]*>|\#{1,6}[ \t][^\n]{1,40}|\*\*[^*\n]{1,40}\*\*:?"
    r"|[A-Za-z][\w ()/'-]{0,30}?[ \t]*:)"
)
WORD_LABEL = re.compile(r"[^\w\n]*\w+[^\w\n]*[^\w\s][^\w\n]*")  # `Q -> `, `- Q: `, `{"question": "`
LABEL_TAIL = re.compile(r"[:>] ((?:[A-Za-z0-9'-]+ ){1,4})$")
QUERY_END = re.compile(r"[.?!]+\n")  # the queries' own final punctuation before the next line


def units_of(text: str) -> Units:
    """Lines (keeping their newline); a one-line text is cut into sentences instead, so that instructions
    sharing the only line with the query (`You are a bash expert. Convert: {query}`) still recur as units."""
    if "\n" not in text:
        return tuple(part for part in SENTENCE_END.split(text) if part)
    lines = text.split("\n")
    return tuple(line + "\n" for line in lines[:-1]) + ((lines[-1],) if lines[-1] else ())


CACHE = 1 << 18  # distinct lines whose per-line facts are remembered: pool lines recur across requests


@lru_cache(maxsize=CACHE)
def eligible(unit: str) -> bool:
    """Units that may key a group: real text, not blank lines or lone punctuation shared by everything."""
    return THREE_LETTERS.search(unit) is not None


@lru_cache(maxsize=CACHE)
def normalized(unit: str) -> str:
    """A unit with its numbers blanked: `Example 3:` and `Example 4:` are the same frame line."""
    return DIGITS.sub("#", unit.strip())


@lru_cache(maxsize=CACHE)
def shape(unit: str) -> str:
    """Leading punctuation and first word of a line (`Q`, `<input`, `{"input`): what repeated blocks share."""
    return SHAPE.match(unit).group()  # type: ignore[union-attr]


def align_slots(values: Sequence[str], slot_numbers: Iterator[int]) -> list[Part]:
    """Static prefix, slot(s), static suffix of a stretch of text that varies (only static if it never does).

    Two slots are made only where every value holds the same label line exactly once
    (`{context}\\n\\nQuestion: {query}`). Prefix and suffix are snapped to word boundaries.
    """
    if all(v == values[0] for v in values):
        return [values[0]]
    prefix = _trim_label_tail(_snap_prefix(os.path.commonprefix(list(values)), values))
    rests = [v[len(prefix) :] for v in values]
    reversed_suffix = os.path.commonprefix([r[::-1] for r in rests])
    suffix = _snap_suffix(reversed_suffix[::-1], rests)
    suffix = suffix.lstrip(".?!") if QUERY_END.match(suffix) else suffix
    cores = [r[: len(r) - len(suffix)] for r in rests]
    label = inner_label(cores)
    if label is not None:
        cuts = [c.index(label) for c in cores]
        left = align_slots([c[:cut] for c, cut in zip(cores, cuts, strict=True)], slot_numbers)
        right = [c[cut + len(label) :] for c, cut in zip(cores, cuts, strict=True)]
        return [prefix, *left, label, *align_slots(right, slot_numbers), suffix]
    return [prefix, Slot(f"slot#{next(slot_numbers)}", multiline=any("\n" in c for c in cores)), suffix]


def inner_label(values: Sequence[str]) -> str | None:
    """A line-start label (`\\n\\nQuestion: `) found exactly once in every value, not at its very start."""
    lines = min(values, key=len).split("\n")
    for i in range(1, len(lines)):
        blanks = 0
        while blanks < i - 1 and not lines[i - 1 - blanks].strip():
            blanks += 1
        for pattern in (LABEL, WORD_LABEL):
            match = pattern.match(lines[i])
            if match is None:
                continue
            label = lines[i][: match.end()] + (" " if lines[i][match.end() : match.end() + 1] == " " else "")
            for before in range(1, blanks + 2):  # `\nQ: `, or `\n\nQ: ` when blocks above are labelled alike
                candidate = "\n" * before + label
                if all(v.count(candidate) == 1 and not v.startswith(candidate) for v in values):
                    return candidate
    if all(v.count("\n\n") == 1 and not v.startswith("\n\n") and not v.endswith("\n\n") for v in values):
        return "\n\n"  # one blank line in every value: two parts (examples too rare to pool, then the query)
    return None


def _trim_label_tail(prefix: str) -> str:
    """`Question: Change the ` -> `Question: `: a few plain words after a label, shared by every value of a
    small group, are the start of the queries, not template text."""
    found = LABEL_TAIL.search(prefix)
    return prefix[: found.start(1)] if found else prefix


def _snap_prefix(prefix: str, values: Sequence[str]) -> str:
    """Cut a common prefix back to a word boundary when it ends inside a word of some value."""
    n = len(prefix)
    if n and prefix[-1].isalnum() and any(len(v) > n and v[n].isalnum() for v in values):
        while n and prefix[n - 1].isalnum():
            n -= 1
    return prefix[:n]


def _snap_suffix(suffix: str, values: Sequence[str]) -> str:
    n = len(suffix)
    if n and suffix[0].isalnum() and any(len(v) > n and v[len(v) - n - 1].isalnum() for v in values):
        cut = 0
        while cut < n and suffix[cut].isalnum():
            cut += 1
        return suffix[cut:]
    return suffix


def majority_prefix(texts: Sequence[str], share: float = 0.8) -> str:
    """The longest prefix that at least `share` of the texts start with."""
    alive, i, need = list(texts), 0, share * len(texts)
    while alive:
        chars: dict[str, int] = {}
        for t in alive:
            if len(t) > i:
                chars[t[i]] = chars.get(t[i], 0) + 1
        if not chars:
            break
        char, n = max(chars.items(), key=lambda item: item[1])
        if n < need:
            break
        alive = [t for t in alive if len(t) > i and t[i] == char]
        i += 1
    return alive[0][:i] if alive else ""


def frame_prefix(texts: Sequence[str], share: float = 0.8) -> str:
    """Majority prefix cut back to end outside a word: the frame of blocks never ends inside their content."""
    prefix = majority_prefix(texts, share)
    while prefix and prefix[-1].isalnum():
        prefix = prefix[:-1]
    return prefix


def frame_suffix(texts: Sequence[str], share: float = 0.8) -> str:
    suffix = majority_prefix([t[::-1] for t in texts], share)[::-1]
    while suffix and suffix[0].isalnum():
        suffix = suffix[1:]
    return suffix


@lru_cache(maxsize=CACHE)
def one_word_changed(line: str) -> tuple[str, ...]:
    """Keys two lines share when they have the same words but at most one (lines of three words or more)."""
    words = line.rstrip("\n").split(" ")
    if len(words) < 3:
        return ()
    return tuple(" ".join(words[:k]) + "\0" + " ".join(words[k + 1 :]) for k in range(len(words)))
