"""Find a run of few-shot example blocks in one region of a group's requests, learned from the requests.

A region is the text between two static lines of a template. It holds an example run when blocks of it recur
across requests in varying combinations (three distinct recurring blocks and three distinct sequences at
least): the blocks are drawn from a pool. How the region is cut into blocks is learned, not read from a list
of markers:
- lines that come back several times in one request, digits ignored (`<example>`, `### Example`,
  `Example 3:`, `Output:`), are the frame between blocks;
- else blank lines separate blocks;
- else a block starts at every line shaped like the region's first line (`Q: ...`), or each line is a block
  unless the data glues lines together (a line always followed by the same next line).
When the text between pieces alternates (`Input:\\n{x}\\nOutput:\\n{y}`), pieces are grouped by that period.
The text between two blocks is the separator; when it carries the block's number it must count up. A block
seen once is accepted where it sits between blocks or is shaped like the recurring ones (same line count,
same start and end of each line).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from gateway.matcher import Examples
from internalizer.mine_text import (
    DIGITS,
    LABEL,
    WORD_LABEL,
    frame_prefix,
    frame_suffix,
    normalized,
    one_word_changed,
    shape,
)

MIN_BLOCKS = 3  # distinct recurring blocks (and distinct sequences of them) that make a pool
MIN_ALTERNATIVES = 3  # ... when every request carries one block (and none is a rewording of another)
TOKENS = re.compile(r"\w+|[^\w]+")


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
        if self.middle and len(lines) == 1 and block.count(self.middle) != 1:
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


@dataclass
class RunFound:
    """An example run: every request's region = leading + blocks joined by the separator + a tail."""

    leading: str
    examples: Examples
    frame: Frame
    known: set[str]
    # per value: (block, end offset) of each block of its longest run, or None when it has none
    runs: list[list[tuple[str, int]] | None]


@dataclass
class _Cut:
    """One way of cutting the region's values into blocks, and which blocks recur."""

    blocks: list[list[Block]]
    known: set[str]
    covered: int  # characters of the values inside recurring blocks: how much the cut explains


SAMPLE = 400  # values a way of cutting is judged on
SHARED = 0.8  # share of the blocks whose line starts make the frame


