"""Random prompt styles: labelled traffic in template shapes nobody hand-picked, for mining tests, benchmarks.

`random_app` draws one application's prompt: random instructions (maybe under a heading or inside tags), a
random way to lay out examples (`Q:`/`A:` or any other pair of labels and punctuation, XML tags, markdown
headings, JSON lines, numbered `Example 3:` headers, `x => y` lines), 0 to 8 examples per request (the same
ones every time, or drawn from a pool of 5 to 100, a fixed or a varying number), as chat turns or inline in
the system or the user message, static text before and after the query, maybe a second variable slot.
`traffic` interleaves several apps with one-off prompts and near-misses (one word of an app's instructions
changed), and can change one app's wording half way (v1, then v2). Everything is drawn from one
`random.Random`, so a seed replays the same traffic.

Tests (tests/internalizer/test_mine_properties.py) and benchmarks/mining.py import this module, so both
judge mining on the same styles.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

WORDS = """
able about above access account action active adapter address admin after agent alert align alpha amount
anchor angle apply archive area array asset audit author backup badge balance banner basic batch beacon
before begin below binary block board border bottom branch bridge bright broker bucket buffer build bundle
button cache camera canvas carbon cargo carry castle center chain change channel chart check circle city
claim class clean clear client clock cloud cluster coach code column comment commit common compact config
copper corner count course cover craft credit cross crystal cursor custom cycle daily damage dance data
debug decode delta delay depth design detail device dial digest direct disk display domain double draft
dream drive driver early earth echo edge editor effect eight element empty engine entry error event exact
export factor field figure filter final finger flag flash fleet float floor focus folder format forward
frame fresh front future galaxy garden gate gather global glyph grain graph green group guard guide hammer
handle harbor header health heart height helper hidden history holder honest horizon host hover image
import index inner input insert island item kernel label ladder laser layer leader ledger level light limit
linear link liquid listen little local logic lumen magnet manual margin marker master matrix meadow medium
member memory merge metal meter middle mirror mobile model module moment monitor motion mount native
needle network neutral night noble normal number object ocean offset online orange orbit order origin
outer output owner packet paddle page panel paper parent parse patch path pattern pencil pepper phase
pilot pixel planet plate pocket point policy pool portal power prefix press prime print prism profile
proxy pulse puzzle query queue quick radar radio random range rapid reader record region relay remote
render report rescue result ribbon river robot rocket router sample scale scheme screen script search
season second secret select sensor server shadow shape share shell signal silver simple single sketch
socket solar source space spark spider spring square stable stack status stone stream string studio
switch symbol table target task tensor thread ticket timer token topic tower trace track travel trigger
tunnel unit update upper urban useful valley value vector velvet version vessel video view violet visual
volume wallet water wave window winter wire wizard worker yellow zenith zone
""".split()
# Near-misses take their changed word from here, so a near-miss never equals a reworded v2 by chance.
OTHER_WORDS = (
    "amber basalt cobalt dune ember fjord granite heron iris juniper kelp lichen moss nectar onyx".split()
)
COMMANDS = ["run", "get", "set", "make", "show", "sync", "push", "pull", "scan", "load", "list", "send"]
LABEL_PAIRS = [
    ("Q", "A"),
    ("Question", "Answer"),
    ("Input", "Output"),
    ("Request", "Command"),
    ("User", "Bot"),
]
# Words a query's label may use: a second slot takes another label, as real prompts name the question so.
QUERY_WORDS = {"question", "query", "q", "input", "request", "task", "user", "instruction", "prompt", "text"}

Pair = tuple[str, str]  # (example input, example answer)
Messages = list[dict[str, str]]


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def sentence(rng: random.Random, low: int = 5, high: int = 12) -> str:
    text = words(rng, low, high)
    return text[0].upper() + text[1:] + "."


def title(rng: random.Random) -> str:
    return rng.choice(WORDS).capitalize()


def synthetic_pair(rng: random.Random) -> Pair:
    return words(rng, 4, 10), f"{rng.choice(COMMANDS)} --{rng.choice(WORDS)} {rng.choice(WORDS)}"


# ---- how blocks look ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockFormat:
    """One example as text, the query in the same style, and what goes between two examples."""

    name: str
    item: Callable[[str, str, int], str]  # (input, answer, number from 1) -> block
    query: Callable[[str], str]
    sep: str
    turn_prefix: str  # what starts a user turn when examples are chat turns (`Q: `), maybe ""
    escape: Callable[[str], str] = lambda text: text  # how a query is written in this style (JSON strings)


def random_format(rng: random.Random) -> BlockFormat:
    kind = rng.choice(["labels", "xml", "markdown", "json", "numbered", "arrow", "bullets"])
    l1, l2 = rng.choice(LABEL_PAIRS) if rng.random() < 0.6 else (title(rng), title(rng))
    if kind == "labels":
        c = rng.choice([":", ":", " ->", " =>", " ::"])
        return BlockFormat(
            kind,
            lambda x, y, n: f"{l1}{c} {x}\n{l2}{c} {y}",
            lambda q: f"{l1}{c} {q}\n{l2}{c}",
            rng.choice(["\n", "\n\n"]),
            rng.choice(["", f"{l1}{c} "]),
        )
    if kind == "xml":
        tag, t_in, t_out = rng.choice(["example", "sample", "shot", rng.choice(WORDS)]), *_two_tags(rng)
        t_query = rng.choice(["query", "task", rng.choice(WORDS)])
        if rng.random() < 0.5:
            item = lambda x, y, n: f"<{tag}>\n<{t_in}>{x}</{t_in}>\n<{t_out}>{y}</{t_out}>\n</{tag}>"  # noqa: E731
        else:
            item = lambda x, y, n: f"<{tag}><{t_in}>{x}</{t_in}><{t_out}>{y}</{t_out}></{tag}>"  # noqa: E731
        return BlockFormat(
            kind, item, lambda q: f"<{t_query}>{q}</{t_query}>", rng.choice(["\n", "\n\n"]), ""
        )
    if kind == "markdown":
        head, head_q = rng.choice(["Example", title(rng)]), rng.choice(["Task", "Your turn", title(rng)])
        return BlockFormat(
            kind,
            lambda x, y, n: f"### {head}\n**{l1}**: {x}\n**{l2}**: {y}",
            lambda q: f"### {head_q}\n**{l1}**: {q}\n**{l2}**:",
            "\n\n",
            "",
        )
    if kind == "json":
        k1, k2 = l1.lower(), l2.lower()
        return BlockFormat(
            kind,
            lambda x, y, n: json.dumps({k1: x, k2: y}),
            lambda q: json.dumps({k1: q})[:-1] + f', "{k2}": ',
            "\n",
            "",
            lambda q: json.dumps(q)[1:-1],
        )
    if kind == "numbered":
        head = rng.choice(["Example", "Sample", title(rng)])
        style = rng.choice(["{h} {n}:", "## {h} {n}", "{h} #{n}"])
        header = lambda n: style.format(h=head, n=n)  # noqa: E731
        return BlockFormat(
            kind,
            lambda x, y, n: f"{header(n)}\n{l1}: {x}\n{l2}: {y}",
            lambda q: f"{rng_free_title(head)}:\n{l1}: {q}\n{l2}:",
            rng.choice(["\n", "\n\n"]),
            "",
        )
    if kind == "arrow":
        arrow = rng.choice(["=>", "->", "|", "::", "→"])
        return BlockFormat(kind, lambda x, y, n: f"{x} {arrow} {y}", lambda q: f"{q} {arrow}", "\n", "")
    bullet = rng.choice(["-", "*", "+"])
    return BlockFormat(
        kind,
        lambda x, y, n: f"{bullet} {l1}: {x} | {l2}: {y}",
        lambda q: f"{bullet} {l1}: {q} | {l2}:",
        "\n",
        "",
    )


def rng_free_title(head: str) -> str:
    """The label of the query after numbered examples: not numbered, so it is the same in every request."""
    return f"Now your {head.lower()}"


def _two_tags(rng: random.Random) -> tuple[str, str]:
    pairs = [("input", "output"), ("question", "answer"), ("request", "command")]
    return rng.choice(pairs) if rng.random() < 0.7 else (rng.choice(WORDS), rng.choice(WORDS) + "_out")


# ---- one application -------------------------------------------------------------------------------------


@dataclass
class App:
    """One application's prompt template; `render` makes one request of it."""

    label: str
    instructions: list[str]  # static lines (near-misses change one word of them)
    fmt: BlockFormat
    placement: str  # "system", "user" or "turns": where the examples go
    shots: int  # examples per request (at most, if `varying`)
    mode: str  # "fixed" (the same ones every time), "drawn" (exactly `shots`), "varying" (1 to `shots`)
    pool: list[Pair] = field(default_factory=list)
    run_header: str = ""  # a line before the examples (`Examples:`), or ""
    run_footer: str = ""
    before_query: str = ""  # static lines before the query block
    after_query: str = ""  # static text after the query block (a constraints section...)
    second_slot: str = ""  # label of a second variable part before the query (`Context`), or ""
    persona: str = ""  # a static system message when examples and query are in the user message

    def draw(self, rng: random.Random) -> list[int]:
        """Indices into the pool of the examples one request carries."""
        if not self.shots:
            return []
        if self.mode == "fixed":
            return list(range(self.shots))
        n = self.shots if self.mode == "drawn" else rng.randint(1, self.shots)
        return rng.sample(range(len(self.pool)), n)

    def render(
        self, query: str, shots: Sequence[int], second: str = "", instructions: list[str] | None = None
    ):
        """The chat messages of one request."""
        lines = instructions or self.instructions
        head = "\n".join(lines)
        fmt = self.fmt
        examples = [self.pool[i] for i in shots]
        block_text = fmt.sep.join(fmt.item(x, y, n) for n, (x, y) in enumerate(examples, 1))
        if block_text and self.run_header:
            block_text = f"{self.run_header}\n{block_text}"
        if block_text and self.run_footer:
            block_text = f"{block_text}\n{self.run_footer}"
        second_text = f"{self.second_slot}:\n{second}\n\n" if self.second_slot else ""
        before = f"{self.before_query}\n" if self.before_query else ""
        after = self.after_query
        if self.placement == "turns":
            messages = [{"role": "system", "content": head}]
            for x, y in examples:
                messages += [
                    {"role": "user", "content": fmt.turn_prefix + x},
                    {"role": "assistant", "content": y},
                ]
            user = f"{second_text}{before}{fmt.turn_prefix}{query}{after}"
            return messages + [{"role": "user", "content": user}]
        query_text = f"{second_text}{before}{fmt.query(query)}{after}"
        if self.placement == "system":
            system = f"{head}\n\n{block_text}" if block_text else head
            return [{"role": "system", "content": system}, {"role": "user", "content": query_text}]
        body = "\n\n".join(p for p in (head, block_text, query_text) if p)
        persona = [{"role": "system", "content": self.persona}] if self.persona else []
        return persona + [{"role": "user", "content": body}]

    def as_sent(self, query: str) -> str:
        """The query as the prompt carries it (escaped inside a JSON string): what mining should extract."""
        return query if self.placement == "turns" else self.fmt.escape(query)

    def near_miss(self, rng: random.Random, vocabulary: Sequence[str] = OTHER_WORDS) -> list[str]:
        """The instructions with one word changed: not this template."""
        lines = list(self.instructions)
        word = lambda t: t.isalpha() or t[:-1].isalpha()  # noqa: E731 - a word, maybe with a final period
        i = rng.choice([k for k, line in enumerate(lines) if any(word(t) for t in line.split(" "))])
        tokens = lines[i].split(" ")
        at = rng.choice([k for k, t in enumerate(tokens) if word(t)])
        old = tokens[at]
        tail = "" if old.isalpha() else old[-1]
        new = rng.choice([w for w in vocabulary if w != old[: len(old) - len(tail)].lower()])
        tokens[at] = new + tail
        lines[i] = " ".join(tokens)
        return lines

    def reworded(self, rng: random.Random) -> App:
        """v2 of this app: one word of its instructions changed, the rest as it was."""
        return replace(self, label=self.label + "@v2", instructions=self.near_miss(rng, WORDS))


