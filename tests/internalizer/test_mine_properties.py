"""Mining on prompt styles nobody hand-picked (hypothesis over benchmarks/mining_styles.py), and the two
styles that a list of delimiters missed: markdown headings around Q:/A: pairs with constraints after the
query, and XML-tagged examples drawn from a pool inside one user message."""

from __future__ import annotations

import json
import random
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from benchmarks.mining_styles import (
    App,
    Request,
    near_miss_of,
    one_off,
    random_app,
    request_of,
    traffic,
)
from gateway.log.store import open_db
from gateway.templates.matcher import Matcher
from internalizer.mine import mine
from tests.internalizer.mine_traffic import add_requests


def mined_matcher(requests: list[Request]) -> tuple[Matcher, dict[int, dict], dict[str, dict], list[dict]]:
    """Log the requests in a real SQLite log and mine it. Returns the matcher built from the database, the
    `request_templates` rows by position in the log, the examples by hash and the template rows."""
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "logs.db")
        ids = add_requests(db, [r.messages for r in requests])
        mine(db)
        rows = {r["request_id"]: r for r in db.query("select * from request_templates")}
        examples = {r["hash"]: r for r in db.query("select * from examples")}
        templates = list(db.query("select * from templates"))
        matcher = Matcher.from_db(db)
        db.close()
    return matcher, {n: rows[i] for n, i in enumerate(ids) if i in rows}, examples, templates


def describe(app: App) -> str:
    example = app.render("QUERY", app.draw(random.Random(0)), "SECOND")
    style = f"{app.fmt.name}, {app.placement}, {app.shots} {app.mode} of {len(app.pool)}"
    return f"{app.label}: {style}\n{json.dumps(example, indent=1)}"


