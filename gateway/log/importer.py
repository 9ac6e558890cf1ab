"""Load existing traffic (JSONL) into the request log, all or nothing.

Two line formats are accepted:
  {"request": <chat completion request>, "response": <chat completion response>, "timestamp": ...}
  {"messages": [...]}   the OpenAI fine-tuning chat format: the last assistant message is the response.

Every line is validated before anything is written; the rows then go in with one transaction, so a bad line
anywhere leaves the log untouched. Rows are keyed by a content hash of timestamp + request + response, so
importing the same file twice adds nothing.

Token counts come from the response's `usage` when it has one. Otherwise they are estimated the way the
gateway estimates a prompt that never reached upstream (gateway.accounting.savings: litellm's token_counter
for the model, tiktoken cl100k_base when the model is unknown, ~4 characters per token when no tokenizer is
available offline), and the row says so in `token_source` ("usage" or "estimated").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.accounting import savings
from gateway.log.row_text import answer_text
from gateway.log.storable import is_count
from gateway.templates.request_shape import message_text

IMPORT_ID_PREFIX = "imp-"
MESSAGE_CONTENT_HINT = "a string, a list of content parts, or null"


class ImportFileError(ValueError):
    """A line that cannot be imported; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class ImportResult:
    records: int  # valid records in the file
    imported: int  # rows added to the log
    skipped: int  # duplicates: already in the log, or repeated in the file
    estimated: int  # rows whose token counts were estimated (no usage in the response)


@dataclass(frozen=True)
class ParsedRecord:
    """One line, validated and normalized: the chat request, the answer, and what the response reported."""

    request: dict[str, Any]
    response_text: str
    finish_reason: str | None
    usage: dict[str, Any] | None
    timestamp: str | None  # ISO 8601 UTC
    model_served: str | None
    response_id: str | None


# ---- parsing and validation ---------------------------------------------------------------------------


def parse_line(text: str, line: int) -> ParsedRecord:
    """Validate one JSONL line; raise ImportFileError naming the line and the problem."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFileError(line, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting past the limit
        raise ImportFileError(line, f"unreadable JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(obj, dict):
        raise ImportFileError(line, f"expected a JSON object, got {_type_name(obj)}")
    if "request" in obj or "response" in obj:
        return _parse_request_response(obj, line)
    if "messages" in obj:
        return _parse_fine_tuning(obj, line)
    raise ImportFileError(line, 'expected "request" and "response" keys, or "messages" (fine-tuning format)')


def _parse_request_response(obj: dict[str, Any], line: int) -> ParsedRecord:
    request, response = obj.get("request"), obj.get("response")
    if not isinstance(request, dict):
        raise ImportFileError(line, f'"request" must be an object, got {_type_name(request)}')
    if not isinstance(response, dict):
        raise ImportFileError(line, f'"response" must be an object, got {_type_name(response)}')
    _check_messages(request.get("messages"), line, "request.messages")
    if "model" in request and not isinstance(request["model"], str):
        raise ImportFileError(line, f'"request.model" must be a string, got {_type_name(request["model"])}')
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ImportFileError(line, '"response.choices" must be a non-empty list of objects')
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise ImportFileError(line, '"response.choices[0].message" must be an object')
    usage = response.get("usage")
    if usage is not None:
        _check_usage(usage, line)
    finish_reason = choices[0].get("finish_reason")
    return ParsedRecord(
        request=request,
        response_text=_answer_text(message, line, "response.choices[0].message"),
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        usage=usage,
        timestamp=_parse_timestamp(obj.get("timestamp", response.get("created")), line),
        model_served=response.get("model") if isinstance(response.get("model"), str) else None,
        response_id=response.get("id") if isinstance(response.get("id"), str) else None,
    )


def _parse_fine_tuning(obj: dict[str, Any], line: int) -> ParsedRecord:
    messages = obj["messages"]
    _check_messages(messages, line, "messages")
    if messages[-1].get("role") != "assistant":
        raise ImportFileError(line, "the last message must be the assistant's answer (fine-tuning format)")
    if len(messages) < 2:
        raise ImportFileError(line, "a fine-tuning record needs at least one message before the answer")
    request = {key: value for key, value in obj.items() if key not in ("messages", "timestamp")}
    request["messages"] = messages[:-1]
    return ParsedRecord(
        request=request,
        response_text=_answer_text(messages[-1], line, f"messages[{len(messages) - 1}]"),
        finish_reason="stop",
        usage=None,
        timestamp=_parse_timestamp(obj.get("timestamp"), line),
        model_served=None,
        response_id=None,
    )


def _check_messages(messages: Any, line: int, where: str) -> None:
    if messages is None:
        raise ImportFileError(line, f'missing "{where}"')
    if not isinstance(messages, list):
        raise ImportFileError(line, f'"{where}" must be a list, got {_type_name(messages)}')
    if not messages:
        raise ImportFileError(line, f'"{where}" is empty')
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ImportFileError(line, f'"{where}[{index}]" must be an object, got {_type_name(message)}')
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise ImportFileError(line, f'"{where}[{index}].role" must be a non-empty string')
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise ImportFileError(
                line, f'"{where}[{index}].content" must be {MESSAGE_CONTENT_HINT}, got {_type_name(content)}'
            )


def _check_usage(usage: Any, line: int) -> None:
    if not isinstance(usage, dict):
        raise ImportFileError(line, f'"response.usage" must be an object, got {_type_name(usage)}')
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is not None and not is_count(value):
            raise ImportFileError(line, f'"response.usage.{key}" must be an integer from 0 to 2**53')
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is not None and not is_count(cached):
        raise ImportFileError(
            line, '"response.usage.prompt_tokens_details.cached_tokens" must be an integer from 0 to 2**53'
        )


def _answer_text(message: dict[str, Any], line: int, where: str) -> str:
    """The assistant's text; a tool-calling answer is kept as the JSON of its tool calls."""
    content = message.get("content")
    if isinstance(content, str | list):
        return message_text(message)
    if content is None:
        return answer_text(message) or ""
    raise ImportFileError(
        line, f'"{where}.content" must be {MESSAGE_CONTENT_HINT}, got {_type_name(content)}'
    )


