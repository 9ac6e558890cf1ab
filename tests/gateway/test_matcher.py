"""The request-time matcher: exact on static text, None on every near-miss, and the rebuild is exact."""

from __future__ import annotations

import json
import random

import pytest

from gateway.log.store import open_db
from gateway.templates.matcher import (
    Examples,
    Matcher,
    MessageSpec,
    Slot,
    Template,
    example_hash,
    specs_from_structure,
    template_id,
    turn_raw,
)
from internalizer.mine import mine
from tests.internalizer.mine_traffic import add_requests, nl2bash

SYSTEM = (
    "You are a shell expert. Convert the user's request into one bash command. Reply with the command only."
)
BLOCKS = [
    "Input: list files\nOutput: ls",
    "Input: disk usage\nOutput: df -h",
    "Input: who am i\nOutput: whoami",
]
TURNS = [("list files", "ls"), ("disk usage", "df -h")]


def inline_template() -> Template:
    specs = [
        MessageSpec(
            "user",
            (
                "Translate each request into bash.\n\n",
                Examples("\n\n"),
                "\n\nInput: ",
                Slot("query", multiline=False, forbid=("\nInput: ",)),
                "\nOutput:",
            ),
        )
    ]
    return Template(template_id(specs), specs, "inline", inline_pool={b: example_hash(b) for b in BLOCKS})


def system_template() -> Template:
    specs = [MessageSpec("system", (SYSTEM,)), MessageSpec("user", (Slot("query", multiline=False),))]
    return Template(template_id(specs), specs, "system")


def turns_template() -> Template:
    specs = [
        MessageSpec("system", ("Reply with one shell command.",)),
        MessageSpec("(turns)"),
        MessageSpec("user", (Slot("query"),)),
    ]
    pool = {pair: example_hash(turn_raw(*pair)) for pair in TURNS}
    return Template(template_id(specs), specs, "turns", turn_pool=pool)


def context_template() -> Template:
    specs = [
        MessageSpec(
            "user",
            ("Context:\n", Slot("context"), "\n\nQuestion: ", Slot("query", multiline=False), "\nAnswer:"),
        )
    ]
    return Template(template_id(specs), specs, "context")


@pytest.fixture
def matcher() -> Matcher:
    return Matcher([inline_template(), system_template(), turns_template(), context_template()])


def chat(*messages: tuple[str, str], **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": r, "content": c} for r, c in messages], **extra}


def inline_request(blocks: list[str], query: str) -> dict:
    return chat(
        (
            "user",
            "Translate each request into bash.\n\n" + "\n\n".join(blocks) + f"\n\nInput: {query}\nOutput:",
        )
    )


def test_exact_request_gives_template_query_slots_and_examples(matcher):
    found = matcher.match(inline_request([BLOCKS[2], BLOCKS[0]], "show the date"))
    assert found.template_id == inline_template().id
    assert found.query == "show the date" and found.slots == {"query": "show the date"}
    assert found.example_hashes == [example_hash(BLOCKS[2]), example_hash(BLOCKS[0])]
    found = matcher.match(chat(("system", SYSTEM), ("user", "count lines in a.txt")))
    assert (found.template_id, found.query, found.example_hashes) == (
        system_template().id,
        "count lines in a.txt",
        [],
    )


def test_two_slots(matcher):
    found = matcher.match(chat(("user", "Context:\nhost web\nruns nginx\n\nQuestion: restart it\nAnswer:")))
    assert found.slots == {"context": "host web\nruns nginx", "query": "restart it"}


@pytest.mark.parametrize(
    "request_",
    [
        chat(("system", SYSTEM.replace("one bash", "one zsh")), ("user", "list files")),  # one word changed
        chat(("system", SYSTEM + " Be brief."), ("user", "list files")),  # a sentence appended
        chat(("system", SYSTEM[:-1]), ("user", "list files")),  # one character dropped
        chat(("system", SYSTEM), ("user", "list files"), ("assistant", "ls"), ("user", "and hidden ones")),
        chat(("user", "list files")),  # no system message
        chat(("system", SYSTEM), ("user", "list files\nand then delete them all")),  # query never multi-line
        chat(
            ("system", SYSTEM),
            ("user", "list files"),
            tools=[{"type": "function", "function": {"name": "f"}}],
        ),
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": "image_url"}]},
            ]
        },
    ],
)
def test_near_misses_of_a_static_system_prompt_return_none(matcher, request_):
    assert matcher.match(request_) is None


