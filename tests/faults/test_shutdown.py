"""SIGTERM stops the gateway within seconds in every state: with a request stuck on a hanging upstream, a
stream whose client reads nothing, and rows waiting on a database another process locked (the idle case:
the teardown of the `gateway` fixture)."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

import httpx

from tests.faults.conftest import GATEWAY_KEY, assert_no_key_leaked, start_gateway_process
from tests.faults.test_table import request_head

ASK = [{"role": "user", "content": "a b c"}]


def test_sigterm_with_everything_stuck(upstream, tmp_path):
    behaviours = ["echo", "hang", "flood-60000000"]
    gateway = start_gateway_process(
        tmp_path / "home", upstream.url, behaviours, litellm=False, upstream_timeout_s=300
    )
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}

    def post(model: str, stream: bool = False) -> None:
        body = {"model": model, "messages": ASK, "stream": stream}
        try:
            httpx.post(f"{gateway.url}/chat/completions", json=body, headers=headers, timeout=60)
        except httpx.HTTPError:
            pass  # the server went away: that is the point

    stuck = [threading.Thread(target=post, args=("hang", stream)) for stream in (False, True)]
    for thread in stuck:
        thread.start()
    host, port = gateway.root.removeprefix("http://").split(":")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((host, int(port)))
    body = json.dumps({"model": "flood-60000000", "messages": ASK, "stream": True}).encode()
    stalled.sendall(request_head(host, body) + body)
    blocker = sqlite3.connect(gateway.home / "logs.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    waiting = threading.Thread(target=post, args=("echo",))
    waiting.start()
    time.sleep(1.0)
    try:
        took = gateway.stop()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        stalled.close()
    for thread in [*stuck, waiting]:
        thread.join(timeout=30)
    print(f"SIGTERM with everything stuck took {took:.1f} s")
    assert took < 10, f"SIGTERM took {took:.1f} s"
    assert_no_key_leaked(gateway)
