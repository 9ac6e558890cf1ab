from __future__ import annotations

import shutil

import pytest
import torch

from internalizer.base import load_base
from internalizer.dataset import encode_pair
from internalizer.packing import Sequence, collate, pack, stage_steps
from internalizer.train import TrainingError, answer_logits, lora_model, train_stages, training_loss
from tests.internalizer.conftest import fast_config, short_pairs


def _sequences(tokenizer, n: int) -> list[Sequence]:
    pairs = short_pairs(n)
    return [
        Sequence(*encode_pair(tokenizer, [{"role": "user", "content": p.nl}], p.cmd, "<|im_end|>"))
        for p in pairs
    ]


def test_pack_fills_rows_without_splitting_sequences():
    seqs = [Sequence([1] * n, [-100] * n) for n in (50, 40, 30, 20, 10, 60)]
    rows = pack(seqs, 64)
    assert all(r.n_tokens <= 64 for r in rows)
    assert sorted(len(s) for row in rows for s in row.sequences) == [10, 20, 30, 40, 50, 60]
    assert len(rows) == 4
    # A sequence longer than a row is kept whole, in a row of its own.
    rows = pack([Sequence([1] * 700, [-100] * 700), *seqs[:2]], 64)
    assert sorted(len(row.sequences[0]) for row in rows if len(row.sequences) == 1)[-1] == 700


def test_steps_take_batch_size_records_and_every_record_each_epoch():
    cfg = fast_config(steps_per_stage=0, batch_size=4)
    steps = stage_steps(10, 2.0, cfg, stage=1)
    assert [len(s) for s in steps] == [3, 4, 3, 3, 4, 3]  # 3 steps per epoch, near-equal sizes
    assert sorted(steps[0] + steps[1] + steps[2]) == list(range(10)) == sorted(sum(steps[3:], []))
    assert steps == stage_steps(10, 2.0, cfg, stage=1) and steps != stage_steps(10, 2.0, cfg, stage=2)
    assert len(stage_steps(10, 1.0, fast_config(steps_per_stage=7, batch_size=4), stage=1)) == 7


def test_packed_rows_give_the_loss_of_separate_sequences(tiny_gguf):
    base = load_base(tiny_gguf)
    base.model.config._attn_implementation = "sdpa"
    seqs = _sequences(base.tokenizer, 6)
    rows = pack(seqs, 160)
    assert len(rows) < len(seqs)  # several sequences share a row
    with torch.no_grad():
        batch = collate(rows, base.tokenizer.pad_token_id)
        packed, _ = training_loss(answer_logits(base.model, batch), batch)
        total, count = 0.0, 0
        for seq in seqs:
            loss = base.model(input_ids=torch.tensor([seq.input_ids]), labels=torch.tensor([seq.labels])).loss
            n = sum(1 for label in seq.labels[1:] if label != -100)
            total, count = total + loss.item() * n, count + n
    assert packed.item() == pytest.approx(total / count, rel=1e-4)


def _train(tiny_gguf, run_dir, cfg):
    base = load_base(tiny_gguf)
    seqs = _sequences(base.tokenizer, 24)
    model = lora_model(base.model, cfg)
    results = train_stages(
        model, [seqs, seqs[:12]], cfg, run_dir, base.tokenizer.pad_token_id, progress=False
    )
    lora = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    return results, lora


def test_resume_after_a_kill_gives_the_same_adapter(tiny_gguf, tmp_path):
    cfg = fast_config(steps_per_stage=4)
    full, full_weights = _train(tiny_gguf, tmp_path / "a", cfg)
    assert [r.resumed for r in full] == [False, False] and full[0].mean_loss > 0
    # a kill during stage 2: stage 1's checkpoint exists, stage 2's does not (a temp dir may be left)
    shutil.copytree(tmp_path / "a" / "stage-1", tmp_path / "b" / "stage-1")
    (tmp_path / "b" / "stage-2.tmp").mkdir()
    resumed, resumed_weights = _train(tiny_gguf, tmp_path / "b", cfg)
    assert [r.resumed for r in resumed] == [True, False]
    assert resumed[1].final_loss == pytest.approx(full[1].final_loss, rel=1e-5)
    for name, value in full_weights.items():
        assert torch.allclose(value, resumed_weights[name], atol=1e-6), name
    # everything done: a re-run trains nothing
    again, _ = _train(tiny_gguf, tmp_path / "b", cfg)
    assert [r.resumed for r in again] == [True, True]


def test_nan_loss_stops_the_job(tiny_gguf, tmp_path):
    base = load_base(tiny_gguf)
    cfg = fast_config(steps_per_stage=2)
    model = lora_model(base.model, cfg)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss is nan"):
        train_stages(
            model, [_sequences(base.tokenizer, 8)], cfg, tmp_path, base.tokenizer.pad_token_id, progress=False
        )
    assert not (tmp_path / "stage-1").exists()
