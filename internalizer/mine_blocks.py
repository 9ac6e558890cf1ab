"""Find a run of few-shot example blocks in one region of a group's requests, learned from the requests.

A region is the text between two static lines of a template. It holds an example run when it cuts
(mine_cut) into blocks that look drawn from a pool: several blocks that recur across requests, in varied
sequences and places; or one block per request chosen among several shaped alike that are not rewordings of
each other; or blocks framed by lines that come back around every one of them (`<example>`, `Example 3:`),
which is evidence enough even when a large pool's blocks are each seen once. A recurring text that is not
shaped like the blocks (mine_frame), or that sits in one place in most requests while a rewording of it sits
there in others, is static text of another template mixed into the group: the group is split on it.

Each request's run is its longest sequence of blocks, joined by the learned separator, that are known or
shaped like the known ones; what follows the run (often the query) is aligned by mine_align.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from gateway.templates.matcher import Examples
from internalizer.mine_cut import Line, blocks_of, lines_of, period_of, runs_between, runs_from, ways_to_cut
from internalizer.mine_frame import Block, Frame, counting, frame_of, separator
from internalizer.mine_text import normalized, one_word_changed, shape

MIN_BLOCKS = 3  # distinct recurring blocks (and distinct sequences of them) that make a pool
MIN_ALTERNATIVES = 3  # ... when every request carries one block (and none is a rewording of another)


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
    # How well the cut explains the region: characters of the values inside recurring blocks, less the
    # characters of the pool those blocks make (a pool of every combination of examples explains nothing).
    score: int


SAMPLE = 400  # values a way of cutting is judged on


def find_run(values: list[str], weights: list[int]) -> RunFound | str | None:
    """The example run of a region (values: its distinct texts, weights: requests per text).

    None when the region holds no pool of blocks; a line (str) when it looks like a run with a static block
    in a fixed place that only most requests have: splitting the group on that line separates them.
    """
    lines = [lines_of(v) for v in values]
    sample = list(range(0, len(values), max(1, len(values) // SAMPLE)))  # what the way to cut is learned on
    cutters, framed = ways_to_cut([lines[i] for i in sample])
    if framed:  # lines that frame every block: cut there, whatever else might explain more
        cutters = cutters[:1]
    if len(cutters) > 1:
        judged = [
            _cut([values[i] for i in sample], [weights[i] for i in sample], [lines[i] for i in sample], cut)
            for cut in cutters
        ]
        best = 0  # a finer way of cutting must explain clearly better than a coarser one
        for k in range(1, len(cutters)):
            if judged[k].score > judged[best].score + 0.1 * abs(judged[best].score):
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
    single = max((len(b) for b in blocks), default=0) == 1
    if single and 2 * sum(weight[t] for t in recurring) < total:
        return None  # one text per request, mostly seen once: a query now and then sent twice, not a pool
    framed = framed or (len(recurring) >= 2 and _alternatives(everything, blocks, weight, total))
    seen = recurring if len(recurring) >= MIN_BLOCKS or not framed else everything  # shape learned from
    if not seen:
        return None
    frame = frame_of(sorted(seen))
    known = {t for t in everything if frame.fits(t)} | recurring if framed else recurring
    sequences: Counter[tuple[str, ...]] = Counter()
    for v_blocks, w in zip(blocks, weights, strict=True):
        sequences[tuple(t for t, _, _ in v_blocks if t in known)] += w
    if len(known) < MIN_BLOCKS or len(sequences) < MIN_BLOCKS:
        return None
    if not framed and not _drawn(known, sequences, places, weight, total, len(weight)):
        return None
    misfits = [t for t in recurring if not frame.fits(t)]
    if misfits:  # a recurring text not shaped like the blocks: another template's, mixed in this group
        return _first_line(values, max(misfits, key=lambda t: (weight[t], t)))
    # From consecutive recurring blocks; from all of them when only those show the number counting up.
    candidates = [separator(values, blocks, seen), separator(values, blocks, known)]
    examples = next((e for e in candidates if e is not None and e.number is not None), None)
    examples = examples or candidates[0] or candidates[1]
    if examples is None:
        if max(len(sequence) for sequence in sequences) > 1:
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
    one of them is in nearly all, or one with its rewordings (one word changed) is in half of them: static
    text in other wordings, not examples. (A pool's block may be that common by chance, but not with its
    rewordings.)"""
    by_place: dict[int, list[str]] = defaultdict(list)
    for text in recurring:
        if len(places[text]) == 1:
            by_place[next(iter(places[text]))].append(text)
    for texts in by_place.values():
        heaviest = max(texts, key=lambda t: (weight[t], t))
        if 2 * sum(weight[t] for t in texts) >= total:
            if weight[heaviest] >= 0.8 * total:
                return heaviest
            worded = _reworded(set(texts), weight)
            if worded is not None and 2 * worded[0] >= total:
                return worded[1]
    return None


