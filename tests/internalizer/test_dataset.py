from __future__ import annotations

import json

import pytest

from gateway.log.store import open_db
from internalizer.dataset import (
    DatasetError,
    Example,
    Record,
    encode_pair,
    load_template_data,
    parse_template,
    render_stage_messages,
    split_records,
)

TEMPLATE = "[system]\nYou write bash.\n[user]\nExamples:\n\n{{examples}}\n\nInput: {{query}}\nOutput:"


def test_parse_template_by_role_headers():
    assert parse_template(TEMPLATE) == [
        ("system", "You write bash."),
        ("user", "Examples:\n\n{{examples}}\n\nInput: {{query}}\nOutput:"),
    ]


def test_render_fills_slots_and_examples_in_place():
    shots = [Example("h1", "list files", "ls")]
    messages = render_stage_messages(TEMPLATE, {"query": "show disk"}, shots)
    assert messages == [
        {"role": "system", "content": "You write bash."},
        {
            "role": "user",
            "content": "Examples:\n\nInput: list files\nOutput: ls\n\nInput: show disk\nOutput:",
        },
    ]


def test_render_without_template_is_query_only_plus_shots():
    assert render_stage_messages("", {"query": "show disk"}, []) == [{"role": "user", "content": "show disk"}]
    shots = [Example("h1", "list files", "ls")]
    messages = render_stage_messages("", {"query": "show disk"}, shots)
    assert messages == [{"role": "user", "content": "Input: list files\nOutput: ls\n\nshow disk"}]


def test_split_is_deterministic_and_disjoint():
    records = [Record(f"req-{i}", {"query": f"q{i}"}, "a") for i in range(50)]
    train, held = split_records(records, 0.1, 2, 50)
    train2, held2 = split_records(list(reversed(records)), 0.1, 2, 50)
    assert [r.request_id for r in held] == [r.request_id for r in held2] and len(held) == 5
    assert not {r.request_id for r in train} & {r.request_id for r in held} and len(train) == 45
    # a new request does not move old ones from train to held-out beyond its own slot
    more_train, more_held = split_records(records + [Record("req-new", {"query": "n"}, "a")], 0.1, 2, 50)
    assert len({r.request_id for r in held} - {r.request_id for r in more_held}) <= 1


def test_encode_pair_masks_the_prompt(tiny_gguf):
    from internalizer.base import load_base

    tokenizer = load_base(tiny_gguf).tokenizer
    ids, labels = encode_pair(tokenizer, [{"role": "user", "content": "list files"}], "ls -la", "<|im_end|>")
    n_prompt = labels.count(-100)
    assert n_prompt > 0 and all(label == -100 for label in labels[:n_prompt])
    assert tokenizer.decode(ids[n_prompt:]) == "ls -la<|im_end|>"


def test_records_from_mined_log_and_labels(tiny_env, tmp_path):
    settings, template_id = tiny_env
    db = open_db(settings.db_path)
    data = load_template_data(db, template_id, min_requests=20, eval_fraction=0.1, min_eval=4, max_eval=50)
    assert len(data.train) + len(data.eval) == 40 and len(data.eval) == 4
    assert "{{query}}" in data.static_text and len(data.examples) == 2
    record = data.train[0]
    assert record.query and record.target and record.messages[0]["role"] == "system"

    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps({"request_id": r.request_id, "output": "echo LABEL"}) for r in data.train + data.eval
        )
    )
    labelled = load_template_data(
        db, template_id, min_requests=20, eval_fraction=0.1, min_eval=4, max_eval=50, labels_path=labels
    )
    assert {r.target for r in labelled.train} == {"echo LABEL"}

    with pytest.raises(DatasetError, match="at least 100"):
        load_template_data(db, template_id, min_requests=100, eval_fraction=0.1, min_eval=4, max_eval=50)
    with pytest.raises(DatasetError, match="no template"):
        load_template_data(db, "nope", min_requests=1, eval_fraction=0.1, min_eval=1, max_eval=5)