def find_run(values: list[str], weights: list[int]) -> RunFound | str | None:
    """The example run of a region (values: its distinct texts, weights: requests per text).

    None when the region holds no pool of blocks; a line (str) when it looks like a run with a static block
    in a fixed place that only most requests have: splitting the group on that line separates them.
    """
    lines = [_lines(v) for v in values]
    sample = list(range(0, len(values), max(1, len(values) // SAMPLE)))  # what the way to cut is learned on
    cutters, framed = _cutters([lines[i] for i in sample])
    if framed:  # lines that frame every block: cut there, whatever else might explain more
        cutters = cutters[:1]
    if len(cutters) > 1:
        judged = [
            _cut([values[i] for i in sample], [weights[i] for i in sample], [lines[i] for i in sample], cut)
            for cut in cutters
        ]
        best = 0  # a finer way of cutting must explain clearly more than a coarser one
        for k in range(1, len(cutters)):
            if judged[k].covered > 1.1 * judged[best].covered:
                best = k
        cutters = [cutters[best]]
    found = _cut(values, weights, lines, cutters[0])
    blocks, recurring = found.blocks, found.known
    total = sum(weights)
    weight: Counter[str] = Counter()
    places: dict[str, set[int]] = defaultdict(set)
    for v_blocks, w in zip(blocks, weights, strict=True):
        for j, (text, _, _) in enumerate(v_blocks):
            weight[text] += w
            places[text].add(j)
    recurring -= {t for t in recurring if weight[t] == total and len(places[t]) == 1}  # static, every time
    fixed = _static_place(recurring, weight, places, total)
    if fixed is not None:
        return _first_line(values, fixed)  # static text in a fixed place, not a block drawn from a pool
    # Frame lines (`Example 3:`, `<example>`) around the blocks are evidence enough, also when the pool is
    # too large for its blocks to recur in this log: then every framed block is an example. So is a choice
    # of one block per request among many shaped alike that are not rewordings of each other.
    everything = {t for v_blocks in blocks for t, _, _ in v_blocks} - (found.known - recurring)
    framed = framed or (len(recurring) >= 2 and _alternatives(everything, blocks))
    seen = recurring if len(recurring) >= MIN_BLOCKS or not framed else everything  # shape learned from
    if not seen:
        return None
    frame = _frame(sorted(seen))
    known = {t for t in everything if frame.fits(t)} | recurring if framed else recurring
    sequences: Counter[tuple[str, ...]] = Counter()
    for v_blocks, w in zip(blocks, weights, strict=True):
        sequences[tuple(t for t, _, _ in v_blocks if t in known)] += w
    if len(known) < MIN_BLOCKS or len(sequences) < MIN_BLOCKS:
        return None
    if not framed and not _drawn(known, sequences, places, total, len(weight)):
        return None
    misfits = [t for t in recurring if not frame.fits(t)]
    if misfits:  # a recurring text not shaped like the blocks: another template's, mixed in this group
        return _first_line(values, max(misfits, key=lambda t: (weight[t], t)))
    # From consecutive recurring blocks; from all of them when only those show the number counting up.
    candidates = [_separator(values, blocks, seen), _separator(values, blocks, known)]
    examples = next((e for e in candidates if e is not None and e.number is not None), None)
    examples = examples or candidates[0] or candidates[1]
    if examples is None:
        if max(len(b) for b in blocks) > 1:
            return None
        examples = Examples("\n\n")  # one block per request: no separator to learn, none to match
    firsts = [next((j for j, (t, _, _) in enumerate(b) if t in known or frame.fits(t)), None) for b in blocks]
    leadings = Counter(v[: b[j][1]] for v, b, j in zip(values, blocks, firsts, strict=True) if j is not None)
    if not leadings:
        return None
    leading, n_leading = leadings.most_common(1)[0]
    if n_leading < 0.9 * sum(leadings.values()):
        return None
    runs = [
        None if j is None else _run(value, v_blocks[j:], leading, examples, frame, known)
        for value, v_blocks, j in zip(values, blocks, firsts, strict=True)
    ]
    return RunFound(leading, examples, frame, known, runs)


def _run(
    value: str, blocks: list[Block], leading: str, examples: Examples, frame: Frame, known: set[str]
) -> list[tuple[str, int]] | None:
    """The longest run of blocks at the start of a value: known blocks, or blocks shaped like them (a block
    seen once may have been cut in pieces: consecutive pieces that together have the shape are one)."""
    if not blocks or blocks[0][1] != len(leading) or not value.startswith(leading):
        return None
    run: list[tuple[str, int]] = []
    j = 0
    while j < len(blocks):
        start = blocks[j][1]
        if run and value[run[-1][1] : start] != examples.separator(len(run)):
            break
        for k in range(j, min(j + 4, len(blocks))):
            text = value[start : blocks[k][2]]
            if text in known or frame.fits(text):
                break
        else:
            break
        run.append((text, blocks[k][2]))
        j = k + 1
    return run or None


def _static_place(
    recurring: set[str], weight: Counter[str], places: dict[str, set[int]], total: int
) -> str | None:
    """The heaviest of the blocks found in one place only, when those of one place are in most requests and
    one is in nearly all, or two are wordings of one text (one word changed): static text, not examples.
    (A pool's block may be that common by chance, but not alongside its own rewording.)"""
    by_place: dict[int, list[str]] = defaultdict(list)
    for text in recurring:
        if len(places[text]) == 1:
            by_place[next(iter(places[text]))].append(text)
    for texts in by_place.values():
        heaviest = max(texts, key=lambda t: (weight[t], t))
        if 2 * sum(weight[t] for t in texts) >= total and (
            weight[heaviest] >= 0.8 * total or _rewordings(set(texts))
        ):
            return heaviest
    return None


def _alternatives(texts: set[str], blocks: list[list[Block]]) -> bool:
    """One block per request, chosen among at least MIN_ALTERNATIVES that share an informative shape and
    of which no two are the same text with one word changed (wordings of one line are not a pool)."""
    if len(texts) < MIN_ALTERNATIVES or max((len(b) for b in blocks), default=0) != 1:
        return False
    return _frame(sorted(texts)).informative and not _rewordings(texts)


def _rewordings(texts: set[str]) -> bool:
    """Whether two of the texts are the same but for one word, or two in a text of six words or more:
    wordings of one instruction (each a word away from a third one), not examples."""
    keys: set[str] = set()
    for text in texts:
        words = text.replace("\n", " ").split(" ")
        mine = set(one_word_changed(" ".join(words)))
        if len(words) >= 6:
            mine |= {
                " ".join(words[:i]) + "\0" + " ".join(words[i + 1 : j]) + "\0" + " ".join(words[j + 1 :])
                for i in range(len(words))
                for j in range(i + 1, len(words))
            }
        if mine & keys:
            return True
        keys |= mine
    return False


def _drawn(
    known: set[str], sequences: Counter[tuple[str, ...]], places: dict[str, set[int]], total: int, seen: int
) -> bool:
    """Whether recurring blocks look drawn from a pool rather than being the fixed texts of templates mixed
    in one group: several of them, in varied sequences (none sent by half the requests), most of them met
    at more than one place in the run; one block per request needs a wider choice instead (`seen`: distinct
    blocks, recurring or not)."""
    if 2 * sequences.most_common(1)[0][1] >= total:
        return False
    if max(len(sequence) for sequence in sequences) <= 1:
        return seen >= MIN_ALTERNATIVES and not _rewordings(known)
    return 2 * sum(len(places[t]) >= 2 for t in known) >= len(known)


def _cut(values: list[str], weights: list[int], lines: list[list[Line]], cutter) -> _Cut:
    """Blocks of every value under one way of cutting; a block is known when two requests carry it."""
    pieces = [cutter(v_lines) for v_lines in lines]
    period = _period(values, pieces)
    blocks = [_blocks(v, p, period) for v, p in zip(values, pieces, strict=True)]
    count: Counter[str] = Counter()
    nonfinal: Counter[str] = Counter()
    for v_blocks, weight in zip(blocks, weights, strict=True):
        for j, (text, _, _) in enumerate(v_blocks):
            count[text] += weight
            nonfinal[text] += j < len(v_blocks) - 1
    # When the last block of most values is one of a kind, it is the query (often shaped like a block),
    # and a block must be met before the end of some value to count as an example.
    unique_last = sum(w for b, w in zip(blocks, weights, strict=True) if b and count[b[-1][0]] == 1)
    query_last = max((len(b) for b in blocks), default=0) > 1 and 2 * unique_last >= sum(weights)
    known = {t for t, n in count.items() if n >= 2 and (nonfinal[t] or not query_last)}
    covered = sum(len(t) for b in blocks for t, _, _ in b if t in known)
    return _Cut(blocks, known, covered)


# ---- cutting a region into pieces ---------------------------------------------------------------------

Line = tuple[str, int, int]  # text without newline, start offset, end offset (newline excluded)
Block = tuple[str, int, int]  # text, start offset, end offset


def _lines(text: str) -> list[Line]:
    out, start = [], 0
    for line in text.split("\n"):
        out.append((line, start, start + len(line)))
        start += len(line) + 1
    return out


def _cutters(lines: list[list[Line]]) -> tuple[list, bool]:
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

    cutters: list = [lambda v_lines: _runs_between(v_lines, is_frame)]
    starts: Counter[str] = Counter()
    for v_lines in lines:
        shapes = Counter(shape(t) for t, _, _ in v_lines if t.strip() and not is_frame(t))
        starts.update(k for k, n in shapes.items() if n >= 2)  # a shape that starts several lines
    for first, n in starts.most_common(2):
        if first.strip() and n >= 2:
            cutters.append(lambda v_lines, first=first: _runs_from(v_lines, first, is_frame))
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


def _runs_between(v_lines: list[Line], is_frame) -> list[tuple[int, int]]:
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


def _runs_from(v_lines: list[Line], first: str, is_frame) -> list[tuple[int, int]]:
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


def _period(values: list[str], pieces: list[list[tuple[int, int]]]) -> int:
    """How many pieces make one block: the period of the text between pieces (`\\nOutput:\\n`, then
    `\\n\\nInput:\\n`...), the last gap of each value left out (it may lead to the query)."""
    gaps = [
        [DIGITS.sub("#", v[p[k][1] : p[k + 1][0]]) for k in range(len(p) - 2)]
        for v, p in zip(values, pieces, strict=True)
    ]
    for period in (1, 2, 3, 4):
        informative = [g for g in gaps if len(g) > period]
        if not informative:
            break
        regular = sum(all(g[k] == g[k + period] for k in range(len(g) - period)) for g in informative)
        if regular >= 0.8 * len(informative):
            return period
    return 1


def _blocks(value: str, pieces: list[tuple[int, int]], period: int) -> list[tuple[str, int, int]]:
    """(text, start, end) of each whole block: `period` consecutive pieces."""
    out = []
    for k in range(0, len(pieces) - period + 1, period):
        start, end = pieces[k][0], pieces[k + period - 1][1]
        out.append((value[start:end], start, end))
    return out


# ---- what the blocks share ----------------------------------------------------------------------------


def _frame(known: list[str]) -> Frame:
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
    tokens = TOKENS.findall(lines[0])
    candidates = {
        "".join(tokens[i : i + n])
        for n in (1, 3)
        for i in range(1, len(tokens) - n)
        if not tokens[i][0].isalnum()
    }
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


def _separator(values: list[str], blocks: list[list[Block]], known: set[str]) -> Examples | None:
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
    return _counting([(j, g) for j, g in gaps if DIGITS.sub("#", g) == form])


def _counting(gaps: list[tuple[int, str]]) -> Examples | None:
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


# ---- examples written into static text ------------------------------------------------------------------


def fixed_run(text: str) -> tuple[int, int, Examples, list[str], Frame] | None:
    """Example blocks written out in a static text (the same examples in every request): two or more
    consecutive blocks of the same number of lines (two at least), each line opening with the same label in
    every block (`Input: `, `<output>`), the answer line's label holding a letter, the same text (or a
    counting one) between them. Returns (start, end, examples part, blocks, frame), the longest such run."""
    lines = _lines(text)
    best = None
    for pieces in _single_cuts(lines):
        for i in range(len(pieces) - 1):
            found = _fixed_from(text, pieces, i)
            if found is not None and (best is None or len(found[3]) > len(best[3])):
                best = found
        if best is not None:
            return best
    return None


def _single_cuts(lines: list[Line]):
    """Ways to cut one text into pieces, most specific first: by repeated frame lines, by blank lines, by
    lines of a shape that starts several lines."""
    seen = Counter(normalized(t) for t, _, _ in lines if t.strip())
    frame_lines = {n for n, k in seen.items() if k >= 2}
    if frame_lines:
        yield _runs_between(lines, lambda t: normalized(t) in frame_lines)
    yield _runs_between(lines, lambda t: False)
    shapes = Counter(shape(t) for t, _, _ in lines if t.strip())
    for first, k in shapes.most_common(3):
        if k >= 2 and first.strip():
            yield _runs_from(lines, first, lambda t: False)


def _fixed_from(text: str, pieces: list[tuple[int, int]], i: int):
    height = text[pieces[i][0] : pieces[i][1]].count("\n") + 1
    if height < 2:
        return None
    j, gaps = i, []
    while j + 1 < len(pieces) and text[pieces[j + 1][0] : pieces[j + 1][1]].count("\n") + 1 == height:
        gaps.append((j + 1 - i, text[pieces[j][1] : pieces[j + 1][0]]))
        j += 1
    examples = None
    while gaps:
        examples = _counting(gaps)
        if examples is not None:
            break
        gaps.pop()
        j -= 1
    if examples is None:
        return None
    blocks = [text[s:e] for s, e in pieces[i : j + 1]]
    frame = _frame(blocks)
    if not all(prefix.strip() for prefix, _, _ in frame.lines):
        return None
    answer = next((p for p, _, fixed in reversed(frame.lines) if not fixed), "")
    if not any(c.isalpha() for c in answer):
        return None
    return pieces[i][0], pieces[j][1], examples, blocks, frame


def _first_line(values: list[str], block: str) -> str:
    """The unit (line with its newline) a block starts with, as mining cut the message."""
    for value in values:
        at = value.find(block)
        if at >= 0:
            end = value.find("\n", at)
            return value[at:] if end < 0 else value[at : end + 1]
    return block
