"""The gateway's FastAPI app: `create_app(settings)`, with all state built in the lifespan.

Lifespan: open the request log (writer thread), register the configured models (or start the embedded
llama.cpp server when there are none), build the upstream clients, start the router
(gateway/routing/router.py: mined templates served by local models, with its local backend); on shutdown,
undo it all in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from gateway.accounting.ledger import Ledger
from gateway.accounting.pricing import Pricer
from gateway.accounting.savings import estimate_prompt_tokens
from gateway.api.auth import Authenticator, install_secret
from gateway.api.backends import ModelRegistry
from gateway.api.chat import chat_completions
from gateway.api.dashboard import router as dashboard_router
from gateway.api.errors import GatewayError, install_error_handlers
from gateway.api.health import health_response, openapi_document
from gateway.api.metrics import GatewayMetrics, InFlight
from gateway.api.scrub import Scrubber, env_secrets, install_log_filter, remove_log_filter
from gateway.environment import apply_defaults
from gateway.local.factory import make_local_backend
from gateway.local.tokens import TokenCounters
from gateway.log.writer import LogWriter
from gateway.routing.live_calibration import LiveCalibrator
from gateway.routing.router import Router
from gateway.settings import Settings, UpstreamModel
from gateway.state import Gateway
from gateway.upstream.client import Upstream
from gateway.upstream.embedded import EmbeddedServer

log = logging.getLogger("promptintern.gateway")

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
ROUTE_HEADER = b"x-promptintern-route"
OVERHEAD_HEADER = b"x-promptintern-overhead-ms"


def create_app(settings: Settings) -> FastAPI:
    """A gateway app for these settings."""
    apply_defaults()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            settings.ensure_home()
            secrets = _secrets(settings)
            scrubber = Scrubber(secrets)
            log_filter = install_log_filter(scrubber)
            stack.callback(remove_log_filter, log_filter)
            writer = LogWriter(
                settings.db_path,
                settings.log_batch_max,
                busy_timeout_ms=settings.log_busy_timeout_ms,
                max_field_bytes=settings.log_max_field_bytes,
                secrets=scrubber.secrets,
            )
            writer.start()
            stack.callback(writer.stop, settings.shutdown_timeout_s)
            registry = ModelRegistry(default_model=settings.default_model)
            for model in settings.models:
                registry.add(model)
            embedded = None
            if not settings.models:
                embedded = EmbeddedServer(settings, on_address_change=registry.add)
                await embedded.start()
                stack.push_async_callback(embedded.stop)
                registry.add(embedded.upstream_model())
            registry.check()
            upstream = Upstream(settings, secrets=secrets)
            stack.push_async_callback(upstream.aclose)
            router = None
            if settings.router_enabled:  # stopped before the writer: shadow runs still log their answers
                router = Router(
                    settings.db_path,
                    make_local_backend(settings),
                    settings.router_poll_s,
                    live=LiveCalibrator.from_settings(settings),
                )
                await router.start()
                stack.push_async_callback(router.stop)
                registry.extra_listers.append(router.listing)
            app.state.embedded = embedded
            token_counters = TokenCounters()
            key_secret = install_secret(settings.home)
            app.state.gateway = gateway = Gateway(
                settings=settings,
                registry=registry,
                upstream=upstream,
                writer=writer,
                metrics=GatewayMetrics(),
                ledger=Ledger(Pricer(settings), token_counters),
                auth=Authenticator(settings.api_keys, key_secret),
                token_counters=token_counters,
                router=router,
                scrubber=scrubber,
                metrics_auth=Authenticator([*settings.api_keys, *settings.metrics_api_keys], key_secret),
            )
            await _warm_token_counters(gateway)
            await asyncio.to_thread(gateway.ledger.pricer.warm, list(registry.models.values()))
            stack.callback(gc.unfreeze)
            if router is None:
                _settle_heap()
            else:  # litellm's token counter prices the counterfactual: import it now, not in a request
                models = list(registry.models.values())
                router.spawn(_settle_heap_after(asyncio.to_thread(_warm_accounting, models)))
            yield

    app = FastAPI(
        title="PromptIntern Gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings  # the dashboard reads the log through it
    app.include_router(dashboard_router)
    install_error_handlers(app)
    app.add_middleware(GatewayHeaders)
    app.add_middleware(InFlight)

    # Every OpenAI path also without its /v1 prefix: clients given a base_url without /v1 work too. A POST
    # to either chat path is served by GatewayHeaders' hot path; the routes give other methods their 405.
    async def _chat(request: Request) -> Response:
        return await chat_completions(request, request.app.state.gateway)

    async def _models(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        gateway.auth.authenticate(request.headers.get("authorization"))
        return JSONResponse({"object": "list", "data": gateway.registry.listing()})

    async def _model(request: Request, model_id: str) -> Response:
        gateway: Gateway = request.app.state.gateway
        gateway.auth.authenticate(request.headers.get("authorization"))
        for card in gateway.registry.listing():
            if card["id"] == model_id:
                return JSONResponse(card)
        message = f"The model '{model_id}' does not exist on this gateway."
        raise GatewayError(404, message, code="model_not_found", param="model")

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/chat/completions", _chat, methods=["POST"])
        app.add_api_route(f"{prefix}/models", _models, methods=["GET"])
        app.add_api_route(f"{prefix}/models/{{model_id:path}}", _model, methods=["GET"])

    @app.get("/health")
    async def _health(request: Request) -> Response:
        """Liveness (and whether the log can be written) for anyone; the details (models, embedded server,
        log) only for a key holder when keys are set, since they describe the machine (path, process id)."""
        gateway: Gateway = request.app.state.gateway
        authorization = request.headers.get("authorization")
        detailed = not (gateway.auth.enabled and authorization is None)
        if detailed:
            gateway.auth.authenticate(authorization)
        return await health_response(gateway, request.app.state.embedded, detailed)

    @app.get("/openapi.json", include_in_schema=False)
    async def _openapi(request: Request) -> Response:
        request.app.state.gateway.auth.authenticate(request.headers.get("authorization"))
        return JSONResponse(openapi_document(request.app))

    @app.get("/metrics")
    async def _metrics(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        gateway.metrics_auth.authenticate(request.headers.get("authorization"))  # gateway or metrics key
        return Response(gateway.metrics.exposition(), media_type=gateway.metrics.content_type)

    return app


async def _warm_token_counters(gateway: Gateway) -> None:
    """Load the tokenizers of llama.cpp backends now, not inside the first stream's latency."""
    for model in gateway.registry.models.values():
        if model.gguf_path is not None:
            counter = gateway.token_counters.for_model(model.gguf_path)
            await asyncio.to_thread(counter.count, [{"role": "user", "content": "warm-up"}], "")


