"""/dashboard under real uvicorn, rendered by headless Chromium: the page shows the report's figures."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.api.dashboard import PAGE_FIGURES, router
from gateway.loopback import serve_in_thread
from gateway.settings import Settings
from tests.gateway import seed_log
from tests.gateway.seed_log import DAY1, DAY2, NL2BASH


def _get(url: str, **kwargs) -> httpx.Response:
    # The page renders a chart with matplotlib: seconds on a busy 2-core machine, past httpx's 5 s default.
    return httpx.get(url, timeout=60, **kwargs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Nothing in the background may reach the network: the page must render from the gateway alone.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
]


@pytest.fixture
def dashboard_url(home):
    seed_log.seed(home / "logs.db")
    app = FastAPI()
    app.state.settings = Settings(home=home, local_cost_per_hour=seed_log.COST_PER_HOUR)
    app.include_router(router)
    server, thread, port = serve_in_thread(app)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _chromium(tmp_path: Path, *args: str) -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make chromium, or apt-get install -y chromium)")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Figures(HTMLParser):
    """Collects the text of every `td[data-figure]` per row key (data-total, data-template, data-day)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._row: tuple[str, str] | None = None
        self._figure: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.links.append(attributes[name])
        if tag == "tr":
            for key in ("data-total", "data-template", "data-day"):
                if key in attributes:
                    self._row = (key, attributes[key] or "")
                    self.rows[self._row] = {}
        elif tag == "td" and self._row and "data-figure" in attributes:
            self._figure = attributes["data-figure"]
            self.rows[self._row][self._figure] = ""
        elif tag == "img":
            self.images.append(attributes.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._figure = None

    def handle_data(self, data: str) -> None:
        if self._row and self._figure:
            self.rows[self._row][self._figure] += data


def _shown_matches(shown: str, value: float | int | None, figure: str) -> bool:
    """Whether the text on the page is `value` rounded the way it is displayed."""
    if value is None:
        return shown == "n/a"
    number = re.sub(r"[$,%]| ms", "", shown)
    decimals = len(number.split(".")[1]) if "." in number else 0
    if figure == "routed_share":
        value = 100 * value
    return abs(float(number) - value) <= 0.5 * 10**-decimals + 1e-12


def _assert_page_matches(page: _Figures, report: dict) -> int:
    expected = {("data-total", "all"): report["totals"]}
    expected |= {("data-template", t["template_id"] or ""): t for t in report["by_template"]}
    expected |= {("data-day", d["day"]): d for d in report["by_day"]}
    assert set(page.rows) == set(expected)
    checked = 0
    for key, figures in expected.items():
        assert set(page.rows[key]) == set(PAGE_FIGURES)
        for figure in PAGE_FIGURES:
            shown = page.rows[key][figure]
            assert _shown_matches(shown, figures[figure], figure), (key, figure, shown, figures[figure])
            checked += 1
    return checked


def test_rendered_page_shows_the_report_figures(dashboard_url, tmp_path):
    report = _get(f"{dashboard_url}/dashboard/report.json").json()
    assert report["schema"] == "promptintern.report/1" and report["totals"]["requests"] == 19

    dom = _chromium(tmp_path, "--dump-dom", f"{dashboard_url}/dashboard")
    page = _Figures()
    page.feed(dom)
    assert _assert_page_matches(page, report) == 6 * len(PAGE_FIGURES)
    assert page.rows[("data-template", NL2BASH)]["routed_share"] == "46.2%"
    # The chart is inline, and nothing on the page points anywhere else.
    [chart] = page.images
    assert base64.b64decode(chart.removeprefix("data:image/png;base64,"))[:4] == b"\x89PNG"
    assert [link for link in page.links if not link.startswith("data:")] == []

    screenshot = tmp_path / "dashboard.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1400,2200", f"{dashboard_url}/dashboard")
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 50_000


def test_since_filters_the_page_and_the_json_alike(dashboard_url, tmp_path):
    report = _get(f"{dashboard_url}/dashboard/report.json", params={"since": DAY2}).json()
    assert [d["day"] for d in report["by_day"]] == [DAY2]
    page = _Figures()
    page.feed(_chromium(tmp_path, "--dump-dom", f"{dashboard_url}/dashboard?since={DAY2}"))
    assert ("data-day", DAY1) not in page.rows
    _assert_page_matches(page, report)


def test_page_follows_the_log(dashboard_url, home):
    """Figures are computed per request: a new row shows on the next load."""
    before = _get(f"{dashboard_url}/dashboard/report.json").json()["totals"]["requests"]
    db = seed_log.open_db(home / "logs.db")
    db["requests"].insert({"request_id": "late", "startTime": f"{DAY2}T23:00:00+00:00", "route": "upstream"})
    after = _get(f"{dashboard_url}/dashboard/report.json").json()["totals"]["requests"]
    assert after == before + 1
    html = _get(f"{dashboard_url}/dashboard").text
    assert f"{after} requests" in html and 'http-equiv="refresh"' in html


def test_bad_since_is_a_400(dashboard_url):
    response = _get(f"{dashboard_url}/dashboard/report.json", params={"since": "soonish"})
    assert response.status_code == 400 and "--since must be like" in response.text
