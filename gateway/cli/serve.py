"""`promptintern serve`: the gateway under uvicorn.

The port is bound before anything else, so a busy port is one line and exit status 1, not a traceback after
the models have loaded; "listening" is printed once the app has started and the socket accepts connections.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

import click
import uvicorn

from gateway.api.backends import check_default_model, model_names
from gateway.cli import CliError, get_settings
from gateway.settings import Settings
from gateway.upstream.base_model import BaseModelMissing, smollm2_gguf_path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_embedded(settings: Settings) -> None:
    """The embedded default needs llama-cpp-python and the SmolLM2 GGUF: say so in one line if missing."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise CliError("no upstream configured and llama-cpp-python is not installed")
    try:
        path = settings.embedded_model_path or smollm2_gguf_path()
    except BaseModelMissing as exc:
        raise CliError(f"no upstream configured and {exc}") from exc
    if not path.is_file():
        raise CliError(f"embedded model not found: {path}")


@click.command()
@click.option("--host", default=None, help="Address to bind (default: settings.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default: settings.port, 8080).")
@click.option("--log-level", default="warning", show_default=True, help="uvicorn log level.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, log_level: str) -> None:
    """Run the OpenAI-compatible gateway (POST /v1/chat/completions) and log every request."""
    from gateway.app import create_app

    settings = get_settings(ctx)
    host = host or settings.host
    port = settings.port if port is None else port
    if not settings.api_keys and not is_loopback(host):
        click.echo(
            f"No gateway API key configured (PROMPTINTERN_API_KEYS): refusing to listen on {host}; "
            "binding 127.0.0.1 only.",
            err=True,
        )
        host = "127.0.0.1"
    try:
        settings.ensure_home()
    except OSError as exc:
        raise CliError(f"cannot create PROMPTINTERN_HOME {settings.home}: {exc.strerror}") from exc
    try:
        check_default_model(settings.default_model, model_names(settings))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if not settings.models:
        _check_embedded(settings)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    upstreams = (
        ", ".join(m.name for m in settings.models) or f"embedded llama.cpp ({settings.embedded_model_name})"
    )
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no auth (loopback only)"

    def announce() -> None:
        url = f"http://{host}:{bound_port}"
        click.echo(f"PromptIntern gateway on {url}/v1  upstream: {upstreams}  {auth}", err=True)
        click.echo(f"dashboard: {url}/dashboard  request log: {settings.db_path}", err=True)

    # In-flight requests get shutdown_timeout_s after SIGTERM: a hung client or upstream cannot hold it.
    config = uvicorn.Config(
        create_app(settings), log_level=log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )  # fmt: skip
    server = AnnouncingServer(config, announce)
    server.run(sockets=[sock])
    if not server.started:
        raise CliError("the gateway did not start (see the messages above)")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening); one clear line when the address is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"cannot listen on {host}:{port}: the port is in use (another gateway?); "
                "choose another with --port or PROMPTINTERN_PORT"
            ) from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, calling `announce` once the app has started and the socket accepts connections."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]) -> None:
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.announce()
