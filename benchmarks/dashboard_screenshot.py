"""A screenshot of /dashboard at 1280 px, as headless Chromium renders it, over the dashboard test's log (two
days of traffic: a template served locally, a candidate, a mined one; one failed request).

    python -m benchmarks.dashboard_screenshot        # -> benchmarks/results/dashboard.png

Needs Debian's chromium (`make chromium`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fastapi import FastAPI

from gateway.api.dashboard import router
from gateway.loopback import serve_in_thread
from gateway.settings import Settings
from tests.gateway import seed_log
from tests.support import chromium

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=960)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        seed_log.seed_dashboard(Path(home) / "logs.db")
        app = FastAPI()
        app.state.settings = Settings(home=Path(home), local_cost_per_hour=seed_log.COST_PER_HOUR)
        app.include_router(router)
        server, thread, port = serve_in_thread(app)
        try:
            url = f"http://127.0.0.1:{port}/dashboard?since=all"
            chromium.screenshot(url, args.out, window=(args.width, args.height))
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    print(f"wrote {args.out} ({args.width}x{args.height})")


if __name__ == "__main__":
    main()