def _settle_heap() -> None:
    """Hide what start-up allocated (modules, litellm's tables: millions of objects) from the collector.

    A full collection walks every tracked object; with those it took ~150 ms here, a stall of every request
    in flight, and it ran every second or so under load (the p99 tail at 32 concurrent clients). Frozen
    objects are never scanned again, so a full collection only walks what requests allocate.
    """
    gc.collect()
    gc.freeze()


async def _settle_heap_after(warm_up: Awaitable[None]) -> None:
    try:
        await warm_up
    finally:
        _settle_heap()


def _warm_accounting(models: list[UpstreamModel]) -> None:
    for model in models:
        if model.gguf_path is None:
            estimate_prompt_tokens(model.litellm_model, [{"role": "user", "content": "warm-up"}])


def _secrets(settings: Settings) -> list[str]:
    """Every secret the gateway knows: never in a response, a log row or a log line (gateway/api/scrub.py)."""
    keys = [key.get_secret_value() for key in settings.api_keys]
    keys += [m.api_key.get_secret_value() for m in settings.models if m.api_key is not None]
    if settings.local_api_key is not None:
        keys.append(settings.local_api_key.get_secret_value())
    keys.append(install_secret(settings.home).hex())
    return keys + env_secrets()


class GatewayHeaders:
    """Pure ASGI middleware, the one place every response passes: the request's start time, the
    route/overhead headers on every response (errors included), every body through the scrubber
    (gateway/api/scrub.py), and a JSON 500 instead of a traceback. Streams watch their own client
    (gateway/api/streaming.py: RelayResponse)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["promptintern.started"] = started
        gateway: Gateway | None = getattr(scope["app"].state, "gateway", None) if "app" in scope else None
        scrubber = gateway.scrubber if gateway is not None else _NO_SECRETS
        response_started = False
        held: dict | None = None  # the start message, sent with the first body (its length may change)
        is_error = False

        async def send_with_headers(message: dict) -> None:
            nonlocal response_started, held, is_error
            if message["type"] == "http.response.start":
                response_started = True
                is_error = message["status"] >= 400
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                if ROUTE_HEADER not in names:  # answered by the gateway itself: all of it is overhead
                    headers.append((ROUTE_HEADER, b"none"))
                if OVERHEAD_HEADER not in names:
                    headers.append(
                        (OVERHEAD_HEADER, f"{(time.perf_counter() - started) * 1000:.3f}".encode())
                    )
                held = {**message, "headers": headers}
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body = message.get("body", b"")
            cleaned = scrubber.outgoing(body, error=is_error) if body else body
            if held is not None:
                start, held = held, None
                if cleaned is not body and not message.get("more_body"):
                    start["headers"] = _with_length(start["headers"], len(cleaned))
                await send(start)
            await send({**message, "body": cleaned} if cleaned is not body else message)

        try:
            if scope["method"] == "POST" and scope["path"] in CHAT_PATHS:
                # The hot path skips FastAPI's router, exception and dependency layers, measured at a
                # fifth of the gateway's CPU per request; chat_completions answers every error itself.
                request = Request(scope, receive)
                response = await chat_completions(request, request.app.state.gateway)
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            log.error("unexpected %s on %s %s", type(exc).__name__, scope.get("method"), scope.get("path"))
            if response_started:
                raise
            response = GatewayError(500, "Internal gateway error.", code="internal_error").response()
            await response(scope, receive, send_with_headers)


_NO_SECRETS = Scrubber()


def _with_length(headers: list, length: int) -> list:
    return [
        (name, str(length).encode() if name.lower() == b"content-length" else value)
        for name, value in headers
    ]
