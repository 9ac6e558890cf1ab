"""Fixtures for the internalizer tests: a tiny llama built in this session, a log of real NL2Bash traffic."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from demo.nl2bash_app import NL2BashApp, Pair, iter_requests, load_pairs
from gateway.log.store import open_db
from gateway.settings import load_settings
from internalizer.config import InternalizeConfig

TINY_SYSTEM = "Translate the request into one bash command. Reply with the command only."


def short_pairs(n: int, split: str = "train") -> list[Pair]:
    """Short real NL2Bash pairs (so the tiny model's sequences stay short)."""
    pairs = [p for p in load_pairs(split) if len(p.nl) < 70 and len(p.cmd) < 35]
    return pairs[:n]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A two-layer llama with a 512-token BPE vocabulary, pretrained briefly, as an F32 GGUF."""
    from tests.support.tiny_model import build_tiny_gguf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two contended ones
    try:
        pairs = [(p.nl, p.cmd) for p in short_pairs(300)]
        return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", pairs, TINY_SYSTEM, steps=150)
    finally:
        torch.set_num_threads(threads)


def log_requests(
    db, app: NL2BashApp, queries: list[Pair], start: int = 0, answer=lambda p: p.cmd
) -> list[str]:
    """Log one request per query (as the gateway would), the upstream answer being `answer(pair)`."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for offset, request in enumerate(iter_requests(app, queries, len(queries), seed=0)):
        n = start + offset
        rows.append(
            {
                "request_id": f"req-{n:06d}",
                "startTime": (t0 + timedelta(minutes=n)).isoformat(),
                "messages": json.dumps(request.messages),
                "params": "{}",
                "prompt_tokens": 200,
                "completion_tokens": 10,
                "total_tokens": 210,
                "spend": 2e-4,
                "status": 200,
                "response": answer(request.pair),
                "source": "gateway",
            }
        )
    db["requests"].insert_all(rows)
    return [row["request_id"] for row in rows]


@pytest.fixture
def tiny_env(home, tiny_gguf, monkeypatch):
    """A home whose base model is the tiny GGUF and whose log holds one mined NL2Bash template.

    Returns (settings, template_id). 40 requests: a short system prompt, 2 fixed inline examples, the query;
    the logged answer is the reference command.
    """
    from internalizer.mine import mine

    monkeypatch.setenv("PROMPTINTERN_BASE_MODEL", str(tiny_gguf))
    settings = load_settings()
    settings.ensure_home()
    pool = short_pairs(300)
    app = NL2BashApp(pool, n_shots=2, examples="fixed", layout="inline", system_prompt=TINY_SYSTEM)
    db = open_db(settings.db_path)
    log_requests(db, app, pool[2:42])
    result = mine(db)
    assert len(result.templates) == 1, result.templates
    db.close()
    return settings, result.templates[0]["id"]


# Two short stages (one progressive, one query-only) on the tiny model: seconds, not minutes.
FAST = dict(
    stages=1,
    examples_start=2,
    template_ratio_start=1.0,
    steps_per_stage=12,
    batch_size=4,
    seq_len=192,
    lr=5e-3,
    quant="f32",
    min_requests=20,
    min_eval=4,
    verify_samples=3,
    verify_min_agreement=1.0,
    max_new_tokens=16,
    gate_metric="chrf",
    gate_threshold=0.0,
    task_metric="bash",
    threads=1,
)


def fast_config(**overrides) -> InternalizeConfig:
    return InternalizeConfig(**{**FAST, **overrides})


def fast_overrides(**overrides) -> list[str]:
    """FAST as `-o key=value` CLI arguments."""
    args = []
    for key, value in {**FAST, **overrides}.items():
        args += ["-o", f"{key}={value}"]
    return args
