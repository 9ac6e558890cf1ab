"""/dashboard under real uvicorn, rendered by headless Chromium: the figures drawn by the page's script equal
the report JSON, the layout fits a 1280-px window, an empty log says what to run next."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from gateway.api.dashboard import parse_period, router
from gateway.loopback import serve_in_thread
from gateway.settings import Settings
from tests.gateway import seed_log
from tests.gateway.seed_log import DAY1, DAY2, LONG_TEMPLATE, NL2BASH, SQL
from tests.support import chromium

# Loads the dashboard in a 1280-px frame and writes how wide its content is, for the layout test.
PROBE = """<!doctype html><html><body style="margin:0">
<iframe id="frame" src="%s" style="width:1280px;height:1400px;border:0"></iframe>
<script>
document.getElementById("frame").addEventListener("load", () => {
  const doc = document.getElementById("frame").contentDocument;
  const right = Math.max(...[...doc.body.querySelectorAll("*")].map((e) => e.getBoundingClientRect().right));
  const out = document.createElement("pre");
  out.id = "layout";
  out.textContent = JSON.stringify({scroll: doc.documentElement.scrollWidth,
                                    client: doc.documentElement.clientWidth, right});
  document.body.append(out);
});
</script></body></html>"""


def serve_dashboard(home):
    app = FastAPI()
    app.state.settings = Settings(home=home, local_cost_per_hour=seed_log.COST_PER_HOUR)
    app.include_router(router)

    @app.get("/probe", response_class=HTMLResponse)
    def probe(src: str) -> str:
        return PROBE % src.replace('"', "")

    server, thread, port = serve_in_thread(app)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture
def dashboard_url(home):
    seed_log.seed_dashboard(home / "logs.db")
    url, stop = serve_dashboard(home)
    yield url
    stop()


def _dom(url: str, **kwargs) -> str:
    try:
        return chromium.dump_dom(url, **kwargs)
    except chromium.ChromiumMissing as exc:
        pytest.skip(str(exc))


def _report(url: str, **params) -> dict:
    response = httpx.get(f"{url}/dashboard/report.json", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


class Page(HTMLParser):
    """The rendered DOM's figures: {(scope, name): (text, data-value)}, scope = "headline" or a template id;
    plus every src/href and the SVG rectangles per chart."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "source", "wbr"}

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.figures: dict[tuple[str, str], tuple[str, str]] = {}
        self.links: list[str] = []
        self.scripts_with_src: list[str] = []
        self.rects: dict[str, int] = {}
        self.hidden: set[str] = set()
        self.text_by_id: dict[str, str] = {}
        self._stack: list[dict] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "script" and "src" in a:
            self.scripts_with_src.append(a["src"])
        if "hidden" in a and "id" in a:
            self.hidden.add(a["id"])
        scope = next((f["scope"] for f in reversed(self._stack) if f["scope"]), None)
        if a.get("id") == "headline":
            scope = "headline"
        if "data-template" in a:
            scope = a["data-template"]
        if tag == "rect":
            chart = next((f["id"] for f in reversed(self._stack) if f["id"].startswith("chart-")), "")
            self.rects[chart] = self.rects.get(chart, 0) + 1
        if tag in self.VOID:
            return
        self._stack.append({"tag": tag, "scope": scope, "id": a.get("id", ""), "figure": a.get("data-figure"),
                            "value": a.get("data-value"), "text": ""})  # fmt: skip

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            frame = self._stack.pop()
            if frame["figure"] and frame["scope"]:
                self.figures[(frame["scope"], frame["figure"])] = (frame["text"].strip(), frame["value"])
            if frame["id"]:
                self.text_by_id[frame["id"]] = frame["text"].strip()
            if frame["tag"] == tag:
                return

    def handle_data(self, data: str) -> None:
        for frame in self._stack:
            frame["text"] += data


def shown_equals(text: str, value, name: str) -> bool:
    """Whether the page's text is `value` as the page formats it (rounded for display)."""
    if value is None:
        return text in ("n/a", "-")
    if isinstance(value, str):
        return text == value
    number = re.sub(r"[$,%]| ms", "", text)
    decimals = len(number.split(".")[1]) if "." in number else 0
    if name in ("local_share", "routed_share"):
        value = 100 * value
    return abs(float(number) - value) <= 0.5 * 10**-decimals + 1e-12