def _parse_timestamp(value: Any, line: int) -> str | None:
    """ISO 8601 strings (naive = UTC) and Unix epochs (seconds, or milliseconds when huge) -> ISO UTC."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ImportFileError(line, '"timestamp" must be an ISO 8601 string or a Unix time')
    if isinstance(value, int | float):
        try:
            seconds = value / 1000 if value > 1e11 else value
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            shown = str(value) if len(str(value)) <= 24 else str(value)[:20] + "..."
            raise ImportFileError(line, f'"timestamp" {shown} is out of range') from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ImportFileError(line, f'"timestamp" {value!r} is not ISO 8601') from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).isoformat()
    raise ImportFileError(
        line, f'"timestamp" must be an ISO 8601 string or a Unix time, got {_type_name(value)}'
    )


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def iter_records(
    path: Path, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, ParsedRecord]]:
    """(line number, record) for every non-blank line; `on_bytes` reports progress in bytes read."""
    with Path(path).open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if on_bytes is not None:
                on_bytes(len(raw))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImportFileError(number, "not valid UTF-8") from None
            if text.strip():
                yield number, parse_line(text, number)


# ---- rows -----------------------------------------------------------------------------------------------


def content_hash(record: ParsedRecord) -> str:
    """sha256 over the canonical JSON of timestamp + request + response text: same traffic, same hash."""
    canonical = json.dumps(
        {"timestamp": record.timestamp, "request": record.request, "response": record.response_text},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def to_row(
    record: ParsedRecord,
    default_model: str | None,
    spend_for: Callable[[str | None, int, int, int], float | None],
    imported_at: str,
) -> dict[str, Any]:
    """The `requests` row for one record: `route='upstream'`, `source='import'`, status 200."""
    request = record.request
    model = request.get("model") or default_model
    messages = request["messages"]
    usage = record.usage or {}
    estimated = "prompt_tokens" not in usage or "completion_tokens" not in usage
    if estimated:
        prompt_tokens = savings.estimate_prompt_tokens(model or "", messages)
        completion_tokens = savings.estimate_text_tokens(model or "", record.response_text)
    else:
        prompt_tokens, completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    cached = cached if isinstance(cached, int) and not isinstance(cached, bool) else 0
    digest = content_hash(record)
    params = {key: value for key, value in request.items() if key not in ("model", "messages")}
    return {
        "request_id": IMPORT_ID_PREFIX + digest[:32],
        "completion_id": record.response_id,
        "startTime": record.timestamp or imported_at,
        "endTime": record.timestamp or imported_at,
        "model": model,
        "model_served": record.model_served or model,
        "route": "upstream",
        "messages": json.dumps(messages, ensure_ascii=False),
        "params": json.dumps(params, ensure_ascii=False),
        "stream": int(bool(request.get("stream"))),
        "response": record.response_text,
        "finish_reason": record.finish_reason,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cached_prompt_tokens": cached,
        "spend": spend_for(model, prompt_tokens, completion_tokens, cached),
        "status": 200,
        "source": "import",
        "content_hash": digest,
        "token_source": "estimated" if estimated else "usage",
    }


def read_rows(
    path: Path,
    default_model: str | None,
    spend_for: Callable[[str | None, int, int, int], float | None],
    on_bytes: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every row of the file, validated; raises ImportFileError at the first bad line (nothing written)."""
    imported_at = datetime.now(UTC).isoformat()
    return [
        to_row(record, default_model, spend_for, imported_at) for _, record in iter_records(path, on_bytes)
    ]


def insert_rows(db: sqlite_utils.Database, rows: list[dict[str, Any]]) -> int:
    """Insert rows in one transaction, ignoring those already logged; returns how many were added."""
    if not rows:
        return 0
    columns = list(rows[0])
    sql = "INSERT OR IGNORE INTO requests ({}) VALUES ({})".format(
        ", ".join(f'"{c}"' for c in columns), ", ".join("?" for _ in columns)
    )
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")  # one writer from here to COMMIT: all rows or none
    try:
        cursor = conn.executemany(sql, [[row[c] for c in columns] for row in rows])
        added = cursor.rowcount
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added


def import_file(
    db: sqlite_utils.Database,
    path: Path,
    default_model: str | None,
    spend_for: Callable[[str | None, int, int, int], float | None],
    on_bytes: Callable[[int], None] | None = None,
) -> ImportResult:
    rows = read_rows(path, default_model, spend_for, on_bytes)
    added = insert_rows(db, rows)
    estimated = sum(1 for row in rows if row["token_source"] == "estimated")
    return ImportResult(records=len(rows), imported=added, skipped=len(rows) - added, estimated=estimated)
