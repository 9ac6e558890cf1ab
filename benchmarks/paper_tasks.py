"""Per-dataset adapters for the paper benchmark: NL2Bash, CoNaLa, tldr and Banking77 on one code path.

Each task gives the app's instructions (a realistic long system prompt, different per dataset), turns a
data record into (query, target), cleans a model's reply into the answer it means, and scores answers
with the dataset's metrics (benchmarks/paper_metrics.py, as data/README.md prescribes). Banking77 is a
different kind of app: a classifier whose prompt lists its 77 labels, answered with one label.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.paper_metrics import banking77_scores, conala_scores, nl2bash_scores, tldr_scores
from demo.nl2bash_app import SYSTEM_PROMPT as NL2BASH_INSTRUCTIONS

DATA_ROOT = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class Record:
    """One request of the benchmark: what the user asks and the reference answer."""

    id: str
    query: str
    target: str


CONALA_INSTRUCTIONS = """\
You are PyPilot, the code assistant inside a Python notebook used by analysts, students and backend \
developers. The user describes, in plain English, a small programming task, and you answer with the Python \
snippet that does it.

How to write the snippet:
- Write Python 3 that runs as is in a notebook cell where the variables the user names already exist.
- Use the names, literals and values exactly as the user quotes them with backticks or quotes; do not \
rename variables and do not invent new ones unless the task needs a result.
- Prefer one expression or one statement. Use the standard library (re, os, datetime, itertools, \
collections, json, subprocess) or the library the user mentions (numpy, pandas, matplotlib, requests).
- Prefer built-ins and comprehensions over explicit loops when both are clear.
- Do not import modules that are not needed; do not wrap the code in a function; do not print the result \
unless the user asks to print or display it.
- If the request is ambiguous, pick the most common interpretation; do not ask a question back.

Output rules:
- Reply with the code only.
- No explanation, no comments, no Markdown, no code fences, no >>> prompt.
- Keep it to a single line whenever one line can do it.

The examples below show requests from other users and the exact answers expected."""

TLDR_INSTRUCTIONS = """\
You are PageWriter, the assistant that drafts examples for a community cheat-sheet of command-line tools \
(the tldr pages). The user gives a tool name and what an example should do, as `tool: description`, and \
you answer with the example command in tldr syntax.

How to write the command:
- Start with the tool named before the colon, even if you do not know it well; guess its usual options.
- Put every value the reader must fill in inside double curly braces, with a short descriptive name: \
{{path/to/file}}, {{path/to/directory}}, {{username}}, {{port}}, {{url}}, {{search_pattern}}.
- Write an option that has a short and a long form as {{[-s|--long]}}; write other options as they are.
- Use the subcommands and options the tool really has; do not invent flags.
- Keep it to the one command the description asks for; no pipes unless the description needs one.
- If the request is ambiguous, pick the most common use of the tool; do not ask a question back.

Output rules:
- Reply with the command only, on a single line.
- No explanation, no Markdown, no backticks, no leading $ prompt, no trailing colon or period.

The examples below show requests from other contributors and the exact answers expected."""


def banking77_labels(data_root: Path = DATA_ROOT) -> list[str]:
    return json.loads((data_root / "banking77" / "labels.json").read_text(encoding="utf-8"))


def banking77_instructions(labels: Sequence[str]) -> str:
    """The support app's classifier prompt: role, rules, every label (as the app lists them), output rules."""
    label_lines = "\n".join(f"- {label}" for label in labels)
    return f"""\
You are the message router of Lumen Bank's in-app support chat. Every message a customer types into the \
chat comes to you first, and you decide which of the support team's intents it belongs to, so that the \
customer gets the right help article and, when needed, the right specialist team.

How to choose the intent:
- Read the whole message and pick the one intent from the list below that best describes what the \
customer needs right now.
- Distinguish the card intents carefully: a card that has not arrived yet, a card that does not work, a \
card payment that was declined and a card that was lost or stolen are different intents.
- Never invent an intent and never answer the customer's question yourself.

Intents (use the name exactly as written):
{label_lines}

Output rules:
- Reply with the intent name only, exactly as it appears in the list, on a single line.
- No explanation, no punctuation, no quotes, no Markdown.

The examples below show messages from other customers and the intent expected."""


def first_label(text: str) -> str:
    """The label a classifier's reply names: its first non-empty line, without quotes, bullets or a period."""
    for line in _strip_fences(text).splitlines():
        line = re.sub(r"^(?:[-*]\s+|intent:\s*)", "", line.strip(), flags=re.IGNORECASE)
        line = line.strip().rstrip(".").strip().strip("`'\"*").strip()
        if line:
            return line
    return ""


# A fenced block anywhere in the reply; a reply cut by the token cap may lack the closing fence.
_FENCE = re.compile(r"```[\w+-]*[ \t]*\n(.*?)(?:\n?```|$)", re.DOTALL)


def _strip_fences(text: str) -> str:
    text = text.strip()
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    if len(text) > 2 and text[0] == text[-1] == "`" and text.count("`") == 2:
        return text[1:-1].strip()  # inline code: `ls -la`
    return text


def first_command_line(text: str) -> str:
    """The first command line of a reply: inside its code fence if it has one, no `$ ` prompt or comment."""
    for line in _strip_fences(text).splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:].strip()
        if line and not line.startswith("# "):  # a comment line above the command
            return line
    return ""


def python_snippet(text: str) -> str:
    """A reply's code without fences or `>>> ` prompts (CoNaLa answers may span lines)."""
    lines = [line[4:] if line.startswith(">>> ") else line for line in _strip_fences(text).splitlines()]
    return "\n".join(lines).strip()


@dataclass(frozen=True)
class Task:
    name: str
    instructions: str
    code_field: str
    clean: Callable[[str], str]
    score: Callable[[Sequence[str], Sequence[str]], dict[str, float]]
    primary_metric: str  # the accuracy column the plots and the targets use
    query_field: str = "nl"

    def load(self, split: str, limit: int = 0, seed: int = 0) -> list[Record]:
        """Records of a split; with `limit`, a seeded random subset of that size kept in file order."""
        path = DATA_ROOT / self.name / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{self.name} split not found: {path}")
        with path.open(encoding="utf-8") as lines:
            rows = [json.loads(line) for line in lines]
        records = [Record(row["id"], row[self.query_field], row[self.code_field]) for row in rows]
        if limit and limit < len(records):
            keep = set(random.Random(seed).sample(range(len(records)), limit))
            records = [record for index, record in enumerate(records) if index in keep]
        return records

    def evaluate(self, replies: Sequence[str], records: Sequence[Record]) -> dict[str, float]:
        return self.score([self.clean(reply) for reply in replies], [record.target for record in records])


TASKS: dict[str, Task] = {
    "nl2bash": Task(
        "nl2bash", NL2BASH_INSTRUCTIONS, "cmd", first_command_line, nl2bash_scores, "template_match"
    ),
    "conala": Task("conala", CONALA_INSTRUCTIONS, "code", python_snippet, conala_scores, "bleu"),
    "tldr": Task("tldr", TLDR_INSTRUCTIONS, "code", first_command_line, tldr_scores, "command_name_acc"),
    "banking77": Task(
        "banking77",
        banking77_instructions(banking77_labels()),
        "label",
        first_label,
        banking77_scores,
        "accuracy",
        query_field="text",
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown dataset {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
