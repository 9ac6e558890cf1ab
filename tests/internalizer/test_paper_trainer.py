"""The paper benchmark's trainer: methods that begin with the same stages share those stages' training."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks.paper_tasks import TASKS, Record
from benchmarks.paper_train import Trainer, full_prompt_spec, promptintern_spec, query_only_spec
from internalizer.base import load_base
from internalizer.config import load_config

from .conftest import TINY_SYSTEM, short_pairs


def test_methods_with_a_common_first_stage_train_it_once(tiny_gguf, tmp_path):
    base = load_base(tiny_gguf)
    task = dataclasses.replace(TASKS["nl2bash"], instructions=TINY_SYSTEM)
    records = [Record(f"r{i}", p.nl, p.cmd) for i, p in enumerate(short_pairs(40))]
    cfg = load_config(
        overrides={
            "stages": 1,
            "examples_start": 2,
            "epochs_per_stage": 1.0,
            "final_stage_epochs": 2.0,
            "batch_size": 2,
            "seq_len": 256,
            "pack_tokens": 64,
            "quant": "f32",
            "threads": 1,
        }
    )
    trainer = Trainer(task, base, records[:8], tmp_path, example_pool=records)

    promptintern = trainer.train(promptintern_spec("promptintern", cfg), cfg, 8)
    full = trainer.train(full_prompt_spec(n_shots=2), cfg, 8)
    query = trainer.train(query_only_spec(), cfg, 8)

    # PromptIntern trained both of its stages; the full-prompt method is its first stage, reused.
    assert [s["resumed"] for s in promptintern.stages] == [False, False]
    assert [s["resumed"] for s in full.stages] == [True]
    assert full.stages[0]["steps"] == promptintern.stages[0]["steps"]
    assert full.train_seconds == pytest.approx(promptintern.stages[0]["seconds"], abs=0.05)
    # Epochs follow the stage, not its position: the full-prompt stage trains 1 epoch wherever it is (8
    # sequences longer than a 64-token row, one row each, batch 2: 4 steps), the query-only stage 2 epochs.
    assert full.stages[0]["steps"] == 4
    assert promptintern.stages[1]["steps"] == query.stages[0]["steps"]
    assert [s["resumed"] for s in query.stages] == [False]
    assert full.gguf_path != promptintern.gguf_path and full.gguf_path.is_file()


def test_distilled_methods_reuse_the_full_prompt_stage_and_learn_from_its_teacher(tiny_gguf, tmp_path):
    base = load_base(tiny_gguf)
    task = dataclasses.replace(TASKS["nl2bash"], instructions=TINY_SYSTEM)
    records = [Record(f"r{i}", p.nl, p.cmd) for i, p in enumerate(short_pairs(30))]
    plain = load_config(
        overrides={
            "stages": 1,
            "examples_start": 2,
            "steps_per_stage": 2,
            "batch_size": 2,
            "seq_len": 256,
            "quant": "f32",
            "threads": 1,
        }
    )
    distil = dataclasses.replace(plain, distill_alpha=0.5, distill_topk=8)
    trainer = Trainer(task, base, records[:6], tmp_path, example_pool=records)

    full = trainer.train(full_prompt_spec(n_shots=2), plain, 6)
    ours = trainer.train(promptintern_spec("promptintern_distill", distil), distil, 6)
    # Stage 1 (the full prompt) is the full-prompt fine-tune, reused; it is the teacher of stage 2.
    assert [s["resumed"] for s in ours.stages] == [True, False]
    assert [s["distilled"] for s in ours.stages] == [False, True]
    assert ours.distillation["teacher"] == "finetune" and ours.distillation["teacher_passes"] == 1
    # One stage on the query alone, its teacher the separate full-prompt fine-tune's adapter.
    one = trainer.train(query_only_spec("ft_query_distill"), distil, 6, teacher_adapter=full.adapter_path)
    assert one.distillation["teacher"] == "adapter" and [s["distilled"] for s in one.stages] == [True]
    assert one.gguf_path != ours.gguf_path and one.gguf_path.is_file()
