"""Prompt distillation on the tiny model: the teacher's cache, the loss, resume and alpha = 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from internalizer.base import load_base
from internalizer.dataset import DatasetError, Example, Record, load_queries
from internalizer.distill import Teacher, teacher_topk
from internalizer.packing import IGNORE, collate, pack
from internalizer.schedule import Stage
from internalizer.stage_data import stage_sequences
from internalizer.train import (
    Objective,
    answer_logits,
    lora_model,
    train_stages,
    training_loss,
)
from tests.internalizer.conftest import TINY_SYSTEM, fast_config, short_pairs

TEMPLATE = f"[system]\n{TINY_SYSTEM}\n[user]\n{{{{query}}}}"
STAGES = [Stage(1, 1.0, 2), Stage(2, 0.0, 0)]


@pytest.fixture(scope="module")
def base(tiny_gguf):
    return load_base(tiny_gguf)


def _data(base, n: int = 8):
    records = [Record(f"r{i}", {"query": p.nl}, p.cmd) for i, p in enumerate(short_pairs(n))]
    pool = [Example(f"e{j}", p.nl, p.cmd) for j, p in enumerate(short_pairs(n + 6)[n:])]
    shots = [pool[i % 3 : i % 3 + 2] for i in range(n)]
    stage_data = [
        stage_sequences(stage, records, lambda r: TEMPLATE if r else "", shots, base.tokenizer, 512)[0]
        for stage in STAGES
    ]
    return stage_data


def test_cached_topk_matches_a_fresh_forward_pass(base):
    whole = _data(base)[0]
    cache = teacher_topk(
        base.model, whole, 16, 2.0, base.tokenizer.pad_token_id, torch.device("cpu"), fast_config()
    )
    assert cache.ids.shape[1] == 16
    for seq in whole:
        with torch.no_grad():
            logits = base.model(input_ids=torch.tensor([seq.input_ids])).logits[0]
        answer = [t for t in range(1, len(seq)) if seq.labels[t] != IGNORE]
        logprobs = F.log_softmax(logits[[t - 1 for t in answer]] / 2.0, dim=-1)
        start, n = cache.spans[seq.key]
        assert n == len(answer)
        top = logprobs.topk(16, dim=-1)
        assert torch.allclose(cache.logprobs[start : start + n], top.values, atol=1e-4)
        assert (cache.ids[start : start + n].long() == top.indices).float().mean() > 0.99  # ties may swap
        rest = torch.log1p(-top.values.exp().sum(-1).clamp(max=1 - 1e-7))
        assert torch.allclose(cache.rest[start : start + n], rest, atol=1e-3)


def test_the_loss_is_zero_for_the_teacher_itself_and_alpha_one_is_cross_entropy(base):
    whole = _data(base)[0]
    cache = teacher_topk(
        base.model, whole, 8, 1.0, base.tokenizer.pad_token_id, torch.device("cpu"), fast_config()
    )
    rows = pack(whole, 4096)
    batch = collate(rows, base.tokenizer.pad_token_id)
    batch.teacher = cache.tokens(batch)
    assert batch.teacher.present.all()
    with torch.no_grad():
        logits = answer_logits(base.model, batch)
    _, kl_only = training_loss(logits, batch, Objective(0.0, 1.0, cache))
    assert kl_only.abs().max() < 1e-5
    plain, plain_tokens = training_loss(logits, batch)
    same, same_tokens = training_loss(logits, batch, Objective(1.0, 1.0, cache))
    assert torch.equal(plain_tokens, same_tokens) and plain.item() == same.item()
    # a record the teacher never saw trains on its cross-entropy alone
    cache.spans.pop(whole[0].key)
    batch.teacher = cache.tokens(batch)
    _, mixed = training_loss(logits, batch, Objective(0.0, 1.0, cache))
    alone = batch.owner == batch.keys.index(whole[0].key)
    assert torch.equal(mixed[alone], plain_tokens[alone]) and mixed[~alone].abs().max() < 1e-5


def _teacher(cfg, run_dir, stage_data, base):
    return Teacher(cfg, run_dir, STAGES, stage_data[0], base.tokenizer, base.tokenizer.pad_token_id, "tiny")


def _kl(model, sequences, cache, pad_id) -> float:
    batch = collate(pack(sequences, 4096), pad_id)
    batch.teacher = cache.tokens(batch)
    with torch.no_grad():
        loss, _ = training_loss(answer_logits(model, batch), batch, Objective(0.0, 1.0, cache))
    return loss.item()


def test_distillation_trains_the_query_only_stage_towards_the_teacher_and_resume_reuses_the_cache(
    tiny_gguf, tmp_path
):
    cfg = fast_config(steps_per_stage=6, distill_alpha=0.0, distill_topk=16, distill_teacher="base")
    base = load_base(tiny_gguf)
    stage_data = _data(base)
    pad = base.tokenizer.pad_token_id
    teacher = _teacher(cfg, tmp_path, stage_data, base)
    model = lora_model(base.model, cfg)
    results = train_stages(model, stage_data, cfg, tmp_path, pad, progress=False, teacher=teacher)
    assert teacher.passes == 1 and [r.distilled for r in results] == [False, True]
    assert teacher.cache.manifest["teacher"] == "base:tiny" and teacher.cache.manifest["k"] == 16
    # the query-only student moved towards the base model given the whole prompt
    with model.disable_adapter():
        before = _kl(model, stage_data[1], teacher.cache, pad)
    after = _kl(model, stage_data[1], teacher.cache, pad)
    assert after < 0.8 * before
    weights = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}

    # a kill during stage 2: the resumed run reuses the cache (no second pass) and trains the same weights
    shutil.rmtree(tmp_path / "stage-2")
    base = load_base(tiny_gguf)
    resumed = _teacher(cfg, tmp_path, stage_data, base)
    model = lora_model(base.model, cfg)
    train_stages(model, stage_data, cfg, tmp_path, pad, progress=False, teacher=resumed)
    assert resumed.passes == 0 and resumed.cache is not None
    for name, value in model.state_dict().items():
        if "lora_" in name:
            assert torch.allclose(value, weights[name], atol=1e-6), name
    # another K is another teacher output: computed again
    other = _teacher(cfg.__class__(**{**cfg.to_dict(), "distill_topk": 4}), tmp_path, stage_data, base)
    shutil.rmtree(tmp_path / "stage-2")
    train_stages(
        lora_model(load_base(tiny_gguf).model, cfg), stage_data, cfg, tmp_path, pad, False, teacher=other
    )
    assert other.passes == 1


def test_alpha_one_reproduces_plain_training_exactly(tiny_gguf, tmp_path):
    cfg = fast_config(steps_per_stage=3)
    runs = []
    for name, teacher in (("plain", False), ("alpha1", True)):
        base = load_base(tiny_gguf)
        stage_data = _data(base)
        model = lora_model(base.model, cfg)
        t = _teacher(cfg, tmp_path / name, stage_data, base) if teacher else None
        results = train_stages(
            model, stage_data, cfg, tmp_path / name, base.tokenizer.pad_token_id, False, teacher=t
        )
        runs.append((results, {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}, t))
    (plain, plain_w, _), (same, same_w, teacher) = runs
    assert [(r.mean_loss, r.final_loss) for r in plain] == [(r.mean_loss, r.final_loss) for r in same]
    assert all(torch.equal(plain_w[k], same_w[k]) for k in plain_w)
    assert teacher.passes == 0 and not (tmp_path / "alpha1" / "teacher").exists()
    assert cfg.fingerprint() == fast_config(steps_per_stage=3, distill_topk=8).fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"query": "list files"}\nnot json\n', "q.jsonl:2: expected a JSON object with a non-empty 'query'"),
        ('{"output": "ls"}\n', "q.jsonl:1: expected a JSON object with a non-empty 'query'"),
        ('{"query": ""}\n', "q.jsonl:1: expected"),
        ("\n\n", "no queries"),
    ],
)
def test_bad_queries_files_fail_with_one_clear_line(tmp_path, text, message):
    path = tmp_path / "q.jsonl"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")) as info:
        load_queries(path)
    assert "\n" not in str(info.value)


def test_queries_file_gives_records_without_a_target(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"query": "list files"}\n{"id": "x1", "query": "show disk usage", "slots": {"lang": "en"}}\n'
    )
    records = load_queries(path)
    assert [r.target for r in records] == ["", ""]
    assert records[1].request_id == "x1" and records[1].slots == {"lang": "en", "query": "show disk usage"}


def test_the_job_distils_and_its_teacher_answers_failed_requests_and_queries(tiny_env, tmp_path):
    from click.testing import CliRunner

    from gateway.cli import main
    from gateway.log.store import open_db
    from tests.internalizer.conftest import fast_overrides

    settings, template_id = tiny_env
    db = open_db(settings.db_path)
    failed = [
        r["request_id"] for r in db.query("select request_id from requests order by request_id limit 2")
    ]
    db.execute("update requests set status = 502, response = null where request_id in (?, ?)", failed)
    db.conn.commit()
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        '{"query": "count lines in notes.txt"}\n{"id": "q2", "query": "show free disk space"}\n'
    )
    runner = CliRunner()
    args = ["internalize", template_id, "--json", *fast_overrides(steps_per_stage=4, max_new_tokens=8)]

    refused = runner.invoke(main, [*args, "--queries", str(queries)])
    assert refused.exit_code != 0 and "needs a teacher" in refused.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    broken = runner.invoke(main, [*args, "--queries", str(bad), "-o", "distill_alpha=0.5"])
    assert broken.exit_code != 0 and "bad.jsonl:1: expected a JSON object" in broken.output

    result = runner.invoke(
        main, [*args, "--queries", str(queries), "-o", "distill_alpha=0.5", "-o", "distill_topk=8"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    distillation = row["distillation"]
    assert distillation["teacher"] == "finetune" and distillation["teacher_passes"] == 1
    assert distillation["distilled_stages"] == [2] and distillation["written_answers"] == 4
    assert [s["distilled"] for s in row["stages"]] == [False, True]
    run = Path(row["run_dir"])
    manifest = json.loads((run / "teacher" / "manifest.json").read_text())
    assert (
        manifest["k"] == 8 and manifest["teacher"].startswith("stage-1:") and manifest["written_answers"] == 4
    )
    written = [json.loads(line)["key"] for line in (run / "teacher-answers.jsonl").read_text().splitlines()]
    assert set(written) == {*failed, "q2", next(k for k in written if k.startswith("query-"))}
