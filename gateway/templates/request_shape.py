"""A chat completion request as templates see it: text-only messages cut into system head, few-shot
user/assistant turns and the rest. Shared by the request-time matcher and by mining (standard library only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

TURNS_ROLE = "(turns)"  # stands for a run of few-shot user/assistant pairs in a role skeleton
TEXT_ROLES = ("system", "developer", "user", "assistant")
# Request fields that change what the model is asked beyond the messages: never rewritten to a template.
UNMATCHABLE_FIELDS = ("tools", "functions", "tool_choice", "function_call")

Message = tuple[str, str]  # (role, text)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined (other parts skipped)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def content_text(content: Any) -> str | None:
    """The text of a message's content, or None when it holds anything but text (images, audio...)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                return None
            texts.append(part["text"])
        return "".join(texts)
    return None


def chat_messages(request: Mapping[str, Any]) -> list[Message] | None:
    """(role, text) per message; None for a request a text template cannot describe (tools, images...)."""
    if any(request.get(name) for name in UNMATCHABLE_FIELDS):
        return None
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    out: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in TEXT_ROLES:
            return None
        if message.get("tool_calls") or message.get("function_call"):
            return None
        text = content_text(message.get("content"))
        if text is None:
            return None
        out.append((message["role"], text))
    return out


@dataclass(frozen=True)
class Shape:
    """A request cut the way templates see it: leading system messages, few-shot pairs, the rest."""

    head: list[Message]
    pairs: list[tuple[str, str]]  # (user text, assistant text) turns before the final user message
    tail: list[Message]

    @cached_property
    def skeleton(self) -> tuple[str, ...]:
        roles = [role for role, _ in self.head]
        if self.pairs:
            roles.append(TURNS_ROLE)
        return tuple(roles + [role for role, _ in self.tail])

    @cached_property
    def texts(self) -> list[str | None]:
        """One entry per skeleton element: the message text, None for the turns run."""
        texts: list[str | None] = [text for _, text in self.head]
        if self.pairs:
            texts.append(None)
        return texts + [text for _, text in self.tail]


def shape_of(messages: list[Message]) -> Shape:
    n_head = 0
    while n_head < len(messages) and messages[n_head][0] in ("system", "developer"):
        n_head += 1
    rest = messages[n_head:]
    roles = [role for role, _ in rest]
    n_pairs = (len(rest) - 1) // 2
    pattern = ["user", "assistant"] * n_pairs + ["user"]
    if n_pairs and roles == pattern:
        pairs = [(rest[2 * i][1], rest[2 * i + 1][1]) for i in range(n_pairs)]
        return Shape(messages[:n_head], pairs, rest[-1:])
    return Shape(messages[:n_head], [], rest)
