"""Cut one message into the pieces mining aligns: lines, and regions of inline few-shot example blocks.

Inline examples are found per message, without looking at other requests: a block is a run of lines that
starts with a marker line (`Input:`, `Q:`, `<example>`, `### ...`) and repeats the same sequence of markers
as the blocks around it (`Input:` then `Output:`...). The block whose answer is empty is the query block
(`Input: {query}\\nOutput:`), not an example. Needs at least two blocks with the same start marker.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

MARKER = re.compile(
    r"""^[ \t]*(?:
        <(?P<tag>/?[A-Za-z][\w-]*)[^>\n]*>           # <tag ...> or </tag>
      | (?P<hashes>\#{1,6})[ \t]                     # markdown heading
      | \*\*(?P<bold>[^*\n:]{1,40}?):?\*\*:?          # **Label**, **Label:**, **Label**:
      | (?P<label>[A-Za-z][\w ()/'-]{0,30}?)[ \t]*:(?=[ \t]|$)   # Label:
    )""",
    re.X,
)
CLOSING_TAG = re.compile(r"</[A-Za-z][\w-]*>\s*$")
DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class Block:
    raw: str  # exact text, trailing whitespace excluded
    input: str
    output: str


@dataclass(frozen=True)
class ExampleRegion:
    start: int  # character offsets in the message text
    end: int
    blocks: tuple[Block, ...]
    seps: tuple[str, ...]  # whitespace between consecutive blocks


def marker(line: str) -> str | None:
    """The structural label a line starts with ("Input:", "<output>", "#2"), "" for blank, None for text."""
    if not line.strip():
        return ""
    found = MARKER.match(line)
    if found is None:
        return None
    if found["tag"]:
        return f"<{found['tag'].lower()}>"
    if found["hashes"]:
        return "#" * len(found["hashes"])
    label = found["bold"] or found["label"]
    return DIGITS.sub("#", label.strip().lower()) + ":"


def find_example_region(text: str) -> ExampleRegion | None:
    """The first region of example blocks in `text` (see the module doc), or None."""
    if text.count("\n") < 3:
        return None  # two blocks of two lines at least
    lines = text.splitlines(keepends=True)
    marks = [marker(line) for line in lines]
    counts = Counter(m for m in marks if m and not m.startswith("</"))
    tried: set[str] = set()
    for m in marks:
        if not m or m in tried or counts[m] < 2 or m.startswith("</"):
            continue
        tried.add(m)
        region = _region_for(lines, marks, m)
        if region is not None:
            return region
    return None


def _region_for(lines: list[str], marks: list[str | None], start_marker: str) -> ExampleRegion | None:
    starts = [i for i, m in enumerate(marks) if m == start_marker]
    first_blank = next((i for i in range(starts[0], starts[1]) if marks[i] == ""), starts[1])
    pattern = _pattern(marks[starts[0] : first_blank])
    if len(pattern) < 2:
        return None  # a block needs an input marker and an answer marker
    spans: list[tuple[int, int]] = []  # [first line, last line + 1), blank lines excluded
    for n, begin in enumerate(starts):
        stop = _block_end(lines, marks, begin, pattern)
        if stop is None:
            break
        spans.append((begin, stop))
        following = starts[n + 1] if n + 1 < len(starts) else begin
        if any(m != "" for m in marks[stop:following]):
            break  # static text after this block ends the region
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    blocks: list[Block] = []
    bounds: list[tuple[int, int]] = []
    for begin, stop in spans:
        raw = "".join(lines[begin:stop]).rstrip()
        block = _split_block(raw, pattern)
        if block is None:
            break  # an empty answer: the query block, after the examples
        blocks.append(block)
        bounds.append((offsets[begin], offsets[begin] + len(raw)))
    if not blocks or (len(blocks) == 1 and len(starts) < 2):
        return None
    text = "".join(lines)
    seps = tuple(text[bounds[k][1] : bounds[k + 1][0]] for k in range(len(bounds) - 1))
    if any(sep.strip() for sep in seps):
        return None
    return ExampleRegion(bounds[0][0], bounds[-1][1], tuple(blocks), seps)


def _pattern(marks: list[str | None]) -> tuple[str, ...]:
    return tuple(m for m in marks if m)


def _block_end(lines: list[str], marks: list[str | None], begin: int, pattern: tuple[str, ...]) -> int | None:
    """End of the last block: lines that follow `pattern` in order (text lines continue the current one)."""
    position, i = 0, begin
    while i < len(lines):
        m = marks[i]
        if m == "":
            break
        if m is not None:
            if position < len(pattern) and m == pattern[position]:
                position += 1
            else:
                break
        i += 1
    return i if position == len(pattern) else None


def _split_block(raw: str, pattern: tuple[str, ...]) -> Block | None:
    """Input and answer of a block; None when the answer is empty (the query block)."""
    answer_marker = next((m for m in reversed(pattern[1:]) if not m.startswith("</")), None)
    lines = raw.split("\n")
    marks = [marker(line) for line in lines]
    cut = max(i for i, m in enumerate(marks) if m == answer_marker)
    skip_wrapper = 1 if len(pattern) > 2 and cut > 1 else 0  # `<example>` / `### Example n` line
    question = _clean(lines[skip_wrapper:cut])
    answer = _clean(lines[cut:])
    if not answer:
        return None
    return Block(raw, question, answer)


def _clean(lines: list[str]) -> str:
    """Text of lines without their leading marker and closing tags."""
    out = []
    for line in lines:
        found = MARKER.match(line)
        if found is not None and marker(line):
            line = line[found.end() :]
        line = CLOSING_TAG.sub("", line).strip()
        if line:
            out.append(line)
    return "\n".join(out)