# Derandomized: the same examples on every run, so a test run never fails by the luck of the draw;
# benchmarks/mining.py scores 20 more seeds of larger traffic.
@settings(
    max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(seed=st.integers(0, 2**32 - 1), n_apps=st.integers(1, 4), v2=st.booleans())
def test_every_request_of_a_generated_template_lands_in_its_template(seed, n_apps, v2):
    """1 to 4 apps in random styles, 12 to 40 requests each, one maybe reworded half way, among one-offs and
    near-misses (one word of an app's instructions changed): every request of an app lands in that app's
    one template with its query extracted exactly, one-offs and near-misses match nothing, and so it goes
    for fresh requests too (when they carry examples the log has shown)."""
    rng = random.Random(seed)
    apps = [random_app(rng, f"app{i}") for i in range(n_apps)]
    counts = [rng.randint(12, 40) for _ in apps]
    reworded = apps[0].reworded(rng) if v2 else None
    if reworded is not None:
        counts[0] = max(counts[0], 20)  # each wording sent at least 10 times
    for app in apps + ([reworded] if reworded else []):
        note(describe(app))
    log = traffic(rng, apps, counts, rng.randint(0, 15), rng.randint(0, 6), reworded)
    matcher = mined_matcher(log)[0]

    template_of: dict[str, set[str]] = defaultdict(set)
    for request in log:
        found = matcher.match({"messages": request.messages})
        if request.label is None:
            assert found is None, f"a {request.kind} matched {found}: {request.messages}"
            continue
        assert found is not None, f"{request.label} not matched: {request.messages}"
        assert found.query == request.query
        template_of[request.label].add(found.template_id)
    assert all(len(ids) == 1 for ids in template_of.values()), template_of
    assert len({next(iter(ids)) for ids in template_of.values()}) == len(template_of)  # one template per app

    # Fresh traffic: a new query with examples the log showed is matched; a near-miss never is.
    latest = [reworded if reworded is not None else apps[0], *apps[1:]]
    logged = defaultdict(set)
    for request in log:
        if request.label:
            logged[request.label].update(request.shots)
    for app in latest:
        for _ in range(5):
            fresh = request_of(app, rng)
            if set(fresh.shots) <= logged[app.label]:
                found = matcher.match({"messages": fresh.messages})
                assert found is not None and found.template_id in template_of[app.label]
                assert found.query == fresh.query
            assert matcher.match({"messages": near_miss_of(app, rng).messages}) is None
        assert matcher.match({"messages": one_off(rng)}) is None


# ---- the two styles a list of delimiters missed -----------------------------------------------------------

GREEK = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda sigma".split()
MARKDOWN_TAIL = "\n\n## Constraints\n- Use only POSIX tools.\n- Never delete anything."


def markdown_prompt(pool: list[tuple[str, str]], query: str, shots: list[int]) -> list[dict]:
    pairs = "\n\n".join(f"Q: {pool[i][0]}\nA: {pool[i][1]}" for i in shots)
    text = (
        "# Task\nYou turn a request about log files into one shell command.\n\n"
        f"## Examples\n\n{pairs}\n\n## Question\n\nQ: {query}\nA:{MARKDOWN_TAIL}"
    )
    return [{"role": "user", "content": text}]


def xml_prompt(pool: list[tuple[str, str]], query: str, shots: list[int]) -> list[dict]:
    blocks = "\n".join(
        f"<example>\n<input>{pool[i][0]}</input>\n<output>{pool[i][1]}</output>\n</example>" for i in shots
    )
    text = (
        "<instructions>\nAnswer with the command that does what the input asks.\n</instructions>\n"
        f"<examples>\n{blocks}\n</examples>\n<query>{query}</query>"
    )
    return [{"role": "user", "content": text}]


def check_pool_prompt(render, pool_size: int, k: int, n: int = 300) -> dict:
    """n requests of one prompt, k examples drawn per request from a pool, among 20 one-offs: one template,
    every request in it with its query and its examples (input and answer), fresh requests matched, an
    example from outside the pool not."""
    rng = random.Random(7)
    verbs = ["list", "count", "find", "archive", "rotate", "compress"]
    pool = [
        (f"{rng.choice(verbs)} the newest logs in folder {n}", f"logtool --{rng.choice(verbs)} {n}")
        for n in range(pool_size)
    ]
    log = []
    for _ in range(n):
        query, shots = " ".join(rng.sample(GREEK, 6)), rng.sample(range(pool_size), k)
        log.append(Request(render(pool, query, shots), "app", query, tuple(shots)))
    log += [Request(one_off(rng), None, None) for _ in range(20)]
    rng.shuffle(log)
    matcher, rows, examples, [template] = mined_matcher(log)
    assert len(matcher) == 1 and template["n_requests"] == n
    for position, request in enumerate(log):
        row = rows.get(position)
        if request.label is None:
            assert row is None
            continue
        assert row is not None and row["query"] == request.query
        got = [(examples[h]["input"], examples[h]["output"]) for h in json.loads(row["example_hashes"])]
        assert got == [pool[i] for i in request.shots]
    shots = rng.sample(range(pool_size), k)
    assert matcher.match({"messages": render(pool, "kappa sigma theta", shots)}).query == "kappa sigma theta"
    foreign = [*pool[: shots[0]], (pool[shots[0]][0], "rm -rf /"), *pool[shots[0] + 1 :]]
    assert matcher.match({"messages": render(foreign, "kappa sigma theta", shots)}) is None
    return template


def test_markdown_headings_around_qa_pairs_drawn_from_a_pool_with_constraints_after_the_query():
    template = check_pool_prompt(markdown_prompt, 30, 5)
    assert template["static_text"].endswith("## Question\n\nQ: {{query}}\nA:" + MARKDOWN_TAIL)
    assert "## Examples\n\n{{examples}}\n\n## Question" in template["static_text"]


def test_xml_examples_drawn_from_a_pool_inside_one_user_message():
    template = check_pool_prompt(xml_prompt, 40, 4)
    assert template["static_text"].endswith("</examples>\n<query>{{query}}</query>")


@settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(
    texts=st.lists(
        st.text(alphabet=st.sampled_from("ab c:\n\r\t<>#*-|{}\"'1é"), max_size=60), min_size=1, max_size=8
    ),
    copies=st.integers(1, 12),
)
def test_mining_text_nobody_designed_never_fails(texts, copies):
    """Odd text (blank lines, carriage returns, lone punctuation, empty messages) sent a few times over, some
    of it with varying tails: mining finishes, and what it assigns the matcher matches the same way."""
    log = []
    for n in range(copies):
        for k, text in enumerate(texts):
            user = {"role": "user", "content": f"{text}\n{n}" if k % 2 else text}
            log.append(Request([{"role": "system", "content": texts[0]}, user], None, None))
    matcher, rows, _, _ = mined_matcher(log)
    for position, row in rows.items():
        found = matcher.match({"messages": log[position].messages})
        assert found is not None and (found.template_id, found.query) == (row["template_id"], row["query"])