def assert_figures(page: Page, scope: str, expected: dict) -> int:
    shown = {name: page.figures[(s, name)] for (s, name) in page.figures if s == scope}
    assert shown, f"no figures for {scope}"
    for name, (text, raw) in shown.items():
        value = expected[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert float(raw) == pytest.approx(value, rel=1e-12, abs=1e-15), (scope, name, raw, value)
        else:
            assert raw == ("" if value is None else str(value)), (scope, name, raw, value)
        assert shown_equals(text, value, name), (scope, name, text, value)
    return len(shown)


def test_the_page_shows_what_the_json_says(dashboard_url):
    report = _report(dashboard_url, since="all")
    totals = report["totals"]
    assert (totals["requests"], totals["served"], totals["errors"]) == (19, 18, 1)
    page = Page(_dom(f"{dashboard_url}/dashboard?since=all"))

    expected = {**totals, "input_tokens_saved": totals["input_tokens_before"] - totals["input_tokens_after"]}
    assert assert_figures(page, "headline", expected) >= 14
    # Failed requests are counted apart: the headline count is the set the latency was computed over.
    assert page.figures[("headline", "served")][0] == "18" and page.figures[("headline", "errors")][0] == "1"

    cards = {card["template_id"]: card for card in report["templates"]}
    assert set(cards) == {NL2BASH, SQL, LONG_TEMPLATE}
    for template_id, card in cards.items():
        assert assert_figures(page, template_id, card) >= 9
    nl2bash = cards[NL2BASH]
    assert (nl2bash["status"], nl2bash["model_id"], nl2bash["gate_score"]) == ("active", "nl2bash-v1", 0.912)
    assert (nl2bash["shadow_agreement"], nl2bash["shadow_samples"]) == (0.8, 1)
    assert page.figures[(NL2BASH, "command")][0] == f"promptintern routes off {NL2BASH}"
    assert (cards[SQL]["status"], cards[SQL]["gate_metric"], cards[LONG_TEMPLATE]["status"]) == (
        "candidate", "exact_match", "mined",
    )  # fmt: skip

    # The charts are drawn in the page from the JSON: a stacked bar per day and series, two bars per day.
    assert page.rects == {
        "chart-requests": 3 * len(report["by_day"]),
        "chart-dollars": 2 * len(report["by_day"]),
    }
    assert "next-step" in page.hidden  # something is served locally: no "what next" box
    # Self-contained: no script, style or image from anywhere, not even from the gateway.
    assert page.scripts_with_src == []
    assert all(link.startswith(("?since=", "dashboard/report.json")) for link in page.links), page.links


def test_the_layout_fits_1280_px_without_scrolling_sideways(dashboard_url):
    dom = _dom(f"{dashboard_url}/probe?src=/dashboard%3Fsince%3Dall", window=(1400, 1500))
    layout = json.loads(Page(dom).text_by_id["layout"])
    assert layout["client"] == 1280 and layout["scroll"] <= 1280 and layout["right"] <= 1280, layout


def test_since_filters_the_page_and_the_json_alike(dashboard_url):
    report = _report(dashboard_url, since=DAY2)
    assert [d["day"] for d in report["by_day"]] == [DAY2]
    page = Page(_dom(f"{dashboard_url}/dashboard?since={DAY2}"))
    assert_figures(page, "headline", {**report["totals"], "input_tokens_saved": report["totals"][
        "input_tokens_before"] - report["totals"]["input_tokens_after"]})  # fmt: skip
    assert report["totals"]["requests"] < _report(dashboard_url, since="all")["totals"]["requests"]
    assert DAY1 not in json.dumps(report["by_day"])


def test_the_page_defaults_to_this_month(dashboard_url):
    html = httpx.get(f"{dashboard_url}/dashboard", timeout=60).text
    embedded = json.loads(re.search(r'id="report-data">(.*?)</script>', html, re.DOTALL).group(1))
    assert embedded["since"] == parse_period("month").isoformat()
    assert _report(dashboard_url)["since"] is None  # report.json: everything unless asked


def test_the_page_follows_the_log(dashboard_url, home):
    """Figures are computed per request: a new row shows on the next load (and on the page's refresh)."""
    before = _report(dashboard_url, since="all")["totals"]["requests"]
    db = seed_log.open_db(home / "logs.db")
    db["requests"].insert({"request_id": "late", "startTime": f"{DAY2}T23:00:00+00:00", "route": "upstream"})
    assert _report(dashboard_url, since="all")["totals"]["requests"] == before + 1


def test_text_from_the_log_cannot_break_out_of_the_page(home):
    db = seed_log.seed(home / "logs.db")
    db["templates"].update(NL2BASH, {"name": "</script><script>document.title='owned'</script><b>x"})
    url, stop = serve_dashboard(home)
    try:
        dom = _dom(f"{url}/dashboard?since=all")
    finally:
        stop()
    assert "<title>PromptIntern gateway</title>" in dom and "owned" not in dom.split("</title>")[0]
    assert "&lt;/script&gt;&lt;script&gt;" in dom  # shown as text in the card's heading


@pytest.mark.parametrize(
    "fill,title,command",
    [
        (lambda db: None, "No requests logged yet", "promptintern import traffic.jsonl"),
        (lambda db: db["requests"].insert({"request_id": "r1", "startTime": f"{DAY2}T10:00:00+00:00",
                                           "route": "upstream", "status": 200}),
         "1 requests logged, no recurring prompt found yet", "promptintern mine"),
    ],
)  # fmt: skip
def test_an_empty_log_says_what_to_run_next(home, fill, title, command):
    fill(seed_log.open_db(home / "logs.db"))
    url, stop = serve_dashboard(home)
    try:
        report = _report(url, since="all")
        page = Page(_dom(f"{url}/dashboard?since=all"))
    finally:
        stop()
    assert report["next_step"]["title"] == title and report["next_step"]["command"] == command
    assert "next-step" not in page.hidden
    assert page.text_by_id["next-step-title"] == title and page.text_by_id["next-step-command"] == command
    assert "templates-empty" not in page.hidden  # "No templates mined yet."


def test_bad_since_is_a_400(dashboard_url):
    response = httpx.get(f"{dashboard_url}/dashboard/report.json", params={"since": "soonish"}, timeout=60)
    assert response.status_code == 400 and "--since must be like" in response.text
