"""Packed training data: sequences, their shared prefix, rows, and the records each step trains on.

Within a stage every record's sequence begins with the same tokens: the (compressed) template before its
first variable part. A row holds that prefix once, followed by several records' segments (their shots,
query, answer and any static text after the query). `collate` gives each row a 4-D mask under which a
segment sees the prefix and itself only, and position ids that continue from the prefix, so every answer
token is predicted exactly as if its record were alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from internalizer.config import InternalizeConfig

IGNORE = -100  # label of a token that takes no loss
# Widest automatic row: a step's records behind one prefix up to here (longer sequences get their own row).
ROW_TOKENS_CAP = 4096


@dataclass
class Sequence:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken
    prefix_len: int = 0  # leading tokens shared by the other sequences of its group: packed once per row
    key: str = ""  # the record it came from, for per-record lookups (a teacher's cached outputs...)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def prefix(self) -> tuple[int, ...]:
        return tuple(self.input_ids[: self.prefix_len])

    @property
    def segment_len(self) -> int:
        return len(self.input_ids) - self.prefix_len


def share_prefix(sequences: list[Sequence]) -> None:
    """Set every sequence's `prefix_len` to the tokens all of them begin with (in place).

    The prefix stops one token before the earliest answer token, so every segment starts with a prompt
    token and predicts its first answer token from inside itself."""
    if not sequences:
        return
    first = sequences[0].input_ids
    common = min(len(s) for s in sequences)
    for seq in sequences[1:]:
        ids = seq.input_ids
        common = next((i for i in range(common) if ids[i] != first[i]), common)
    for seq in sequences:
        answer_start = next((i for i, label in enumerate(seq.labels) if label != IGNORE), len(seq))
        common = min(common, max(answer_start - 1, 0))
    for seq in sequences:
        seq.prefix_len = common


@dataclass
class Row:
    """One packed row: a shared prefix, then segments (each sequence without that prefix)."""

    prefix: tuple[int, ...]
    sequences: list[Sequence] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return len(self.prefix) + sum(s.segment_len for s in self.sequences)


def pack(sequences: list[Sequence], row_tokens: int) -> list[Row]:
    """Sequences grouped by their shared prefix, then first-fit decreasing into rows of at most
    `row_tokens` tokens (prefix included); a sequence longer than that gets a row of its own."""
    groups: dict[tuple[int, ...], list[Sequence]] = {}
    for seq in sequences:
        groups.setdefault(seq.prefix, []).append(seq)
    rows: list[Row] = []
    for prefix, members in groups.items():
        mine: list[Row] = []
        for seq in sorted(members, key=lambda s: s.segment_len, reverse=True):
            row = next((r for r in mine if r.n_tokens + seq.segment_len <= row_tokens), None)
            if row is None:
                row = Row(prefix)
                mine.append(row)
            row.sequences.append(seq)
        rows += mine
    return rows


@dataclass
class Batch:
    """Model inputs of packed rows, and where the answer tokens are."""

    inputs: dict[str, torch.Tensor]  # input_ids, position_ids, attention_mask (4-D)
    keep: torch.Tensor  # bool (rows, width): positions whose logits predict an answer token
    targets: torch.Tensor  # the answer tokens, in `keep` order (row by row, left to right)
    owner: torch.Tensor  # per target: index of its sequence in `keys`
    offset: torch.Tensor  # per target: its position within its sequence's input_ids
    keys: list[str]  # the step's sequences' keys
    n_tokens: int  # tokens that are not padding
    teacher: Any = None  # internalizer.train.TeacherTokens, set when the stage distils a teacher

    def to(self, device: torch.device) -> Batch:
        moved = {k: v.to(device) for k, v in self.inputs.items()}
        return Batch(
            moved,
            self.keep.to(device),
            self.targets.to(device),
            self.owner.to(device),
            self.offset.to(device),
            self.keys,
            self.n_tokens,
            self.teacher.to(device) if self.teacher is not None else None,
        )


def collate(rows: list[Row], pad_id: int, attn_implementation: str = "sdpa") -> Batch:
    """Packed rows -> tensors. Mask: causal, and a segment sees the prefix (segment 0) and itself only."""
    width = max(r.n_tokens for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    keep = torch.zeros((len(rows), width), dtype=torch.bool)
    targets, owner, offset, keys = [], [], [], []
    for r, row in enumerate(rows):
        n_prefix = len(row.prefix)
        ids[r, :n_prefix] = torch.tensor(row.prefix, dtype=torch.long)
        positions[r, :n_prefix] = torch.arange(n_prefix)
        segment[r, :n_prefix] = 0
        start = n_prefix
        for s, seq in enumerate(row.sequences, start=1):
            end = start + seq.segment_len
            ids[r, start:end] = torch.tensor(seq.input_ids[seq.prefix_len :], dtype=torch.long)
            positions[r, start:end] = torch.arange(seq.prefix_len, len(seq))
            segment[r, start:end] = s
            for t in range(seq.prefix_len + 1, len(seq)):
                if seq.labels[t] != IGNORE:
                    keep[r, start + t - 1 - seq.prefix_len] = True  # the logits at t-1 predict token t
                    targets.append(seq.labels[t])
                    owner.append(len(keys))
                    offset.append(t)
            keys.append(seq.key)
            start = end
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    visible = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0)
    mask = visible & causal & (segment[:, :, None] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no all-masked row, no NaN
    mask = mask[:, None]
    if attn_implementation == "eager":  # eager attention adds the mask to its scores
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    elif attn_implementation != "sdpa":
        raise ValueError(f"packed training needs eager or sdpa attention, not {attn_implementation!r}")
    return Batch(
        {"input_ids": ids, "position_ids": positions, "attention_mask": mask},
        keep,
        torch.tensor(targets, dtype=torch.long),
        torch.tensor(owner, dtype=torch.long),
        torch.tensor(offset, dtype=torch.long),
        keys,
        int((segment >= 0).sum()),
    )


def stage_steps(n_records: int, epochs: float, cfg: InternalizeConfig, stage: int) -> list[list[int]]:
    """Record indices of each optimizer step: every epoch a fresh seeded order, cut into near-equal steps
    of at most `batch_size` records; `steps_per_stage` > 0 fixes the number of steps instead."""
    if n_records == 0:
        return []
    per_epoch = math.ceil(n_records / cfg.batch_size)
    n_steps = cfg.steps_per_stage or max(1, math.ceil(epochs * per_epoch))
    steps: list[list[int]] = []
    epoch = 0
    while len(steps) < n_steps:
        order = list(range(n_records))
        random.Random(cfg.seed * 1000 + stage * 100 + epoch).shuffle(order)
        bounds = [round(i * n_records / per_epoch) for i in range(per_epoch + 1)]
        steps += [order[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        epoch += 1
    return steps[:n_steps]


def row_tokens(sequences: list[Sequence], cfg: InternalizeConfig) -> int:
    """Tokens per packed row: `pack_tokens`, or room for a whole step (the prefix once, then `batch_size`
    average segments) up to ROW_TOKENS_CAP, and never less than the longest sequence."""
    if cfg.pack_tokens:
        return cfg.pack_tokens
    if not sequences:
        return ROW_TOKENS_CAP
    longest = max(len(s) for s in sequences)
    prefix = max(s.prefix_len for s in sequences)
    segment = sum(s.segment_len for s in sequences) / len(sequences)
    return max(longest, min(ROW_TOKENS_CAP, math.ceil(prefix + cfg.batch_size * segment)))


def step_rows(
    sequences: list[Sequence], cfg: InternalizeConfig, stage: int, epochs: float
) -> list[list[Row]]:
    """The packed rows of every step of a stage, in training order."""
    width = row_tokens(sequences, cfg)
    steps = stage_steps(len(sequences), epochs, cfg, stage)
    return [pack([sequences[i] for i in step], width) for step in steps]
