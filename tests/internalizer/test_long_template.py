"""Long templates on the default config: a Banking77 classifier prompt (instructions, the 77 labels, five
examples, the customer's message) of over 2,000 tiny-model tokens goes through the whole job; records that
do not fit the context lose shots, then get a more compressed template, and the summary says so."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from benchmarks.paper_tasks import banking77_instructions
from gateway.log.store import open_db
from gateway.settings import load_settings
from internalizer.base import load_base
from internalizer.config import InternalizeConfig
from internalizer.dataset import Example, Record, render_stage_messages
from internalizer.job import internalize
from internalizer.mine import mine
from internalizer.schedule import Stage
from internalizer.stage_data import fallback_ratios, stage_sequences
from internalizer.train import lora_model, train_stages
from tests.internalizer.test_packing import LONG_SYSTEM, _records

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "banking77"


def banking77_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in (FIXTURE / "train.jsonl").read_text().splitlines()]


@pytest.fixture
def banking_env(home, tiny_gguf, monkeypatch):
    """A log of 40 requests of a Banking77 support app: one system prompt with the 77 labels and 5 fixed
    examples, the customer's message as the user turn, the intent as the logged answer."""
    monkeypatch.setenv("PROMPTINTERN_BASE_MODEL", str(tiny_gguf))
    settings = load_settings()
    settings.ensure_home()
    rows = banking77_rows()
    instructions = banking77_instructions(json.loads((FIXTURE / "labels.json").read_text()))
    shots = [Example(r["id"], r["text"], r["label"]) for r in rows[:5]]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    db = open_db(settings.db_path)
    db["requests"].insert_all(
        {
            "request_id": f"req-{i:06d}",
            "startTime": (t0 + timedelta(minutes=i)).isoformat(),
            "messages": json.dumps(render_stage_messages(instructions, {"query": row["text"]}, shots)),
            "params": "{}",
            "status": 200,
            "response": row["label"],
            "source": "gateway",
        }
        for i, row in enumerate(rows[5:45])
    )
    (template,) = mine(db).templates
    db.close()
    return settings, template["id"]


def test_the_default_config_internalizes_a_template_of_2000_tokens(banking_env):
    settings, template_id = banking_env
    messages = []
    cfg = InternalizeConfig(threads=1)  # the defaults; one thread is faster on tiny matrices
    result = internalize(settings, template_id, cfg, progress=False, say=messages.append)

    assert result.model_id and Path(result.gguf_path).is_file()
    assert result.status in ("active", "candidate")  # the gate's verdict on a tiny model is not the point
    first, *_, last = result.fitting
    assert first["longest"] >= 2000 and first["max_len"] == 4096  # the tiny model's context
    assert all(f["records"] == 36 and not f["dropped"] for f in result.fitting)
    assert not any(f["fewer_shots"] or f["more_compressed"] for f in result.fitting)

    # The plan was said before training, and the summary holds it beside the actual figures.
    assert any(line.startswith("plan: 4 stages, expected") for line in messages)
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["minutes"]["planned"] > 0 and summary["minutes"]["actual"] > 0
    stages = summary["plan"]["stages"]
    assert [s["records"] for s in stages] == [36] * 4 and stages[-1]["template_ratio"] == 0.0
    assert stages[0]["tokens"] * 3 < stages[0]["tokens_unpacked"]  # the template once per row
    assert [s["train_tokens"] for s in summary["stages"]] == [s["tokens"] for s in stages]
    assert all(s["planned_s"] > 0 and s["seconds"] > 0 for s in summary["stages"])
    # It learned: the served (query-only) stage ends below where training began.
    assert summary["stages"][-1]["final_loss"] < summary["stages"][0]["mean_loss"]
    assert "base_full_prompt" in result.eval_scores  # evaluated with the whole 2,000-token prompt


def test_a_record_that_does_not_fit_loses_shots_then_template_then_is_left_out(tiny_gguf):
    tokenizer = load_base(tiny_gguf).tokenizer
    records = _records(3)
    long_query = Record("long", {"query": "find " * 300}, "ls")
    pool = [Example(f"e{i}", f"list the files number {i} in this directory", "ls -la") for i in range(3)]
    texts = {1.0: LONG_SYSTEM, 0.5: LONG_SYSTEM[: len(LONG_SYSTEM) // 2]}
    texts |= {r: "Translate." for r in fallback_ratios(0.5)}

    def template(ratio):
        return texts.get(ratio, "")

    def fit(max_len, shots=3):
        return stage_sequences(
            Stage(1, 1.0, shots), [*records, long_query], template, [pool] * 4, tokenizer, max_len
        )

    generous, fitting = fit(4096)
    assert len(generous) == 4 and not fitting.shortened and not fitting.dropped and fitting.describe() is None
    # Shorter than every record's prompt with three shots: each keeps the template with fewer shots.
    _, fitting = fit(min(len(s) for s in generous[:3]) - 1)
    assert fitting.fewer_shots == 3 and fitting.dropped == 1 and fitting.records == 3
    assert "1 left out (the query alone is longer)" in fitting.describe()  # 300 words fit nowhere
    # Shorter than the whole template without shots: the template is compressed (here to half).
    no_shots, _ = fit(4096, shots=0)
    max_len = min(len(s) for s in no_shots[:3]) - 1
    sequences, fitting = fit(max_len)
    assert fitting.more_compressed == 3 and fitting.fewer_shots == 0
    assert all(len(s) <= max_len for s in sequences)
    assert "3 on a more compressed template" in fitting.describe()


def test_checkpointing_wide_rows_trains_the_same_weights(tiny_gguf, tmp_path):
    """Recomputing activations for wide rows is a memory trade, not a change to training."""
    base = load_base(tiny_gguf)
    tokenizer = base.tokenizer
    sequences, _ = stage_sequences(
        Stage(1, 1.0, 0), _records(6), lambda ratio: LONG_SYSTEM, [[]] * 6, tokenizer, 4096
    )
    weights = []
    for above in (0, 1):
        cfg = InternalizeConfig(batch_size=3, steps_per_stage=2, threads=1, checkpoint_tokens=above)
        model = lora_model(load_base(tiny_gguf).model, cfg)
        run_dir = tmp_path / str(above)
        train_stages(model, [sequences], cfg, run_dir, tokenizer.pad_token_id, progress=False)
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items() if "lora_B" in k})
    for name, value in weights[0].items():
        assert value.abs().sum() > 0 and torch.allclose(value, weights[1][name], atol=1e-6), name
