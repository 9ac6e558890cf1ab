"""What the example blocks of a pool share: their frame (labels and closing tags, line by line) and the
separator between two blocks, learned from the blocks themselves (see mine_blocks)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from gateway.templates.matcher import Examples
from internalizer.mine_text import DIGITS, LABEL, WORD_LABEL, frame_prefix, frame_suffix

SHARED = 0.8  # share of the blocks whose line starts make the frame
TOKENS = re.compile(r"\w+|[^\w]+")
Block = tuple[str, int, int]  # text, start offset, end offset


@dataclass(frozen=True)
class Frame:
    """The shape of a pool's blocks: a block seen once is accepted only if it has it."""

    line_counts: frozenset[int]
    lines: tuple[
        tuple[str, str, bool], ...
    ]  # per line of a usual-length block: prefix, suffix, whole line fixed
    first_prefix: str
    last_suffix: str
    middle: str  # text in the middle of every one-line block (`", "output": "`), or ""

    @property
    def informative(self) -> bool:
        """Whether the blocks share enough (a label, a middle, a frame line) to tell a block from text."""
        return bool(self.first_prefix.strip() or self.middle or any(fixed for _, _, fixed in self.lines))

    def fits(self, block: str) -> bool:
        lines = block.split("\n")
        if len(lines) not in self.line_counts:
            return False
        if self.middle and len(lines) == 1 and self.middle not in block:
            return False
        if len(lines) == len(self.lines):
            return all(_line_fits(line, *spec) for line, spec in zip(lines, self.lines, strict=True))
        return _line_fits(lines[0], self.first_prefix, "", False) and _line_fits(
            lines[-1], "", self.last_suffix, False
        )

    def fits_line(self, line: str, index: int) -> bool:
        """Whether a line is shaped like line `index` of a usual block (a label of its own, not blank)."""
        prefix, suffix, fixed = self.lines[index]
        return not fixed and bool(prefix.strip()) and _line_fits(line, prefix, suffix, False)

    def input_output(self, block: str) -> tuple[str, str]:
        """The example's input and answer: its varying text without the frame."""
        lines = block.split("\n")
        specs = (
            self.lines if len(lines) == len(self.lines) else ((self.first_prefix, "", False),) * len(lines)
        )
        texts = [_strip(line, p, s) for line, (p, s, fixed) in zip(lines, specs, strict=True) if not fixed]
        if len(texts) == 1:
            if self.middle and texts[0].count(self.middle) == 1:
                left, right = texts[0].split(self.middle)
                return left.strip(), right.strip()
            return texts[0].strip(), ""
        return "\n".join(texts[:-1]).strip(), texts[-1].strip() if texts else ""


def frame_of(known: list[str]) -> Frame:
    """What the recurring blocks share, line by line (those of the most common length): the labels (of
    most of them: a text mixed in from another template must not hide them) and closing tags (of all)."""
    split = [k.split("\n") for k in known]
    counts = Counter(len(s) for s in split)
    usual = counts.most_common(1)[0][0]
    same = [s for s in split if len(s) == usual]
    specs = []
    for i in range(usual):
        texts = [s[i] for s in same]
        prefix = _label_only(frame_prefix(texts, SHARED))
        if all(t == texts[0] for t in texts):
            specs.append((texts[0], "", True))  # a line of the frame itself (`### Example`, `Output:`)
        else:
            specs.append((prefix, _closing([t[len(prefix) :] for t in texts if t.startswith(prefix)]), False))
    middle = _middle([s[0] for s in same]) if usual == 1 else ""
    first = _label_only(frame_prefix([s[0] for s in same], SHARED))
    last = _closing([s[-1] for s in same if s[0].startswith(first)])
    # Blocks of another length (a multi-line answer) belong if they open and close like the usual ones.
    heights = {len(s) for s in split if s[0].startswith(first) and s[-1].endswith(last)} | {usual}
    return Frame(frozenset(heights), tuple(specs), first, last, middle)


