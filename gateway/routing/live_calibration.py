"""Live calibration: is a calibrated route keeping its promise on real traffic?

A share (`live_calibration_share`) of the answers served locally by a calibrated route (its model has a
stored calibration, whether or not the route applies a threshold) is also answered upstream in the
background (gateway/api/local_serving.py) and the two are compared; the comparison is logged on the
request's row (`shadow_response` = the upstream answer, `shadow_agreement`). After each comparison,
`check` reads the route's comparisons since it last changed (at most `live_calibration_window` of the
newest) and applies `live_verdict` (gateway/routing/selective.py): keep, raise the threshold, or set the
route to shadow. The change is written with a note saying why (`routes.note`, shown by `promptintern
routes` and the report); a route an operator turned off is never touched.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from gateway.routing.routes_store import Route, adjust_route
from gateway.routing.selective import LiveVerdict, live_verdict, z_for
from gateway.settings import Settings

log = logging.getLogger("promptintern.router")

_COMPARED = (
    "select local_confidence, shadow_agreement from requests "
    "where template_id = ? and route = 'local' and model_served = ? and startTime >= ? "
    "and local_confidence is not null and shadow_agreement is not null "
    "order by startTime desc limit ?"
)


@dataclass
class LiveCalibrator:
    db_path: Path
    share: float = 0.05
    min_samples: int = 20
    window: int = 200
    level: float = 0.95
    min_coverage: float = 0.0
    draw: Callable[[], float] = random.random
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> LiveCalibrator:
        return cls(
            settings.db_path,
            share=settings.live_calibration_share,
            min_samples=settings.live_calibration_min_samples,
            window=settings.live_calibration_window,
            level=settings.live_calibration_level,
        )

    def wants_comparison(self, route: Route) -> bool:
        """Draw whether this locally served answer of a calibrated route is also answered upstream."""
        return route.target is not None and self.share > 0 and self.draw() < self.share

    def check(self, route: Route) -> LiveVerdict:
        """Judge the route on its live comparisons and act on the verdict (blocking: run it in a thread)."""
        assert route.target is not None
        with self._lock:  # comparisons finishing together are judged one after the other
            conn = sqlite3.connect(self.db_path)
            conn.execute("PRAGMA busy_timeout=5000")
            db = sqlite_utils.Database(conn)
            try:
                current = conn.execute(
                    "select updated_at, threshold, mode from routes where template_id = ? and model_id = ?",
                    [route.template_id, route.model_id],
                ).fetchone()
                if current is None or current[2] != "active":
                    return LiveVerdict("keep", 0, 1.0, 1.0)
                rows = conn.execute(
                    _COMPARED,
                    [route.template_id, f"local/{route.model_id}", current[0] or "", self.window],
                ).fetchall()
                verdict = live_verdict(
                    [(float(c), float(a)) for c, a in rows],
                    route.target,
                    current[1],
                    z_for(self.level),
                    self.min_samples,
                    self.min_coverage,
                )
                if verdict.action != "keep":
                    changed = adjust_route(
                        db,
                        route.template_id,
                        route.model_id,
                        note=verdict.note(route.target),
                        threshold=verdict.threshold,
                        mode="shadow" if verdict.action == "shadow" else None,
                    )
                    if changed:
                        log.warning("template %s: %s", route.template_id, verdict.note(route.target))
                return verdict
            finally:
                conn.close()
