"""Shared-prefix packing on the tiny model: every answer token's loss equals training its record alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from internalizer.base import load_base
from internalizer.dataset import Example, Record
from internalizer.packing import IGNORE, Sequence, collate, pack, share_prefix
from internalizer.schedule import Stage
from internalizer.stage_data import stage_sequences
from internalizer.train import answer_logits, training_loss
from tests.internalizer.conftest import TINY_SYSTEM, short_pairs

LONG_SYSTEM = "\n".join([TINY_SYSTEM] * 6)
# Static text after the query: every record's segment must carry it, not the shared prefix.
SUFFIX_TEMPLATE = f"[system]\n{LONG_SYSTEM}\n[user]\nRequest: {{{{query}}}}\nReply with the command only."


@pytest.fixture(scope="module")
def base(tiny_gguf):
    return load_base(tiny_gguf)


def _records(n: int) -> list[Record]:
    return [Record(f"r{i}", {"query": p.nl}, p.cmd) for i, p in enumerate(short_pairs(n))]


def _alone(model, seq: Sequence) -> dict[tuple[str, int], float]:
    """Each answer token's loss with the record trained alone: the plain causal model, no packing."""
    logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0]
    return {
        (seq.key, t): F.cross_entropy(logits[t - 1][None], torch.tensor([seq.labels[t]])).item()
        for t in range(1, len(seq))
        if seq.labels[t] != IGNORE
    }


def _packed(model, rows, pad_id, attention) -> dict[tuple[str, int], float]:
    batch = collate(rows, pad_id, attention)
    _, per_token = training_loss(answer_logits(model, batch), batch)
    return {
        (batch.keys[owner], int(offset)): loss.item()
        for owner, offset, loss in zip(batch.owner, batch.offset, per_token, strict=True)
    }


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "template", [LONG_SYSTEM, SUFFIX_TEMPLATE], ids=["prefix+shots", "static-after-query"]
)
def test_packed_per_token_losses_equal_unpacked_training(base, attention, template):
    records = _records(8)
    pool = [Example(f"e{j}", p.nl, p.cmd) for j, p in enumerate(short_pairs(12)[8:])]
    shots = [pool[i % 3 : i % 3 + 2] for i in range(8)]
    sequences, fitting = stage_sequences(
        Stage(1, 1.0, 2), records, lambda ratio: template, shots, base.tokenizer, 4096
    )
    assert fitting.records == 8 and not fitting.shortened and not fitting.dropped
    prefix = sequences[0].prefix_len
    assert prefix > 60 and all(s.prefix_len == prefix for s in sequences)
    if template is SUFFIX_TEMPLATE:
        suffix = base.tokenizer("Reply with the command only.", add_special_tokens=False)["input_ids"]
        for seq in sequences:  # the static text after the query is in each segment, before the answer
            answer = seq.labels.index(next(label for label in seq.labels if label != IGNORE))
            assert _contains(seq.input_ids[prefix:answer], suffix)
    rows = pack(sequences, prefix + 3 * max(s.segment_len for s in sequences))
    assert len(rows) < len(sequences)  # several records share a row and its one prefix
    # Each row holds the prefix once: the tokens saved are the prefix times the records that share a row.
    saved = prefix * (len(sequences) - len(rows))
    assert sum(r.n_tokens for r in rows) == sum(len(s) for s in sequences) - saved

    base.model.config._attn_implementation = attention
    try:
        with torch.no_grad():
            packed = _packed(base.model, rows, base.tokenizer.pad_token_id, attention)
            alone = {k: v for seq in sequences for k, v in _alone(base.model, seq).items()}
    finally:
        base.model.config._attn_implementation = "sdpa"
    assert packed.keys() == alone.keys()
    for key, value in alone.items():
        assert packed[key] == pytest.approx(value, abs=1e-4), key


def test_the_mask_is_what_keeps_segments_apart(base):
    """Without the segment mask (plain causal attention over the row) the losses change: the test above
    compares something the mask decides."""
    sequences = [Sequence(*_pair(base, p.nl, p.cmd), key=str(i)) for i, p in enumerate(short_pairs(4))]
    share_prefix(sequences)
    (row,) = pack(sequences, 4096)
    batch = collate([row], base.tokenizer.pad_token_id)
    with torch.no_grad():
        masked, _ = training_loss(answer_logits(base.model, batch), batch)
        width = batch.keep.shape[1]
        batch.inputs["attention_mask"] = torch.tril(torch.ones(width, width, dtype=torch.bool))[None, None]
        unmasked, _ = training_loss(answer_logits(base.model, batch), batch)
    assert abs(masked.item() - unmasked.item()) > 1e-3


def test_share_prefix_stops_before_the_first_answer_token():
    a = Sequence([1, 2, 3, 4, 5], [IGNORE, IGNORE, IGNORE, 4, 5])
    b = Sequence([1, 2, 3, 9], [IGNORE, IGNORE, IGNORE, 9])
    share_prefix([a, b])
    assert a.prefix_len == b.prefix_len == 2  # the answer's first token is predicted from inside the segment
    alone = Sequence([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4])
    share_prefix([alone])
    assert alone.prefix_len == 1


def test_pack_groups_by_prefix_and_keeps_long_sequences_whole():
    def seq(prefix, n, key):
        return Sequence(prefix + [7] * n, [IGNORE] * (len(prefix) + n), len(prefix), key)

    p, q = [1] * 50, [2] * 30
    sequences = [seq(p, 20, "a"), seq(p, 20, "b"), seq(p, 200, "c"), seq(q, 10, "d"), seq(p, 20, "e")]
    rows = pack(sequences, 120)
    layout = sorted((r.prefix[:1], sorted(s.key for s in r.sequences)) for r in rows)
    assert layout == [((1,), ["a", "b", "e"]), ((1,), ["c"]), ((2,), ["d"])]
    assert all(r.n_tokens <= 120 for r in rows if len(r.sequences) > 1)


def _pair(base, query: str, answer: str) -> tuple[list[int], list[int]]:
    from internalizer.dataset import encode_pair

    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": query}]
    return encode_pair(base.tokenizer, messages, answer, "<|im_end|>")


def _contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))