def _alternatives(texts: set[str], blocks: list[list[Block]], weight: Counter[str], total: int) -> bool:
    """One block per request, chosen among at least MIN_ALTERNATIVES that share an informative shape, no
    text with its rewordings sent by half the requests (wordings of one line are not a pool)."""
    if len(texts) < MIN_ALTERNATIVES or max((len(b) for b in blocks), default=0) != 1:
        return False
    worded = _reworded(texts, weight)
    return frame_of(sorted(texts)).informative and (worded is None or 2 * worded[0] < total)


def _reworded(texts: set[str], weight: Counter[str]) -> tuple[int, str] | None:
    """The heaviest group of texts that are the same but for one word (two in a line of six words or more),
    as (requests, its heaviest text); None when no two texts are. Wordings of one instruction, each a word
    away from a third one. (Blocks of several lines share their labels: one word only for them.)"""
    owner: dict[str, str] = {}
    group: dict[str, set[str]] = {}
    for text in sorted(texts, key=lambda t: (-weight[t], t)):
        words = text.replace("\n", " ").split(" ")
        keys = set(one_word_changed(" ".join(words)))
        if len(words) >= 6 and "\n" not in text:
            keys |= {
                " ".join(words[:i]) + "\0" + " ".join(words[i + 1 : j]) + "\0" + " ".join(words[j + 1 :])
                for i in range(len(words))
                for j in range(i + 1, len(words))
            }
        head = next((owner[k] for k in keys if k in owner), text)
        group.setdefault(head, set()).add(text)
        for key in keys:
            owner.setdefault(key, head)
    groups = [members for members in group.values() if len(members) > 1]
    if not groups:
        return None
    best = max(groups, key=lambda members: sum(weight[t] for t in members))
    return sum(weight[t] for t in best), max(best, key=lambda t: (weight[t], t))


def _drawn(
    known: set[str],
    sequences: Counter[tuple[str, ...]],
    places: dict[str, set[int]],
    weight: Counter[str],
    total: int,
    seen: int,
) -> bool:
    """Whether recurring blocks look drawn from a pool rather than being the fixed texts of templates mixed
    in one group: several of them, in varied sequences (none sent by half the requests), most of them met
    at more than one place in the run; one block per request needs a wider choice instead (`seen`: distinct
    blocks, recurring or not)."""
    if 2 * sequences.most_common(1)[0][1] >= total:
        return False
    if 2 * sum(weight[t] for t in known) < sum(weight.values()):
        return False  # most blocks seen once: a pool too large for this log to show, or no pool at all
    if max(len(sequence) for sequence in sequences) <= 1:
        worded = _reworded(known, weight)
        return seen >= MIN_ALTERNATIVES and (worded is None or 2 * worded[0] < total)
    return 2 * sum(len(places[t]) >= 2 for t in known) >= len(known)


def _cut(values: list[str], weights: list[int], lines: list[list[Line]], cutter) -> _Cut:
    """Blocks of every value under one way of cutting; a block is known when two requests carry it."""
    pieces = [cutter(v_lines) for v_lines in lines]
    period = period_of(values, pieces)
    blocks = [blocks_of(v, p, period) for v, p in zip(values, pieces, strict=True)]
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
    return _Cut(blocks, known, covered - sum(len(t) for t in known))


# ---- examples written into static text ------------------------------------------------------------------


def fixed_run(text: str) -> tuple[int, int, Examples, list[str], Frame] | None:
    """Example blocks written out in a static text (the same examples in every request): two or more
    consecutive blocks of the same number of lines (two at least), each line opening with the same label in
    every block (`Input: `, `<output>`), the answer line's label holding a letter, the same text (or a
    counting one) between them. Returns (start, end, examples part, blocks, frame), the longest such run."""
    lines = lines_of(text)
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
        yield runs_between(lines, lambda t: normalized(t) in frame_lines)
    yield runs_between(lines, lambda t: False)
    shapes = Counter(shape(t) for t, _, _ in lines if t.strip())
    for first, k in shapes.most_common(3):
        if k >= 2 and first.strip():
            yield runs_from(lines, first, lambda t: False)


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
        examples = counting(gaps)
        if examples is not None:
            break
        gaps.pop()
        j -= 1
    if examples is None:
        return None
    blocks = [text[s:e] for s, e in pieces[i : j + 1]]
    frame = frame_of(blocks)
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
