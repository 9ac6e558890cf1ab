"""Servers on a free 127.0.0.1 port: the embedded llama.cpp server, the demo's in-process gateway, tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def bind_free_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def serve_in_thread(app: Any, timeout_s: float = 30.0) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Run an ASGI app under uvicorn on a free loopback port in a daemon thread; wait until it serves."""
    sock = bind_free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    return server, thread, port
