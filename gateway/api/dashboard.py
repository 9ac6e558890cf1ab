"""`GET /dashboard` (the page) and `GET /dashboard/report.json` (the savings report it is drawn from).

Include `router` in the app. It expects `request.app.state.settings` to be a `Settings` (the log is
`settings.db_path`); tests and embedders may override the `report_db` dependency instead. Both take
`?since=` like `promptintern report --since`, plus `month` (the calendar month so far, the page's default)
and `all`; report.json defaults to all.

The page is one self-contained HTML document (gateway/api/dashboard_page/: markup, CSS and a small script,
no build step, nothing fetched from anywhere else: gateways often run offline). The report JSON is embedded
in it and the script draws the figures, the template cards and inline-SVG charts from it, then fetches
report.json again every 30 s. With gateway API keys set, both need a key: `Authorization: Bearer <key>`, or
the key as the password of HTTP Basic auth, which a browser asks for (the 401 says so).

Handlers are plain `def`, so FastAPI runs the SQLite reads in its thread pool, never on the event loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from importlib.resources import files
from typing import Annotated, Any

import sqlite_utils
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from gateway.accounting.report import build_report, parse_since
from gateway.api.auth import Authenticator
from gateway.api.errors import GatewayError
from gateway.log.store import open_db

PAGE_DEFAULT_SINCE = "month"


def require_key(request: Request) -> None:
    """A gateway API key when keys are set (Bearer, or HTTP Basic's password for browsers)."""
    gateway = getattr(request.app.state, "gateway", None)
    auth = gateway.auth if gateway is not None else Authenticator(request.app.state.settings.api_keys)
    try:
        auth.authenticate(request.headers.get("authorization"), allow_basic=True)
    except GatewayError as exc:
        # The header makes a browser ask for the key (as the password; any user name).
        challenge = {"WWW-Authenticate": 'Basic realm="PromptIntern gateway", charset="UTF-8"'}
        raise HTTPException(status_code=401, detail=exc.message, headers=challenge) from None


router = APIRouter(tags=["dashboard"], dependencies=[Depends(require_key)])


def report_db(request: Request) -> Iterator[sqlite_utils.Database]:
    """The log database of the app's settings; one connection per request, closed afterwards."""
    db = open_db(request.app.state.settings.db_path)
    try:
        yield db
    finally:
        db.close()


def parse_period(since: str | None, now: datetime | None = None) -> datetime | None:
    """`month` (this calendar month, UTC), `all` or None (everything), or anything `parse_since` takes."""
    now = now or datetime.now(UTC)
    if not since or since == "all":
        return None
    if since == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    try:
        return parse_since(since, now)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


SinceQuery = Annotated[str | None, Query(description="month, all, 7d, 24h, 2026-11-20, ISO datetime")]
DbDep = Annotated[sqlite_utils.Database, Depends(report_db)]


@router.get("/dashboard/report.json")
def report_json(request: Request, db: DbDep, since: SinceQuery = None) -> dict[str, Any]:
    return _report(request, db, parse_period(since))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, db: DbDep, since: SinceQuery = None) -> HTMLResponse:
    report = _report(request, db, parse_period(since or PAGE_DEFAULT_SINCE))
    return HTMLResponse(render_page(report), headers={"cache-control": "no-store"})


def _report(request: Request, db: sqlite_utils.Database, since: datetime | None) -> dict[str, Any]:
    return build_report(db, since, local_cost_per_hour=request.app.state.settings.local_cost_per_hour)


def render_page(report: dict[str, Any]) -> str:
    """The page with the report embedded as JSON (escaped so no text from the log can close the script)."""
    html, css, script = _assets()
    data = json.dumps(report, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    data = data.replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return html.replace("/*__CSS__*/", css).replace("/*__JS__*/", script).replace("__REPORT__", data)


@cache
def _assets() -> tuple[str, str, str]:
    folder = files("gateway.api").joinpath("dashboard_page")
    return tuple(folder.joinpath(name).read_text(encoding="utf-8") for name in PAGE_FILES)  # type: ignore


PAGE_FILES = ("dashboard.html", "dashboard.css", "dashboard.js")
