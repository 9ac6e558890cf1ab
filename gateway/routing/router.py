"""The router: which requests an internalized model answers, decided per request from an immutable snapshot.

A `RouterSnapshot` holds the matcher (mined templates) and the routes that may take traffic; the router
swaps the whole snapshot at once, so a request sees either the old set or the new, never a mix. It is
rebuilt when the log's templates or routes change: a background task polls two cheap fingerprints every
`router_poll_s`, and every request about to go local re-reads its route's row first, so a retired or
deleted model or a kill switch (`promptintern routes off`) stops local traffic from the next request on.

A new snapshot takes traffic only after `backend.prepare` loaded each newly served model (a model that
fails to load stays upstream); models no longer routed are released after the swap.

Per request (`decide`): match the template; go local (or shadow) only if its route serves, the request
uses no parameter the local model cannot honour (`unsupported_params`) and the canary draw says so. A
route with a confidence threshold may still escalate the local answer upstream (gateway/api/
local_serving.py, gateway/routing/selective.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import sqlite_utils

from gateway.api.schemas import model_card
from gateway.local.backend import LocalBackend, unsupported_params
from gateway.routing.live_calibration import LiveCalibrator
from gateway.routing.routes_store import (
    EMPTY_SNAPSHOT,
    Route,
    RoutesSnapshot,
    load_routes,
    routes_fingerprint,
)
from gateway.templates.matcher import Matcher, MatchResult
from gateway.templates.query_format import query_only_messages

log = logging.getLogger("promptintern.router")

_TEMPLATES_FINGERPRINT = (
    "select (select count(*) from templates), (select max(mined_at) from templates), "
    "(select coalesce(sum(n_requests), 0) from templates), (select count(*) from template_examples)"
)
_ROUTE_ROW = (
    "select r.model_id, r.mode, r.canary_percent, r.updated_at, m.gguf_path, m.status "
    "from routes r left join models m on m.id = r.model_id where r.template_id = ?"
)


@dataclass(frozen=True)
class RouterSnapshot:
    matcher: Matcher
    routes: RoutesSnapshot
    served: Mapping[str, Route]  # template_id -> route whose model is prepared and may take traffic
    fingerprint: tuple[str, str]  # (templates, routes) as read when this snapshot was built


EMPTY_ROUTER_SNAPSHOT = RouterSnapshot(Matcher([]), EMPTY_SNAPSHOT, MappingProxyType({}), ("", ""))


@dataclass(frozen=True)
class Decision:
    """What the router decided for one matched request. mode: local | shadow | upstream."""

    mode: str
    match: MatchResult
    route: Route | None = None
    reason: str = ""  # why a matched request stays upstream (for the log and tests)

    @property
    def template_id(self) -> str:
        return self.match.template_id

    @property
    def local_messages(self) -> list[dict[str, str]]:
        """The query-only prompt the internalized model was trained on."""
        return query_only_messages(self.match.slots)


@dataclass
class Router:
    db_path: Path
    backend: LocalBackend
    poll_interval_s: float = 0.5
    draw: Callable[[], float] = random.random  # the canary draw, in [0, 1)
    live: LiveCalibrator | None = None  # live calibration of routes with a confidence threshold
    snapshot: RouterSnapshot = EMPTY_ROUTER_SNAPSHOT
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _poller: asyncio.Task | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _check_conn: sqlite3.Connection | None = None  # per-request route checks (event-loop thread only)
    _poll_db: sqlite_utils.Database | None = None  # reloads (one worker thread at a time, under _lock)

    # ---- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the first snapshot (preparing its models), then poll for changes in the background."""
        self._check_conn = sqlite3.connect(self.db_path)
        self._check_conn.execute("PRAGMA busy_timeout=2000")
        conn = sqlite3.connect(self.db_path, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=2000")
        self._poll_db = sqlite_utils.Database(conn)
        await self.refresh()
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.backend.close()
        for conn in (self._check_conn, self._poll_db.conn if self._poll_db else None):
            if conn is not None:
                conn.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run background work (a shadow request) that the router awaits or cancels on shutdown."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- per request ----------------------------------------------------------------------------------
    def decide(self, body: Mapping[str, Any]) -> Decision | None:
        """None for a request no template matches; otherwise where its template's traffic goes now."""
        try:
            return self._decide(body)
        except Exception as exc:  # a routing bug must not cost the client its answer: serve upstream
            log.error("routing failed, serving upstream: %s: %s", type(exc).__name__, exc)
            return None

    def _decide(self, body: Mapping[str, Any]) -> Decision | None:
        snapshot = self.snapshot
        if not snapshot.matcher.templates:
            return None
        match = snapshot.matcher.match(body)
        if match is None:
            return None
        route = snapshot.served.get(match.template_id)
        if route is None:
            return Decision("upstream", match, reason="no serving route")
        unsupported = unsupported_params(body)
        if unsupported:
            return Decision("upstream", match, route, f"unsupported parameters: {', '.join(unsupported)}")
        if route.canary_percent <= 0 or self.draw() * 100 >= route.canary_percent:
            return Decision("upstream", match, route, "outside the canary share")
        if not self._route_unchanged(route):
            self._wake.set()  # reload now; this request goes upstream meanwhile
            return Decision("upstream", match, route, "route changed since the last reload")
        return Decision("shadow" if route.mode == "shadow" else "local", match, route)

    def _route_unchanged(self, route: Route) -> bool:
        """Re-read the route's row: the kill switch or a retired/deleted model acts on the next request."""
        assert self._check_conn is not None
        try:
            row = self._check_conn.execute(_ROUTE_ROW, [route.template_id]).fetchone()
        except sqlite3.Error as exc:
            log.warning("route check failed (%s): serving upstream", exc)
            return False
        current = (route.model_id, route.mode, route.canary_percent, route.updated_at, route.gguf_path)
        return row is not None and row[5] == "active" and tuple(row[:5]) == current

    def listing(self) -> list[dict[str, Any]]:
        """`GET /v1/models` entries for the internalized models taking traffic now."""
        return [
            model_card(route.model_id, "promptintern-internalized") for route in self.snapshot.served.values()
        ]

    # ---- reloading ------------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # a locked or damaged DB: keep the current snapshot, try again later
                log.warning("router reload failed: %s", exc)

    async def refresh(self) -> bool:
        """Rebuild the snapshot if templates or routes changed; True if a new one was swapped in."""
        async with self._lock:
            fingerprint = await asyncio.to_thread(self._fingerprint)
            if fingerprint == self.snapshot.fingerprint:
                return False
            matcher, routes = await asyncio.to_thread(self._load)
            old = self.snapshot
            served = {}
            for template_id, route in routes.routes.items():
                if route.serves and await self._prepared(old.served.get(template_id), route):
                    served[template_id] = route
            self.snapshot = RouterSnapshot(matcher, routes, MappingProxyType(served), fingerprint)
            still_routed = {route.model_id for route in served.values()}
            for route in old.served.values():
                if route.model_id not in still_routed:
                    await self.backend.release(route.model_id)
            log.info("router reloaded: %d templates, %d routes serving", len(matcher), len(served))
            return True

    async def _prepared(self, old: Route | None, route: Route) -> bool:
        """Load a newly served model before it takes traffic; False (stays upstream) if it cannot load."""
        if old is not None and (old.model_id, old.gguf_path) == (route.model_id, route.gguf_path):
            return True
        assert route.gguf_path is not None
        try:
            await self.backend.prepare(route.model_id, route.gguf_path)
        except Exception as exc:
            log.warning("model %s cannot be loaded, its template stays upstream: %s", route.model_id, exc)
            return False
        return True

    def _fingerprint(self) -> tuple[str, str]:
        assert self._poll_db is not None
        templates = self._poll_db.execute(_TEMPLATES_FINGERPRINT).fetchone()
        return "|".join(map(str, templates)), routes_fingerprint(self._poll_db)

    def _load(self) -> tuple[Matcher, RoutesSnapshot]:
        assert self._poll_db is not None
        conn = self._poll_db.conn
        conn.execute("begin")  # one read transaction: templates and routes from the same moment
        try:
            return Matcher.from_db(self._poll_db), load_routes(self._poll_db)
        finally:
            conn.execute("commit")
