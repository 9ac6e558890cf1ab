"""A request row's JSON text, its answer text and its content hash (sha256 of the request and the answer,
canonical JSON)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(
    messages: Any, params: dict[str, Any], response_text: str | None, *, yielding: bool = False
) -> str:
    """sha256 of the request (messages + params) and the response text, in a canonical JSON form.

    `yielding`: encode in Python (same text), so a worker thread hashing a huge request lets the event
    loop run in between; json's C encoder would hold the GIL for the whole call.
    """
    canonical = json_text(
        {"messages": messages, "params": params, "response": response_text or ""},
        yielding=yielding,
        sort_keys=True,
        separators=(",", ":"),
    )
    # surrogatepass: a lone surrogate a client sent must not make hashing its request fail.
    data = canonical.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256()
    # hashlib lets go of the GIL for inputs over 2 KiB; on the event loop that hands it to the log writer's
    # thread and the loop waits up to a switch interval (5 ms) to get it back: hash in smaller pieces.
    for start in range(0, len(data), _NO_GIL_RELEASE):
        digest.update(data[start : start + _NO_GIL_RELEASE])
    return digest.hexdigest()


_NO_GIL_RELEASE = 2047  # hashlib keeps the GIL for updates up to this many bytes


def json_text(value: Any, *, yielding: bool = False, **options: Any) -> str:
    """json.dumps(value, ensure_ascii=False, **options); with `yielding`, by the pure-Python encoder."""
    if not yielding:
        return json.dumps(value, ensure_ascii=False, **options)
    return "".join(json.JSONEncoder(ensure_ascii=False, **options).iterencode(value))


def answer_text(message: Any) -> str | None:
    """The logged answer of an assistant message: its text, or, for a tool-calling answer with no text,
    the JSON of its tool calls (so the log, the dashboard and an export show what the upstream answered)."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return json.dumps(calls, ensure_ascii=False)
    return content if isinstance(content, str) else None


class ToolCallDeltas:
    """A streamed answer's tool calls, put together from their deltas: each call's first delta carries its
    index, id, type and function name, later ones pieces of its arguments."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else ():
            if not isinstance(delta, dict):
                continue
            index = delta.get("index") if isinstance(delta.get("index"), int) else len(self.calls)
            call = self.calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
            for key in ("id", "type"):
                if isinstance(delta.get(key), str):
                    call[key] = delta[key]
            function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    call["function"][key] += function[key]

    def as_message(self) -> dict[str, Any]:
        """The calls as a non-streamed message holds them (the shape `answer_text` logs)."""
        return {"tool_calls": [self.calls[index] for index in sorted(self.calls)]}