def random_app(
    rng: random.Random, label: str, pairs: Callable[[random.Random], Pair] = synthetic_pair, **force
) -> App:
    """One application in a random style; `force` pins any of the App fields (e.g. shots=0)."""
    n_lines = rng.randint(1, 4)
    instructions = [sentence(rng) for _ in range(n_lines)]
    wrap = rng.random()
    if wrap < 0.2:
        instructions = [f"# {title(rng)} {title(rng)}", *instructions]
    elif wrap < 0.35:
        tag = rng.choice(["instructions", "rules", "system", rng.choice(WORDS)])
        instructions = [f"<{tag}>", *instructions, f"</{tag}>"]
    fmt = random_format(rng)
    shots = rng.choice([0, 1, 2, 3, 4, 5, 6, 8])
    mode = rng.choice(["fixed", "drawn", "varying"])
    size = shots if mode == "fixed" else max(shots + 1, rng.choice([5, 8, 12, 20, 30, 40, 60, 100]))
    pool = _distinct_pairs(rng, pairs, size) if shots else []
    placement = rng.choice(["system", "user", "turns"])
    run_header, run_footer = "", ""
    if shots and placement != "turns" and rng.random() < 0.6:
        run_header = rng.choice(["Examples:", "## Examples", "Here are some examples:", f"{title(rng)}:"])
        if fmt.name == "xml" and rng.random() < 0.5:
            run_header, run_footer = "<examples>", "</examples>"
    before = rng.choice(["", "", "## Question", "Now answer this one:", f"{title(rng)} {title(rng)}:"])
    after = rng.choice(
        [
            "",
            "",
            f"\n\n## Constraints\n- {sentence(rng)}\n- {sentence(rng)}",
            f"\n\n{sentence(rng)}",
            "\nAnswer in one line.",
        ]
    )
    second = ""
    labelled = fmt.turn_prefix if placement == "turns" else fmt.name != "arrow"
    if rng.random() < 0.25 and (labelled or before):  # a second slot needs a label between it and the query
        second = rng.choice(["Context", "Background", "Notes", "Reference"])
    persona = sentence(rng) if placement == "user" and rng.random() < 0.3 else ""
    app = App(
        label,
        instructions,
        fmt,
        placement,
        shots,
        mode,
        pool,
        run_header,
        run_footer,
        before,
        after,
        second,
        persona,
    )
    return replace(app, **force) if force else app