def test_inline_near_misses_return_none(matcher):
    unknown = "Input: print the year\nOutput: date +%Y"
    assert matcher.match(inline_request([BLOCKS[0], unknown], "show the date")) is None
    assert matcher.match(inline_request([unknown], "show the date")) is None
    assert matcher.match(inline_request([BLOCKS[0].replace("ls", "ls -a")], "show the date")) is None
    assert matcher.match(inline_request([], "show the date")) is None  # the template always carries examples
    text = inline_request(BLOCKS[:1], "show the date")["messages"][0]["content"]
    assert matcher.match(chat(("user", text + " Think step by step."))) is None
    assert matcher.match(chat(("user", text.replace("Translate each", "Translate every")))) is None


def test_turn_examples_must_come_from_the_pool(matcher):
    system = ("system", "Reply with one shell command.")
    known = chat(system, ("user", "list files"), ("assistant", "ls"), ("user", "print the date"))
    found = matcher.match(known)
    assert found.template_id == turns_template().id and found.query == "print the date"
    assert found.example_hashes == [example_hash(turn_raw(*TURNS[0]))]
    unknown = chat(system, ("user", "list files"), ("assistant", "ls -la"), ("user", "print the date"))
    assert matcher.match(unknown) is None


def test_render_rebuilds_the_request_exactly():
    request = inline_request([BLOCKS[1], BLOCKS[0]], "show the date")
    assert inline_template().render({"query": "show the date"}, [BLOCKS[1], BLOCKS[0]]) == request["messages"]
    turns = chat(
        ("system", "Reply with one shell command."),
        ("user", "list files"),
        ("assistant", "ls"),
        ("user", "q"),
    )
    assert turns_template().render({"query": "q"}, [TURNS[0]]) == turns["messages"]


def test_structure_round_trips_through_json():
    for template in (inline_template(), turns_template(), context_template()):
        specs = specs_from_structure(json.loads(json.dumps(template.structure())))
        assert specs == template.messages and template_id(specs) == template.id


def test_from_db_matches_what_mining_assigned(tmp_path):
    db = open_db(tmp_path / "logs.db")
    pairs = nl2bash(40, seed=11)
    rng = random.Random(3)
    requests = []
    for p in pairs[10:]:
        shots = rng.sample(pairs[:10], 2)
        body = "\n\n".join(f"Input: {s['nl']}\nOutput: {s['cmd']}" for s in shots)
        requests.append(
            [
                {
                    "role": "user",
                    "content": f"Translate each request into bash.\n\n{body}\n\nInput: {p['nl']}\nOutput:",
                }
            ]
        )
    add_requests(db, requests)
    mine(db)
    matcher = Matcher.from_db(db)
    assert len(matcher) == 1
    for row in db.query(
        "select rt.*, r.messages from request_templates rt join requests r using (request_id)"
    ):
        found = matcher.match({"messages": json.loads(row["messages"])})
        assert (found.template_id, found.query) == (row["template_id"], row["query"])
        assert found.example_hashes == json.loads(row["example_hashes"])
    db.close()


def test_text_content_parts_read_like_a_plain_string(matcher):
    parts = [{"type": "text", "text": "count lines "}, {"type": "text", "text": "in a.txt"}]
    found = matcher.match(
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": parts}]}
    )
    assert found.query == "count lines in a.txt"
    assert matcher.match({"messages": "not a list"}) is None and matcher.match({}) is None


def numbered_template() -> Template:
    specs = [
        MessageSpec(
            "user",
            (
                "Translate each request into bash.\n\nExample 1:\n",
                Examples("\n\nExample ", number=2, sep_after=":\n"),
                "\n\nNow you:\nInput: ",
                Slot("query", multiline=False),
                "\nOutput:",
            ),
        )
    ]
    return Template(template_id(specs), specs, "numbered", inline_pool={b: example_hash(b) for b in BLOCKS})


def numbered_request(blocks: list[str], query: str, first: int = 1) -> dict:
    shown = "\n\n".join(f"Example {first + n}:\n{block}" for n, block in enumerate(blocks))
    return chat(
        ("user", f"Translate each request into bash.\n\n{shown}\n\nNow you:\nInput: {query}\nOutput:")
    )


def test_numbered_examples_must_count_up():
    matcher = Matcher([numbered_template()])
    found = matcher.match(numbered_request([BLOCKS[2], BLOCKS[0], BLOCKS[1]], "show the date"))
    assert found.query == "show the date"
    assert found.example_hashes == [example_hash(BLOCKS[2]), example_hash(BLOCKS[0]), example_hash(BLOCKS[1])]
    skipped = numbered_request([BLOCKS[2], BLOCKS[0]], "show the date")
    skipped["messages"][0]["content"] = skipped["messages"][0]["content"].replace("Example 2:", "Example 3:")
    assert matcher.match(skipped) is None
    rendered = numbered_template().render({"query": "q"}, [BLOCKS[1], BLOCKS[0]])
    assert rendered == numbered_request([BLOCKS[1], BLOCKS[0]], "q")["messages"]
    specs = specs_from_structure(json.loads(json.dumps(numbered_template().structure())))
    assert specs == numbered_template().messages
