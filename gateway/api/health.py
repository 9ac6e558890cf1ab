"""`GET /health` and `GET /openapi.json`.

Health is the log's real state, not a constant: the writer thread must be running and the database must
take the write lock now (another process may hold it); otherwise it is a 503, because a request now would
be answered but not recorded. The OpenAPI document describes the chat endpoint's body, so schema fuzzers
(schemathesis) can be pointed at a running gateway; it is behind the gateway keys when keys are set.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from gateway.api.schemas import ChatCompletionRequest
from gateway.state import Gateway


async def health_response(gateway: Gateway, embedded: Any, detailed: bool = True) -> JSONResponse:
    settings = gateway.settings
    log_state = await asyncio.to_thread(gateway.writer.health, commit_timeout_s=settings.log_commit_timeout_s)
    writable = log_state.pop("writable")
    status = "ok" if writable else "log_unavailable"
    if not detailed:
        return JSONResponse({"status": status}, status_code=200 if writable else 503)
    body = {
        "status": status,
        "models": sorted(gateway.registry.models),
        "embedded": None if embedded is None else embedded.status(),
        "log": {"path": str(settings.db_path), "writable": writable, **log_state},
    }
    if gateway.router is not None:
        body["local"] = gateway.router.backend.stats()
    return JSONResponse(body, status_code=200 if writable else 503)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the chat request's schema as the body of the chat endpoint."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version="1", routes=app.routes)
    request_schema = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["ChatCompletionRequest"] = request_schema
    schema_ref = {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
    for path in ("/v1/chat/completions", "/chat/completions"):
        if path in document["paths"]:
            document["paths"][path]["post"]["requestBody"] = {
                "required": True,
                "content": {"application/json": schema_ref},
            }
    app.openapi_schema = document
    return document
