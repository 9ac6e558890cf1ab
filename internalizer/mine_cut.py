"""Cut the text of one region into pieces and blocks, the way its requests suggest (see mine_blocks).

A piece is a run of lines; blank lines and frame lines (a line that comes back in one request, digits
ignored: `<example>`, `### Example`, `Example 3:`) always end one. Other ways to cut are offered too: at
each line shaped like a line that starts several lines (`Q: ...`), or at every line unless the data glues
two lines together. Pieces group into blocks by the period of the text between them.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from internalizer.mine_text import DIGITS, normalized, shape

Line = tuple[str, int, int]  # text without newline, start offset, end offset (newline excluded)
Block = tuple[str, int, int]  # text, start offset, end offset


def lines_of(text: str) -> list[Line]:
    out, start = [], 0
    for line in text.split("\n"):
        out.append((line, start, start + len(line)))
        start += len(line) + 1
    return out


def ways_to_cut(lines: list[list[Line]]) -> tuple[list, bool]:
    """Ways to cut this region's values into pieces (see the module doc), the first one by frame and blank
    lines only, and whether there are frame lines (a line that comes back in one request, digits ignored,
    always ends a piece). The data then picks one way."""
    contains: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    for v_lines in lines:
        forms: dict[str, list[str]] = defaultdict(list)
        for text, _, _ in v_lines:
            if text.strip():
                forms[normalized(text)].append(text)
        contains.update(forms.keys())
        repeated.update(form for form, texts in forms.items() if repeats_as_frame(texts))
    # In most requests, and several times in a good share of them: the frame around every block. (Content
    # lines come back in one request only by chance: two examples that differ only in their numbers.)
    frame_lines = {
        n
        for n, k in repeated.items()
        if k >= 2 and k >= 0.3 * contains[n] and contains[n] >= 0.8 * len(lines)
    }

    def is_frame(text: str) -> bool:
        return normalized(text) in frame_lines

    cutters: list = [lambda v_lines: runs_between(v_lines, is_frame)]
    starts: Counter[str] = Counter()
    for v_lines in lines:
        shapes = Counter(shape(t) for t, _, _ in v_lines if t.strip() and not is_frame(t))
        starts.update(k for k, n in shapes.items() if n >= 2)  # a shape that starts several lines
    for first, n in starts.most_common(2):
        if first.strip() and n >= 2:
            cutters.append(lambda v_lines, first=first: runs_from(v_lines, first, is_frame))
    glued = _glue(lines, is_frame)
    cutters.append(lambda v_lines: _glued_lines(v_lines, glued, is_frame))
    return cutters, bool(frame_lines)


def repeats_as_frame(texts: list[str]) -> bool:
    """Lines of one form that frame blocks: the same line again, or a number counting up (`Example 1:`,
    `Example 2:`); not two lines that merely differ in their numbers (`list 3 files`, `list 7 files`)."""
    if len(texts) < 2:
        return False
    if len(set(texts)) == 1:
        return True
    numbers = [[int(d) for d in DIGITS.findall(t)] for t in texts]
    return any(all(n[d] == numbers[0][d] + i for i, n in enumerate(numbers)) for d in range(len(numbers[0])))


def _blank_between(v_lines: list[Line]) -> bool:
    texts = [t for t, _, _ in v_lines]
    filled = [i for i, t in enumerate(texts) if t.strip()]
    return bool(filled) and any(not texts[i].strip() for i in range(filled[0], filled[-1]))


def runs_between(v_lines: list[Line], is_frame) -> list[tuple[int, int]]:
    """Maximal runs of non-blank lines that are not frame lines."""
    pieces: list[tuple[int, int]] = []
    start = end = None
    for text, s, e in v_lines:
        if not text.strip() or is_frame(text):
            if start is not None:
                pieces.append((start, end))  # type: ignore[arg-type]
                start = None
            continue
        if start is None:
            start = s
        end = e
    if start is not None:
        pieces.append((start, end))  # type: ignore[arg-type]
    return pieces


def runs_from(v_lines: list[Line], first: str, is_frame) -> list[tuple[int, int]]:
    """A piece starts at each line shaped `first` and runs over the lines after it."""
    pieces: list[tuple[int, int]] = []
    start = end = None
    for text, s, e in v_lines:
        stop = not text.strip() or is_frame(text)
        if stop or shape(text) == first:
            if start is not None:
                pieces.append((start, end))  # type: ignore[arg-type]
                start = None
            if stop:
                continue
        if start is None:
            start = s
        end = e
    if start is not None:
        pieces.append((start, end))  # type: ignore[arg-type]
    return pieces


def _glue(lines: list[list[Line]], is_frame) -> set[tuple[str, str]]:
    """Pairs of adjacent lines that belong to one block: the first is always followed by the second, or the
    second always preceded by the first (seen three times at least: twice happens by chance)."""
    nexts: dict[str, set[str]] = defaultdict(set)
    prevs: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for v_lines in lines:
        texts = [t for t, _, _ in v_lines if t.strip() and not is_frame(t)]
        seen.update(texts)
        for a, b in zip(["\0", *texts], [*texts, "\0"], strict=True):
            nexts[a].add(b)
            prevs[b].add(a)
    return {
        (a, b)
        for a, following in nexts.items()
        for b in following
        if a != "\0"
        and b != "\0"
        and ((seen[a] >= 3 and len(following) == 1) or (seen[b] >= 3 and prevs[b] == {a}))
    }


def _glued_lines(v_lines: list[Line], glued: set[tuple[str, str]], is_frame) -> list[tuple[int, int]]:
    """Each line is a piece, but lines the data glues together stay in one."""
    pieces: list[tuple[int, int]] = []
    previous = None
    for text, s, e in v_lines:
        if not text.strip() or is_frame(text):
            previous = None
            continue
        if previous is not None and (previous, text) in glued:
            pieces[-1] = (pieces[-1][0], e)
        else:
            pieces.append((s, e))
        previous = text
    return pieces


def period_of(values: list[str], pieces: list[list[tuple[int, int]]]) -> int:
    """How many pieces make one block: the period of the text between pieces (`\\nOutput:\\n`, then
    `\\n\\nInput:\\n`...), the last gap of each value left out (it may lead to the query)."""
    gaps = [
        [DIGITS.sub("#", v[p[k][1] : p[k + 1][0]]) for k in range(len(p) - 2)]
        for v, p in zip(values, pieces, strict=True)
    ]
    for period in (1, 2, 3, 4):
        informative = [g for g in gaps if len(g) >= 2 * period]  # two periods at least, to compare
        if not informative:
            break
        regular = sum(all(g[k] == g[k + period] for k in range(len(g) - period)) for g in informative)
        if regular >= 0.8 * len(informative):
            return period
    return 1


def blocks_of(value: str, pieces: list[tuple[int, int]], period: int) -> list[tuple[str, int, int]]:
    """(text, start, end) of each whole block: `period` consecutive pieces."""
    out = []
    for k in range(0, len(pieces) - period + 1, period):
        start, end = pieces[k][0], pieces[k + period - 1][1]
        out.append((value[start:end], start, end))
    return out
