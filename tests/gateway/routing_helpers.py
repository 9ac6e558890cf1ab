"""A log with a mined NL2Bash template and an "internalized" model serving it, for the routing tests.

The internalized model is the SmolLM2-135M GGUF itself (registered as an active `models` row with a route):
what routing does with it is the same whatever the weights, and it runs on real llama.cpp.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlite_utils

from demo.nl2bash_app import NL2BashApp, load_pairs
from gateway.log.store import open_db
from gateway.routing.routes_store import set_route
from gateway.settings import Settings, UpstreamModel
from gateway.upstream.base_model import smollm2_gguf_path
from internalizer.mine import mine
from internalizer.registry import register
from tests.gateway.conftest import RunningGateway, start_gateway
from tests.internalizer.mine_traffic import add_requests

CLIENT_MODEL = "echo"
PRICE = {
    "input_cost_per_token": 1.5e-7,
    "output_cost_per_token": 6e-7,
    "cache_read_ratio": 0.5,
}  # the fake provider echoes the last user message: an answer that is not local


@dataclass
class Traffic:
    app: NL2BashApp
    queries: list[str]  # fresh queries (not in the mined log)

    def messages(self, query: str) -> list[dict[str, str]]:
        return self.app.messages(query)


def nl2bash_traffic() -> Traffic:
    pool = load_pairs("train")
    app = NL2BashApp(pool, examples="fixed", layout="turns", seed=0)
    fixed = {p.id for p in app.fixed_examples}
    queries = [p.nl for p in load_pairs("dev") if p.id not in fixed]
    return Traffic(app, queries)


def seed_template(db_path: Path, traffic: Traffic, n: int = 12) -> str:
    """Log n requests of the app, mine them; the template id."""
    db = open_db(db_path)
    try:
        add_requests(db, [traffic.messages(q) for q in traffic.queries[-n:]])
        result = mine(db)
        [template_id] = result.new_ids
        return template_id
    finally:
        db.close()


def add_model(db_path: Path, template_id: str, model_id: str, gguf: Path, status: str = "active") -> None:
    db = open_db(db_path)
    try:
        register(
            db, model_id=model_id, template_id=template_id, gguf_path=gguf, sha256="-", quant="q4_1",
            base_model="smollm2", config={}, stage_losses=[], eval_scores={}, n_train_requests=0,
        )  # fmt: skip
        if status != "candidate":
            db.execute("update models set status = ? where id = ?", [status, model_id])
            db.conn.commit()
    finally:
        db.close()


def route(db_path: Path, template_id: str, **changes: Any) -> None:
    db = open_db(db_path)
    try:
        set_route(db, template_id, **changes)
    finally:
        db.close()


def with_db(db_path: Path, action: Callable[[sqlite_utils.Database], Any]) -> Any:
    db = open_db(db_path)
    try:
        return action(db)
    finally:
        db.close()


def copy_gguf(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    shutil.copyfile(smollm2_gguf_path(), target)
    return target


def routed_gateway(
    home: Path, upstream_url: str, traffic: Traffic, model_id: str = "m-internal", **settings: Any
) -> tuple[RunningGateway, str]:
    """A gateway in front of the fake provider whose log has the template routed to a local model."""
    settings_obj = Settings(
        home=home,
        models=[
            UpstreamModel(
                name=CLIENT_MODEL, litellm_model="openai/echo", api_base=upstream_url, api_key="sk-fake",
                transport="direct",
            )
        ],
        prices={"echo": PRICE},
        local_threads=2,
        router_poll_s=0.2,
        **settings,
    )  # fmt: skip
    settings_obj.ensure_home()
    template_id = seed_template(settings_obj.db_path, traffic)
    add_model(settings_obj.db_path, template_id, model_id, smollm2_gguf_path())
    route(settings_obj.db_path, template_id, model_id=model_id, mode="active")
    return start_gateway(settings_obj), template_id


def body(traffic: Traffic, query: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": CLIENT_MODEL,
        "messages": traffic.messages(query),
        "max_tokens": 6,
        "temperature": 0,
        **extra,
    }


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def is_echo_of(text: str, query: str) -> bool:
    """The fake provider's answer to `query` (it echoes the last message, cut at max_tokens words)."""
    return text.startswith("echo: ") and f"echo: {query}".startswith(text)


def upstream_saw(upstream_url: str, query: str) -> bool:
    """Whether the fake provider received a request whose last message is `query`."""
    received = httpx.get(upstream_url.removesuffix("/v1") + "/fake/requests", timeout=5).json()["requests"]
    return any((r.get("messages") or [{}])[-1].get("content") == query for r in received)


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["params"])
