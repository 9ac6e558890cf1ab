"""Mined prompt templates and the exact matcher the gateway runs on every request.

A template is a list of message specs. Each spec is either a run of few-shot user/assistant turns, or one
message whose text is a sequence of parts: static text (must be equal, character for character), a slot
(variable text; the main one is named "query") or an inline examples region (blocks from a known pool).
`Matcher.match` returns the template and the variable parts of a request, or None on any near-miss: a
changed token, an appended sentence, an example outside the pool. Matching costs a dict lookup on the
role skeleton and the first characters of the first message, then a scan of the few candidates found.
This module is on the online path: standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.templates.request_shape import TURNS_ROLE, Message, Shape, chat_messages, shape_of

QUERY_SLOT = "query"
EXAMPLES_MARKER = "{{examples}}"
INDEX_PREFIX_CHARS = 48  # how much of the first static text keys the candidate index


# ---- the template data model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    name: str
    multiline: bool = True  # False: no mined value held a newline, so a value with one is a near-miss
    forbid: tuple[str, ...] = ()  # strings a value may not contain (the start of another example block)


@dataclass(frozen=True)
class Examples:
    """A run of one or more inline example blocks from the template's pool.

    `sep` is the text between two blocks. When the blocks are numbered (`Example 2:`), `number` is the number
    written between the first and the second block: the separator before block j (0-based, j >= 1) is then
    `sep + str(number + j - 1) + sep_after`.
    """

    sep: str = "\n\n"
    number: int | None = None
    sep_after: str = ""

    def separator(self, j: int) -> str:
        return self.sep if self.number is None else f"{self.sep}{self.number + j - 1}{self.sep_after}"


Part = str | Slot | Examples


@dataclass(frozen=True)
class MessageSpec:
    role: str  # TURNS_ROLE for the few-shot turns run
    parts: tuple[Part, ...] = ()


def example_hash(raw: str) -> str:
    """Content address of an example: sha256 of its normalized raw text."""
    return hashlib.sha256(raw.replace("\r\n", "\n").strip().encode("utf-8")).hexdigest()


def turn_raw(user: str, assistant: str) -> str:
    return f"[user]\n{user}\n[assistant]\n{assistant}"


@dataclass
class Template:
    id: str
    messages: list[MessageSpec]
    name: str = ""
    inline_pool: dict[str, str] = field(default_factory=dict)  # exact block text -> example hash
    turn_pool: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, assistant) -> hash

    def __post_init__(self) -> None:
        self._by_first_line: dict[str, list[tuple[str, str]]] = {}
        for raw, digest in self.inline_pool.items():
            self._by_first_line.setdefault(raw.split("\n", 1)[0], []).append((raw, digest))

    @property
    def skeleton(self) -> tuple[str, ...]:
        return tuple(spec.role for spec in self.messages)

    @property
    def slot_names(self) -> list[str]:
        return [p.name for spec in self.messages for p in spec.parts if isinstance(p, Slot)]

    @property
    def static_text(self) -> str:
        """Readable template: `[role]` headers, `{{slot}}` and `{{examples}}` markers where text varies."""
        blocks: list[str] = []
        pending_turns = False
        for spec in self.messages:
            if spec.role == TURNS_ROLE:
                pending_turns = True
                continue
            body = "".join(_readable(part) for part in spec.parts)
            if pending_turns and spec.role == "user":  # few-shot turns read as examples before the query
                body, pending_turns = f"{EXAMPLES_MARKER}\n\n{body}", False
            role = "system" if spec.role == "developer" else spec.role
            blocks.append(f"[{role}]\n{body}")
        return "\n".join(blocks)

    def structure(self) -> dict[str, Any]:
        """JSON-able description from which `render` rebuilds a request exactly (pools live in the DB)."""
        return {"version": 1, "messages": [_spec_json(spec) for spec in self.messages]}

    def render(self, slots: Mapping[str, str], examples: list[str] | list[tuple[str, str]]) -> list[dict]:
        """The chat messages of a request with these slot values and examples (raw blocks, or turn pairs)."""
        out: list[dict[str, str]] = []
        for spec in self.messages:
            if spec.role == TURNS_ROLE:
                for user, assistant in examples:  # type: ignore[misc]
                    out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
                continue
            text = []
            for part in spec.parts:
                if isinstance(part, str):
                    text.append(part)
                elif isinstance(part, Slot):
                    text.append(slots.get(part.name, ""))
                else:
                    text.append(
                        "".join((part.separator(j) if j else "") + block for j, block in enumerate(examples))  # type: ignore[operator]
                    )
            out.append({"role": spec.role, "content": "".join(text)})
        return out

    def match_shape(self, shape: Shape) -> tuple[dict[str, str], list[str]] | None:
        """Slot values and example hashes of a request shaped like this template, None on any mismatch."""
        slots: dict[str, str] = {}
        hashes: list[str] = []
        for spec, text in zip(self.messages, shape.texts, strict=True):
            if spec.role == TURNS_ROLE:
                for pair in shape.pairs:
                    digest = self.turn_pool.get(pair)
                    if digest is None:
                        return None  # a few-shot turn outside the known pool
                    hashes.append(digest)
            elif text is None or not self._match_parts(spec.parts, text, slots, hashes):
                return None
        return slots, hashes

    def _match_parts(
        self, parts: tuple[Part, ...], text: str, slots: dict[str, str], hashes: list[str]
    ) -> bool:
        i, last = 0, len(parts) - 1
        for index, part in enumerate(parts):
            if isinstance(part, str):
                if not text.startswith(part, i):
                    return False
                i += len(part)
            elif isinstance(part, Examples):
                i = self._match_examples(part, text, i, hashes)
                if i < 0:
                    return False
            else:
                end = self._slot_end(parts, index, last, text, i)
                if end < 0:
                    return False
                value = text[i:end]
                if (not part.multiline and "\n" in value) or any(f in value for f in part.forbid):
                    return False
                slots[part.name] = value
                i = end
        return i == len(text)

    @staticmethod
    def _slot_end(parts: tuple[Part, ...], index: int, last: int, text: str, start: int) -> int:
        if index == last:
            return len(text)
        following = parts[index + 1]
        if not isinstance(following, str):
            return -1  # mining never puts a slot right before a non-static part
        if index + 1 == last:  # the static suffix closes the message
            end = len(text) - len(following)
            return end if end >= start and text.endswith(following) else -1
        return text.find(following, start)

    def _match_examples(self, part: Examples, text: str, i: int, hashes: list[str]) -> int:
        """Consume one or more known example blocks starting at i; the index after them, or -1."""
        count = 0
        while True:
            start = i
            if count:
                sep = part.separator(count)
                if not text.startswith(sep, i):
                    break
                start += len(sep)
            eol = text.find("\n", start)
            first_line = text[start : eol if eol >= 0 else len(text)]
            hit = next(
                (c for c in self._by_first_line.get(first_line, ()) if text.startswith(c[0], start)), None
            )
            if hit is None:
                break
            hashes.append(hit[1])
            i, count = start + len(hit[0]), count + 1
        return i if count else -1


def _readable(part: Part) -> str:
    if isinstance(part, str):
        return part
    return EXAMPLES_MARKER if isinstance(part, Examples) else "{{" + part.name + "}}"


def _spec_json(spec: MessageSpec) -> dict[str, Any]:
    if spec.role == TURNS_ROLE:
        return {"turns": "examples"}
    parts: list[dict[str, Any]] = []
    for part in spec.parts:
        if isinstance(part, str):
            parts.append({"static": part})
        elif isinstance(part, Examples):
            examples: dict[str, Any] = {"sep": part.sep}
            if part.number is not None:
                examples.update(number=part.number, sep_after=part.sep_after)
            parts.append({"examples": examples})
        else:
            parts.append({"slot": part.name, "multiline": part.multiline, "forbid": list(part.forbid)})
    return {"role": spec.role, "parts": parts}


def specs_from_structure(structure: Mapping[str, Any]) -> list[MessageSpec]:
    specs = []
    for message in structure["messages"]:
        if "turns" in message:
            specs.append(MessageSpec(TURNS_ROLE))
            continue
        parts: list[Part] = []
        for part in message["parts"]:
            if "static" in part:
                parts.append(part["static"])
            elif "examples" in part:
                found = part["examples"]
                number = found.get("number")
                parts.append(
                    Examples(
                        found.get("sep", "\n\n"),
                        None if number is None else int(number),
                        found.get("sep_after", ""),
                    )
                )
            else:
                parts.append(
                    Slot(part["slot"], bool(part.get("multiline", True)), tuple(part.get("forbid", ())))
                )
        specs.append(MessageSpec(message["role"], tuple(parts)))
    return specs


def template_id(specs: list[MessageSpec]) -> str:
    """`tpl_` + 12 hex of sha256 over roles, static text and slot/examples positions (not names or pools),
    so re-mining a grown log gives the same id to the same template."""
    canonical = [
        [
            spec.role,
            [
                p if isinstance(p, str) else "<examples>" if isinstance(p, Examples) else "<slot>"
                for p in spec.parts
            ],
        ]
        for spec in specs
    ]
    digest = hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode("utf-8")).hexdigest()
    return "tpl_" + digest[:12]


# ---- the matcher ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    template_id: str
    query: str
    slots: dict[str, str]
    example_hashes: list[str]


class Matcher:
    """Templates indexed by role skeleton + the start of their first static text; first match wins."""

    def __init__(self, templates: Iterable[Template]) -> None:
        self.templates = list(templates)
        # skeleton -> (message position, prefix length) -> prefix -> candidates, in priority order
        self._index: dict[tuple[str, ...], dict[tuple[int, int], dict[str, list[Template]]]] = {}
        for template in self.templates:
            position, prefix = _index_prefix(template)
            buckets = self._index.setdefault(template.skeleton, {})
            buckets.setdefault((position, len(prefix)), {}).setdefault(prefix, []).append(template)

    def __len__(self) -> int:
        return len(self.templates)

    @classmethod
    def from_db(cls, db: Any) -> Matcher:
        """Every mined template in a log database (sqlite_utils.Database), oldest first."""
        return cls(load_templates(db))

    def match(self, request: Mapping[str, Any]) -> MatchResult | None:
        messages = chat_messages(request)
        return None if messages is None else self.match_messages(messages)

    def match_messages(self, messages: list[Message]) -> MatchResult | None:
        return self.match_shape(shape_of(messages))

    def match_shape(self, shape: Shape) -> MatchResult | None:
        buckets = self._index.get(shape.skeleton)
        if not buckets:
            return None
        texts = shape.texts
        for (position, length), by_prefix in buckets.items():
            text = texts[position]
            prefix = "" if text is None or length == 0 else text[:length]
            for template in by_prefix.get(prefix, ()):
                found = template.match_shape(shape)
                if found is not None:
                    slots, hashes = found
                    return MatchResult(template.id, slots.get(QUERY_SLOT, ""), slots, hashes)
        return None


def _index_prefix(template: Template) -> tuple[int, str]:
    """(skeleton position, prefix): the start of the first message that starts with static text."""
    for position, spec in enumerate(template.messages):
        if spec.parts and isinstance(spec.parts[0], str):
            return position, spec.parts[0][:INDEX_PREFIX_CHARS]
    return 0, ""


def load_templates(db: Any) -> list[Template]:
    """Templates and their example pools from the `templates`/`examples` tables, oldest first."""
    if "templates" not in db.table_names():
        return []
    pool_rows = db.query(
        "select te.template_id, e.hash, e.input, e.output, e.raw from template_examples te "
        "join examples e on e.hash = te.example_hash"
    )
    return templates_from_rows(db.query("select * from templates order by first_seen, id"), pool_rows)


def templates_from_rows(
    template_rows: Iterable[Mapping[str, Any]], pool_rows: Iterable[Mapping[str, Any]]
) -> list[Template]:
    """Templates from `templates` rows (id, name, structure) and pool rows (template_id, hash, input, output,
    raw), in the order given: the order is the matcher's priority."""
    pools: dict[str, list[Mapping[str, Any]]] = {}
    for row in pool_rows:
        pools.setdefault(row["template_id"], []).append(row)
    templates = []
    for row in template_rows:
        try:
            specs = specs_from_structure(json.loads(row["structure"]))
        except (TypeError, ValueError, KeyError):
            continue  # a row this version cannot read never matches anything
        pool = pools.get(row["id"], [])
        is_turn = [e["raw"].startswith("[user]\n") for e in pool]
        templates.append(
            Template(
                row["id"],
                specs,
                row["name"] or "",
                inline_pool={e["raw"]: e["hash"] for e, turn in zip(pool, is_turn, strict=True) if not turn},
                turn_pool={
                    (e["input"], e["output"]): e["hash"]
                    for e, turn in zip(pool, is_turn, strict=True)
                    if turn
                },
            )
        )
    return templates
