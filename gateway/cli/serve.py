"""`promptintern serve`: the gateway under uvicorn."""

from __future__ import annotations

import ipaddress

import click

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
    import uvicorn

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
    upstreams = (
        ", ".join(m.name for m in settings.models) or f"embedded llama.cpp ({settings.embedded_model_name})"
    )
    auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no auth (loopback only)"
    click.echo(f"PromptIntern gateway on http://{host}:{port}/v1  upstream: {upstreams}  {auth}", err=True)
    click.echo(f"request log: {settings.db_path}", err=True)
    try:
        check_default_model(settings.default_model, model_names(settings))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if not settings.models:
        _check_embedded(settings)
    app = create_app(settings)
    # In-flight requests get shutdown_timeout_s after SIGTERM: a hung client or upstream cannot hold it.
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )  # fmt: skip