def _label_only(prefix: str) -> str:
    """A shared line start cut back to its label: when every answer starts `A: logtool --`, the label is
    `A: ` and `logtool --` is content all the pool's examples happen to share."""
    for pattern in (LABEL, WORD_LABEL):
        found = pattern.match(prefix)
        if found is not None:
            end = found.end()
            while end < len(prefix) and prefix[end] == " ":
                end += 1
            return prefix[:end]
    return prefix


def _closing(texts: list[str]) -> str:
    """The end every text shares, if it is a closing tag or bracket run (`</output>`, `"}`), not one
    character that the contents happen to share (a final quote, a period)."""
    suffix = frame_suffix(texts, 1.0)
    return suffix if len(suffix.strip()) >= 2 else ""


def _middle(lines: list[str]) -> str:
    """The longest piece of punctuation-led text found exactly once in most one-line blocks."""
    candidates = set()
    for line in lines[
        :: max(1, len(lines) // 10)
    ]:  # some lines: a block's own punctuation runs into the frame's
        tokens = TOKENS.findall(line)
        for n in (1, 3):
            for i in range(1, len(tokens) - n):
                if not tokens[i][0].isalnum():
                    window = "".join(tokens[i : i + n])
                    candidates.add(window)
                    last = tokens[i + n - 1]  # `: %` when the content starts with `%`: try `: ` too
                    cut = last[: last.find(" ") + 1] if " " in last else last
                    candidates.add(window[: len(window) - len(last)] + cut)
    good = [c for c in candidates if sum(line.count(c) == 1 for line in lines) >= 0.8 * len(lines)]
    return max(good, key=len, default="")


def _line_fits(line: str, prefix: str, suffix: str, fixed: bool) -> bool:
    if fixed:
        return line == prefix
    return (
        line.startswith(prefix)
        and line.endswith(suffix)
        and len(line) >= len(prefix) + len(suffix)
        and bool(line[len(prefix) : len(line) - len(suffix)].strip())
    )


def _strip(line: str, prefix: str, suffix: str) -> str:
    line = line[len(prefix) :] if line.startswith(prefix) else line
    return line[: len(line) - len(suffix)] if suffix and line.endswith(suffix) else line


def separator(values: list[str], blocks: list[list[Block]], known: set[str]) -> Examples | None:
    """The text between two blocks, learned from consecutive recurring blocks."""
    gaps: list[tuple[int, str]] = []  # (index of the block after the gap, gap text)
    for value, v_blocks in zip(values, blocks, strict=True):
        for j in range(1, len(v_blocks)):
            if v_blocks[j - 1][0] in known and v_blocks[j][0] in known:
                gaps.append((j, value[v_blocks[j - 1][2] : v_blocks[j][1]]))
    if not gaps:
        return None
    forms = Counter(DIGITS.sub("#", g) for _, g in gaps)
    form, n = forms.most_common(1)[0]
    if n < 0.9 * len(gaps):
        return None
    return counting([(j, g) for j, g in gaps if DIGITS.sub("#", g) == form])


def counting(gaps: list[tuple[int, str]]) -> Examples | None:
    """One separator for gaps of the same form: constant, or with one number that counts the blocks."""
    if len({DIGITS.sub("#", g) for _, g in gaps}) > 1:
        return None
    runs = [list(DIGITS.finditer(g)) for _, g in gaps]
    counters = []
    for d in range(len(runs[0])):
        offsets = {int(r[d].group()) - j for (j, _), r in zip(gaps, runs, strict=True)}
        if len(offsets) == 1 and len({r[d].group() for r in runs}) > 1:
            counters.append((d, offsets.pop()))
    if not counters:
        raw = gaps[0][1]
        return Examples(raw) if all(g == raw for _, g in gaps) else None
    if len(counters) > 1:
        return None
    d, offset = counters[0]
    j, gap = gaps[0]
    at = runs[0][d]
    examples = Examples(gap[: at.start()], offset + 1, gap[at.end() :])
    return examples if all(g == examples.separator(j) for j, g in gaps) else None
