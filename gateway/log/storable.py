"""Make a log row storable before it reaches the writer thread, whatever a client or an upstream sent.

SQLite refuses integers past 2**63 (OverflowError), Python's sqlite3 refuses text with lone UTF-16
surrogates (UnicodeEncodeError), and nothing stops a 50 MB answer from becoming a 50 MB row. A row that
fails for such a reason must not fail at all: each column is coerced to what its schema holds, and every
change is named in the row's `sanitized` column, so the log says what it could not keep as it came:

- integer columns: a non-negative int below 2**53 (what every JSON reader keeps exactly), else NULL;
- real columns: a finite float, else NULL;
- text columns: valid UTF-8 (a lone surrogate becomes U+FFFD), the known secrets replaced by `***`, and at
  most `max_field_bytes` bytes, cut with a marker that says how much was dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

MAX_SAFE_INT = 2**53
INT_COLUMNS = frozenset(
    {
        "stream",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_prompt_tokens",
        "status",
        "counterfactual_prompt_tokens",
        "counterfactual_completion_tokens",
    }
)
REAL_COLUMNS = frozenset(
    {
        "ttft_ms",
        "latency_ms",
        "overhead_ms",
        "spend",
        "local_compute_s",
        "counterfactual_spend",
        "counterfactual_cached_spend",
        "shadow_agreement",
    }
)
TRUNCATION_MARKER = "\n…[truncated by the gateway: {dropped} more bytes]"


def is_count(value: Any) -> bool:
    """A token count fit to store and to relay: a non-negative int below 2**53 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_SAFE_INT


def valid_text(text: str) -> tuple[str, bool]:
    """`text` as valid Unicode (lone surrogates replaced by U+FFFD), and whether anything changed."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        # Through UTF-16: a well-formed pair becomes its character, a lone half becomes U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"), True


def truncated(text: str, max_bytes: int) -> tuple[str, bool]:
    """`text` cut to at most `max_bytes` UTF-8 bytes (marker included), and whether it was cut."""
    if len(text) * 4 <= max_bytes:  # cannot be too long: skip the encoding
        return text, False
    encoded = text.encode("utf-8")
    if len(encoded) <= max_bytes:
        return text, False
    marker = TRUNCATION_MARKER.format(dropped=len(encoded) - max_bytes)
    keep = max(0, max_bytes - len(marker.encode()))
    return encoded[:keep].decode("utf-8", "ignore") + marker, True


def scrub_secrets(text: str, secrets: Iterable[str]) -> tuple[str, bool]:
    changed = False
    for secret in secrets:
        if secret and secret in text:
            text, changed = text.replace(secret, "***"), True
    return text, changed


def storable_row(
    row: dict[str, Any], columns: Iterable[str], max_field_bytes: int, secrets: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of `row` restricted to `columns`, every value fit for its column; `sanitized` lists changes."""
    secrets = tuple(secrets)
    notes: list[str] = []
    out: dict[str, Any] = {}
    for column in columns:
        value, note = storable_value(column, row.get(column), max_field_bytes, secrets)
        out[column] = value
        if note:
            notes.append(f"{column}:{note}")
    previous = row.get("sanitized")
    if isinstance(previous, str) and previous:
        notes.insert(0, previous)
    out["sanitized"] = ",".join(notes) or None
    return out


def storable_value(
    column: str, value: Any, max_field_bytes: int, secrets: tuple[str, ...] = ()
) -> tuple[Any, str | None]:
    """The value to store and a short note of what was changed (None: stored as is)."""
    if value is None:
        return None, None
    if column in INT_COLUMNS:
        if isinstance(value, bool):
            return int(value), None
        if isinstance(value, int) and 0 <= value < MAX_SAFE_INT:
            return value, None
        return None, "out_of_range" if isinstance(value, int | float) else "not_an_integer"
    if column in REAL_COLUMNS:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None, "not_a_number"
        return (number, None) if math.isfinite(number) else (None, "not_finite")
    if not isinstance(value, str):
        try:
            value = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError, RecursionError):
            value = repr(value)
    notes = []
    value, changed = valid_text(value)
    if changed:
        notes.append("invalid_unicode")
    value, changed = scrub_secrets(value, secrets)
    if changed:
        notes.append("secret_removed")
    value, changed = truncated(value, max_field_bytes)
    if changed:
        notes.append("truncated")
    return value, "+".join(notes) or None
