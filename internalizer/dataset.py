"""Training records of one mined template, and the chat prompts each stage trains on.

A record is one logged request: its slot values (the query and any other variable part), the examples it
was sent with, the full messages it was sent with, and its target, the logged upstream answer
(distillation) or a user-supplied label. The split into train and held-out eval is a deterministic
function of the request ids.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlite_utils

from gateway.templates.query_format import query_only_messages

if TYPE_CHECKING:
    from internalizer.config import InternalizeConfig

ROLE_HEADER = re.compile(r"^\[(system|user|assistant)\]\s*$", re.MULTILINE)
MARKER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
EXAMPLES_MARKER = "{{examples}}"


class DatasetError(RuntimeError):
    pass


@dataclass(frozen=True)
class Example:
    hash: str
    input: str
    output: str

    def render(self) -> str:
        return f"Input: {self.input}\nOutput: {self.output}"


@dataclass
class Record:
    request_id: str
    slots: dict[str, str]  # every variable part, `query` included
    target: str
    messages: list[dict[str, str]] = field(default_factory=list)  # the full prompt as logged
    example_hashes: list[str] = field(default_factory=list)

    @property
    def query(self) -> str:
        return self.slots.get("query", "")


@dataclass
class TemplateData:
    template_id: str
    name: str
    static_text: str
    examples: list[Example]
    train: list[Record]
    eval: list[Record]
    # Logged requests with no usable upstream answer (missing or failed): a teacher can answer them.
    unanswered: list[Record] = field(default_factory=list)


def load_labels(path: Path) -> dict[str, str]:
    """`--labels FILE.jsonl`: lines of {"request_id" or "query", "output"}; keyed by id or `query:` + text."""
    labels: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            output = str(item["output"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{number}: expected a JSON object with an 'output' field") from exc
        if "request_id" in item:
            labels[str(item["request_id"])] = output
        elif "query" in item:
            labels["query:" + str(item["query"])] = output
        else:
            raise DatasetError(f"{path}:{number}: a label needs 'request_id' or 'query'")
    return labels


def load_queries(path: Path) -> list[Record]:
    """`--queries FILE.jsonl`: lines of {"query": text, optional "slots": {...}, optional "id"}; records
    without a target, for a teacher to answer."""
    records: list[Record] = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read queries file {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            query = item["query"]
            slots = item.get("slots") or {}
            if not isinstance(query, str) or not query.strip() or not isinstance(slots, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise DatasetError(
                f"{path}:{number}: expected a JSON object with a non-empty 'query' string"
            ) from exc
        key = str(item.get("id") or "query-" + hashlib.sha256(query.encode()).hexdigest()[:12])
        records.append(Record(key, {**{str(k): str(v) for k, v in slots.items()}, "query": query}, ""))
    if not records:
        raise DatasetError(f"{path}: no queries (one JSON object per line, with a 'query')")
    return records


def load_records(
    db: sqlite_utils.Database, template_id: str, labels: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[Example], list[Record]]:
    """The template row, its example pool and one record per successful logged request."""
    template, pool, records, _ = load_all_records(db, template_id, labels)
    return template, pool, records


def load_all_records(
    db: sqlite_utils.Database, template_id: str, labels: dict[str, str] | None = None
) -> tuple[dict[str, Any], list[Example], list[Record], list[Record]]:
    """The template row, its example pool, one record per logged request with a usable answer, and one
    (no target) per logged request without one (failed or empty upstream call)."""
    template = next(iter(db.query("select * from templates where id = ?", [template_id])), None)
    if template is None:
        raise DatasetError(f"no template {template_id!r}: run `promptintern mine` first")
    pool = [
        Example(row["hash"], row["input"] or "", row["output"] or "")
        for row in db.query(
            "select e.hash, e.input, e.output from examples e join template_examples te "
            "on te.example_hash = e.hash where te.template_id = ? order by e.hash",
            [template_id],
        )
    ]
    records, unanswered = [], []
    rows = db.query(
        "select rt.request_id, rt.query, rt.slots, rt.example_hashes, r.messages, r.response, r.status "
        "from request_templates rt join requests r on r.request_id = rt.request_id "
        "where rt.template_id = ? order by rt.request_id",
        [template_id],
    )
    for row in rows:
        slots = _json(row["slots"], {}) or {}
        slots = {str(k): str(v) for k, v in slots.items()} if isinstance(slots, dict) else {}
        if row["query"] is not None:
            slots.setdefault("query", row["query"])
        target = row["response"]
        if labels is not None:
            target = labels.get(row["request_id"], labels.get("query:" + slots.get("query", "")))
        elif row["status"] not in (None, 200):
            target = None  # a failed upstream call is no answer to learn from
        record = Record(
            request_id=row["request_id"],
            slots=slots,
            target=str(target or "").strip(),
            messages=_json(row["messages"], []) or [],
            example_hashes=list(_json(row["example_hashes"], []) or []),
        )
        if record.target:
            records.append(record)
        elif labels is None and record.query.strip():
            unanswered.append(record)
    return template, pool, records, unanswered


def split_records(
    records: list[Record], eval_fraction: float, min_eval: int, max_eval: int, max_train: int = 0
) -> tuple[list[Record], list[Record]]:
    """Held-out eval = the records whose id hashes lowest: stable when new requests are logged."""
    ordered = sorted(records, key=lambda r: hashlib.sha256(r.request_id.encode()).hexdigest())
    n_eval = min(max(min_eval, math.ceil(eval_fraction * len(ordered))), max_eval, len(ordered) - 1)
    held_out, train = ordered[:n_eval], ordered[n_eval:]
    if max_train:
        train = train[:max_train]
    return train, held_out


def load_for_job(
    db: sqlite_utils.Database, template_id: str, cfg: InternalizeConfig, labels_path: Path | None = None
) -> TemplateData:
    """The template's records, split as the job's config says (its minimum, held-out share and caps)."""
    return load_template_data(
        db,
        template_id,
        min_requests=cfg.min_requests,
        eval_fraction=cfg.eval_fraction,
        min_eval=cfg.min_eval,
        max_eval=cfg.max_eval,
        max_train=cfg.max_train,
        labels_path=labels_path,
    )


def load_template_data(
    db: sqlite_utils.Database,
    template_id: str,
    *,
    min_requests: int,
    eval_fraction: float,
    min_eval: int,
    max_eval: int,
    max_train: int = 0,
    labels_path: Path | None = None,
) -> TemplateData:
    labels = load_labels(labels_path) if labels_path else None
    template, pool, records, unanswered = load_all_records(db, template_id, labels)
    needed = max(min_requests, min_eval + 1)
    if len(records) < needed:
        raise DatasetError(
            f"template {template_id} has {len(records)} usable requests; at least {needed} are needed"
        )
    train, held_out = split_records(records, eval_fraction, min_eval, max_eval, max_train)
    return TemplateData(
        template_id,
        template["name"] or template_id,
        template["static_text"] or "",
        pool,
        train,
        held_out,
        unanswered,
    )


def _json(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default


def parse_template(static_text: str) -> list[tuple[str, str]]:
    """`[system]\\n...\\n[user]\\n...` -> [(role, text)]; text before any header is a system message."""
    parts: list[tuple[str, str]] = []
    headers = list(ROLE_HEADER.finditer(static_text))
    if not headers or static_text[: headers[0].start()].strip():
        end = headers[0].start() if headers else len(static_text)
        parts.append(("system", static_text[:end]))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(static_text)
        parts.append((header.group(1), static_text[header.end() :][: end - header.end()]))
    return [(role, text.strip("\n")) for role, text in parts]


def render_stage_messages(
    template_text: str, slots: dict[str, str], examples: list[Example]
) -> list[dict[str, str]]:
    """Chat messages for one stage: the (compressed) template with its slots filled and k examples.

    An empty template is the query-only format; examples then go before the query in the user turn.
    Examples go where the template's `{{examples}}` marker is, else just before the query.
    """
    block = "\n\n".join(e.render() for e in examples)
    if not template_text.strip():
        messages = query_only_messages(slots)
        if block:
            messages[-1]["content"] = block + "\n\n" + messages[-1]["content"]
        return messages
    if EXAMPLES_MARKER not in template_text and block:
        target = "{{query}}" if "{{query}}" in template_text else None
        if target:
            template_text = template_text.replace(target, block + "\n\n" + target, 1)
        else:
            template_text = template_text + "\n\n" + block
    filled = template_text.replace(EXAMPLES_MARKER, block)
    filled = MARKER.sub(lambda m: slots.get(m.group(1), ""), filled)
    messages = [{"role": role, "content": text.strip()} for role, text in parse_template(filled)]
    messages = [m for m in messages if m["content"]]
    if not messages or messages[-1]["role"] != "user":
        # The model answers a user turn: put the query last if the template did not.
        messages.append({"role": "user", "content": slots.get("query", "")})
    return messages


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat prompt up to the assistant's turn (what the model is served)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_pair(
    tokenizer: Any, messages: list[dict[str, str]], target: str, end_of_turn: str | None
) -> tuple[list[int], list[int]]:
    """Token ids of prompt+answer and the labels: -100 on the prompt, so the loss is on the answer only."""
    prompt = prompt_ids(tokenizer, messages)
    answer = tokenizer(target + (end_of_turn or tokenizer.eos_token or ""), add_special_tokens=False)[
        "input_ids"
    ]
    return prompt + answer, [-100] * len(prompt) + answer
