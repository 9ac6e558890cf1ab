"""The query-only chat format: what an internalized model is trained on and what the router sends it.

Training (internalizer/) and serving (gateway/router) both call this, so the two can never drift apart.
"""

from __future__ import annotations

QUERY_SLOT = "query"


def query_only_messages(slots: dict[str, str]) -> list[dict[str, str]]:
    """One user message holding the variable parts of a request, nothing of the template.

    A single `query` slot is sent as is; other slots (a per-request context document...) come first,
    each under its name, so the model sees every variable input and only those.
    """
    if set(slots) <= {QUERY_SLOT}:
        return [{"role": "user", "content": slots.get(QUERY_SLOT, "")}]
    parts = [f"{name}:\n{value}" for name, value in slots.items() if name != QUERY_SLOT]
    if QUERY_SLOT in slots:
        parts.append(f"{QUERY_SLOT}:\n{slots[QUERY_SLOT]}")
    return [{"role": "user", "content": "\n\n".join(parts)}]
