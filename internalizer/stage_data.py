"""Each stage's training sequences: render every record's prompt, fit it into the context, mark the prefix.

A record whose stage prompt is longer than the longest allowed sequence first loses retrieved shots, then
is rendered on a more compressed template (half the stage's ratio, then a quarter... and at last the query
alone); only a record whose query alone does not fit is left out. Nothing is shortened silently: the
stage's `Fitting` counts each case, and the job reports it. Sequences rendered on the same template text
share their leading tokens (the template before the first variable part), which training packs once per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from internalizer.base import BaseModel, end_of_turn_id
from internalizer.compress import compress_text
from internalizer.dataset import Example, Record, encode_pair, render_stage_messages
from internalizer.packing import Sequence, share_prefix
from internalizer.schedule import Stage

MIN_FALLBACK_RATIO = 0.05  # below this a compressed template is mostly markers: the query alone is next


@dataclass
class Fitting:
    """How a stage's records were fitted into the longest allowed sequence."""

    stage: int
    records: int  # records that have a training sequence in this stage
    fewer_shots: int = 0  # kept the stage's template but not all of its retrieved shots
    more_compressed: int = 0  # trained on a more compressed template than the stage's
    query_only: int = 0  # no template fitted: trained on the query alone
    dropped: int = 0  # not even the query alone fits
    max_len: int = 0  # the longest allowed sequence
    longest: int = 0  # the longest sequence kept

    @property
    def shortened(self) -> int:
        return self.fewer_shots + self.more_compressed + self.query_only

    def describe(self) -> str | None:
        """One line for the run's log when anything was shortened or left out, else None."""
        if not self.shortened and not self.dropped:
            return None
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.fewer_shots, "with fewer shots"),
                (self.more_compressed, "on a more compressed template"),
                (self.query_only, "on the query alone"),
                (self.dropped, "left out (the query alone is longer)"),
            )
            if n
        ]
        return f"stage {self.stage}: records longer than {self.max_len} tokens: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TemplateTexts:
    """The template compressed to each ratio asked for, computed once per ratio ("" for 0: query only)."""

    def __init__(self, base: BaseModel, static_text: str) -> None:
        self.base = base
        self.static_text = static_text
        self.texts: dict[float, str] = {}

    def __call__(self, ratio: float) -> str:
        if ratio <= 0:
            return ""
        if ratio not in self.texts:
            compressed = compress_text(self.base.model, self.base.tokenizer, self.static_text, ratio)
            self.texts[ratio] = compressed.text
        return self.texts[ratio]


def fallback_ratios(ratio: float) -> list[float]:
    """The more compressed templates a record may fall back to: ratio/2, ratio/4... then 0 (query only)."""
    ratios = []
    ratio /= 2
    while ratio >= MIN_FALLBACK_RATIO:
        ratios.append(round(ratio, 4))
        ratio /= 2
    return [*ratios, 0.0]


def stage_sequences(
    stage: Stage,
    records: list[Record],
    template: Callable[[float], str],
    shots: list[list[Example]],
    tokenizer: Any,
    max_len: int,
    shared_prefix: bool = True,
) -> tuple[list[Sequence], Fitting]:
    """Tokenized prompt+answer of each record for `stage`, fitted into `max_len` tokens.

    `template(ratio)` gives the template text compressed to `ratio` ("" for 0: the query-only format)."""
    end_of_turn = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    fitting = Fitting(stage.index, 0, max_len=max_len)
    by_template: dict[float, list[tuple[int, Sequence]]] = {}
    for index, (record, examples) in enumerate(zip(records, shots, strict=True)):
        # Candidates in order: the stage's template with k..0 shots, then more compressed templates.
        ratio = stage.template_ratio
        candidates = [(ratio, k) for k in range(min(stage.n_examples, len(examples)), -1, -1)]
        if ratio > 0:
            candidates += [(r, 0) for r in fallback_ratios(ratio)]
        for used_ratio, k in candidates:
            messages = render_stage_messages(template(used_ratio), record.slots, examples[:k])
            ids, labels = encode_pair(tokenizer, messages, record.target, end_of_turn)
            if len(ids) <= max_len:
                break
        else:
            fitting.dropped += 1
            continue
        if used_ratio == 0.0 and ratio > 0:
            fitting.query_only += 1
        elif used_ratio != ratio:
            fitting.more_compressed += 1
        elif k < min(stage.n_examples, len(examples)):
            fitting.fewer_shots += 1
        by_template.setdefault(used_ratio, []).append((index, Sequence(ids, labels, key=record.request_id)))
    if shared_prefix:
        for group in by_template.values():
            share_prefix([seq for _, seq in group])
    sequences = [seq for _, seq in sorted((p for g in by_template.values() for p in g), key=lambda p: p[0])]
    fitting.records = len(sequences)
    fitting.longest = max((len(s) for s in sequences), default=0)
    return sequences, fitting
