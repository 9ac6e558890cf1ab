"""Headless Chromium (Debian's /usr/bin/chromium, `make chromium`) driven from its command line: the DOM
after the page's scripts ran, and screenshots. Nothing it does in the background may reach the network."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    # The DOM is dumped once the page and its timers settle (virtual time), not at the first load event.
    "--virtual-time-budget=5000",
]
_profiles = itertools.count()


class ChromiumMissing(RuntimeError):
    pass


def run(*args: str, window: tuple[int, int] = (1280, 900), timeout_s: float = 120) -> str:
    """Run Chromium with `args` in a fresh profile; its stdout (e.g. the DOM for --dump-dom)."""
    if CHROMIUM is None:
        raise ChromiumMissing("chromium is not installed (make chromium, or apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix=f"chromium-{next(_profiles)}-") as profile:
        done = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(url: str, window: tuple[int, int] = (1280, 900)) -> str:
    return run("--dump-dom", url, window=window)


def screenshot(url: str, path: Path, window: tuple[int, int] = (1280, 1700)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run(f"--screenshot={path}", url, window=window)
    return path
