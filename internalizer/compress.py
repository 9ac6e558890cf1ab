"""Template compression by the base model's own token surprisal (Selective Context / LLMLingua style).

Each token's self-information is -log p(token | text before it) under the base model. Words (a run of
non-space characters with the whitespace before it) are dropped in order of lowest mean self-information
until at most `rate` of the template's tokens remain. Slot markers (`{{query}}`, `{{examples}}`...),
role headers (`[system]`) and line breaks are never dropped: they carry the structure, not the content.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

# Spans that are kept whole: slot markers, role header lines, line breaks.
PROTECTED = re.compile(
    r"\{\{[A-Za-z_][A-Za-z0-9_]*\}\}|^\[(?:system|user|assistant)\][ \t]*$|\n", re.MULTILINE
)
WORD = re.compile(r"[ \t]*\S+")
_WINDOW = 1024  # tokens scored per forward pass


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    protected: bool
    n_tokens: int = 0
    score: float = math.inf  # mean self-information (nats); protected units never drop


@dataclass(frozen=True)
class Compressed:
    text: str
    rate: float  # the rate asked for
    kept_tokens: int
    total_tokens: int

    @property
    def kept_ratio(self) -> float:
        return self.kept_tokens / self.total_tokens if self.total_tokens else 1.0


def split_units(text: str) -> list[Unit]:
    """The text cut into protected spans and words, in order, covering every character."""
    units: list[Unit] = []
    position = 0
    for match in PROTECTED.finditer(text):
        units.extend(_words(text, position, match.start()))
        units.append(Unit(match.start(), match.end(), protected=True))
        position = match.end()
    units.extend(_words(text, position, len(text)))
    return units


def _words(text: str, start: int, end: int) -> list[Unit]:
    out = []
    for match in WORD.finditer(text, start, end):
        out.append(Unit(match.start(), match.end(), protected=False))
    # Trailing spaces of the span stay as they are (a protected unit of spaces).
    last = out[-1].end if out else start
    if last < end:
        out.append(Unit(last, end, protected=True))
    return out


@torch.no_grad()
def token_self_information(
    model: Any, tokenizer: Any, text: str
) -> tuple[list[float], list[tuple[int, int]]]:
    """-log p of each token of `text` given the tokens before it, and each token's character span."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    device = next(model.parameters()).device
    info: list[float] = []
    for start in range(0, len(ids), _WINDOW):
        # Each window sees the previous half window as context, so its first tokens are not guesses.
        context_start = max(0, start - _WINDOW // 2)
        window = torch.tensor([ids[context_start : start + _WINDOW]], device=device)
        logprobs = torch.log_softmax(model(input_ids=window).logits[0].float(), dim=-1)
        for position in range(start - context_start, window.shape[1]):
            if position == 0:
                info.append(math.log(logprobs.shape[-1]))  # no context: uniform surprisal
            else:
                info.append(-float(logprobs[position - 1, window[0, position]]))
    return info, [tuple(o) for o in offsets]


def score_units(units: list[Unit], info: list[float], offsets: list[tuple[int, int]]) -> list[Unit]:
    """Attach to each word the number of tokens it owns (by token start) and their mean self-information."""
    scored = []
    token = 0
    for unit in units:
        values = []
        while token < len(offsets) and offsets[token][0] < unit.end:
            if offsets[token][0] >= unit.start:
                values.append(info[token])
            token += 1
        n_tokens = max(len(values), 1)
        score = math.inf if unit.protected else (sum(values) / len(values) if values else 0.0)
        scored.append(Unit(unit.start, unit.end, unit.protected, n_tokens, score))
    return scored


def select_units(units: list[Unit], rate: float) -> list[bool]:
    """Keep flags: drop the lowest-scoring words until all kept tokens <= rate * all tokens.

    Protected tokens count against the budget; when they alone exceed it, every word is dropped.
    """
    total = sum(u.n_tokens for u in units)
    budget = rate * total - sum(u.n_tokens for u in units if u.protected)
    kept = total - sum(u.n_tokens for u in units if u.protected)
    keep = [True] * len(units)
    for index in sorted((i for i, u in enumerate(units) if not u.protected), key=lambda i: units[i].score):
        if kept <= budget:
            break
        keep[index] = False
        kept -= units[index].n_tokens
    return keep


def compress_text(model: Any, tokenizer: Any, text: str, rate: float) -> Compressed:
    """`text` with its least informative words dropped so that about `rate` of its tokens remain."""
    total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if rate >= 1.0 or not text.strip():
        return Compressed(text, rate, total, total)
    units = split_units(text)
    info, offsets = token_self_information(model, tokenizer, text)
    units = score_units(units, info, offsets)
    keep = select_units(units, max(rate, 0.0))
    pieces = [text[u.start : u.end] for u, k in zip(units, keep, strict=True) if k]
    compressed = _tidy("".join(pieces))
    kept_tokens = len(tokenizer(compressed, add_special_tokens=False)["input_ids"]) if compressed else 0
    return Compressed(compressed, rate, kept_tokens, total)


def _tidy(text: str) -> str:
    """Collapse the blank lines and leading spaces that dropped words leave behind."""
    text = re.sub(r"\n[ \t]+", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip(" \t")
