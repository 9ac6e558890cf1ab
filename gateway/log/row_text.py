"""A request row's JSON text and its content hash (sha256 of the request and the answer, canonical JSON)."""

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