def _distinct_pairs(rng: random.Random, pairs: Callable[[random.Random], Pair], n: int) -> list[Pair]:
    """n examples with distinct inputs and distinct answers (a pool repeats neither)."""
    out: list[Pair] = []
    inputs, answers = set(), set()
    while len(out) < n:
        x, y = pairs(rng)
        if x not in inputs and y not in answers:
            out.append((x, y))
            inputs.add(x)
            answers.add(y)
    return out


# ---- traffic ---------------------------------------------------------------------------------------------


@dataclass
class Request:
    messages: Messages
    label: str | None  # the app (and version) it belongs to; None for one-offs and near-misses
    query: str | None  # as the prompt carries it
    shots: tuple[int, ...] = ()
    kind: str = "template"  # "template", "one-off" or "near-miss"


def one_off(rng: random.Random) -> Messages:
    """A prompt that belongs to no template."""
    user = "\n".join(sentence(rng) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.4:
        return [{"role": "system", "content": sentence(rng)}, {"role": "user", "content": user}]
    return [{"role": "user", "content": user}]


def query_text(rng: random.Random) -> str:
    return words(rng, 5, 12)


def second_value(rng: random.Random) -> str:
    return "\n".join(sentence(rng, 4, 9) for _ in range(rng.randint(1, 3)))


def request_of(app: App, rng: random.Random, query: Callable[[random.Random], str] = query_text) -> Request:
    text = query(rng)
    shots = app.draw(rng)
    second = second_value(rng) if app.second_slot else ""
    return Request(app.render(text, shots, second), app.label, app.as_sent(text), tuple(shots))


def near_miss_of(app: App, rng: random.Random, query: Callable[[random.Random], str] = query_text) -> Request:
    text = query(rng)
    shots = app.draw(rng)
    second = second_value(rng) if app.second_slot else ""
    messages = app.render(text, shots, second, app.near_miss(rng))
    return Request(messages, None, None, tuple(shots), "near-miss")


def traffic(
    rng: random.Random,
    apps: list[App],
    counts: list[int],
    n_one_offs: int,
    n_near_misses: int,
    reworded: App | None = None,
    query: Callable[[random.Random], str] = query_text,
) -> list[Request]:
    """Requests of every app (counts[i] for apps[i]) interleaved with one-offs and near-misses, in random
    order. If `reworded` is given (v2 of apps[0]), the second half of apps[0]'s requests is sent with v2's
    wording: a template that changed once in the middle of the log."""
    plan: list[tuple[str, int]] = [("app", i) for i, n in enumerate(counts) for _ in range(n)]
    plan += [("one-off", 0)] * n_one_offs + [("near-miss", i % len(apps)) for i in range(n_near_misses)]
    rng.shuffle(plan)
    out, sent_first = [], 0
    for kind, i in plan:
        if kind == "one-off":
            out.append(Request(one_off(rng), None, None, (), "one-off"))
        elif kind == "near-miss":
            out.append(near_miss_of(apps[i], rng, query))
        elif i == 0 and reworded is not None:
            out.append(request_of(reworded if sent_first >= counts[0] // 2 else apps[0], rng, query))
            sent_first += 1
        else:
            out.append(request_of(apps[i], rng, query))
    return out
