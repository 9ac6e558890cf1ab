"""Small labelled traffic for the mining tests: real NL->bash pairs from data/, written to a real log DB."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlite_utils

DATA = Path(__file__).resolve().parents[2] / "data"


def nl2bash(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n distinct (nl, cmd) pairs, shuffled so queries do not share their first words by accident."""
    rows = [json.loads(line) for line in (DATA / "nl2bash" / "dev.jsonl").read_text().splitlines()]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def add_requests(db: sqlite_utils.Database, message_lists: list[list[dict]], start: int = 0) -> list[str]:
    """Log each message list as one request (oldest first, a minute apart); returns the request ids."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for offset, messages in enumerate(message_lists):
        n = start + offset
        prompt = sum(len(m["content"]) for m in messages) // 4
        rows.append(
            {
                "request_id": f"req-{n:06d}",
                "startTime": (t0 + timedelta(minutes=n)).isoformat(),
                "messages": json.dumps(messages),
                "params": "{}",
                "prompt_tokens": prompt,
                "completion_tokens": 10,
                "total_tokens": prompt + 10,
                "spend": (prompt + 10) * 1e-6,
                "status": 200,
                "response": "ls",
            }
        )
    db["requests"].insert_all(rows)
    return [row["request_id"] for row in rows]


def assigned(db: sqlite_utils.Database) -> dict[str, dict]:
    """request_id -> its request_templates row (slots and example hashes decoded)."""
    out = {}
    for row in db.query("select * from request_templates"):
        row["slots"] = json.loads(row["slots"])
        row["example_hashes"] = json.loads(row["example_hashes"])
        out[row["request_id"]] = row
    return out


def sys_user(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]
