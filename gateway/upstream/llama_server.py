"""`python -m gateway.upstream.llama_server ARGS`: llama-cpp-python's OpenAI server (same arguments), with
invalid requests answered 400.

Its own error handler answers every exception 500, a request that fails its validation (a message without
content, a `response_format` it does not know) included, with a traceback and the server's file paths in
the message. A 500 tells clients and the gateway to retry, so one bad request became nine calls. Here a
validation failure is a 400 `invalid_request_error` naming the field, which the gateway passes through.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from llama_cpp.server import errors
from llama_cpp.server.__main__ import main
from pydantic import ValidationError

_answer_other_errors = errors.RouteErrorHandler.error_message_wrapper


def validation_error_response(error: RequestValidationError | ValidationError) -> tuple[int, dict[str, Any]]:
    """400 and an OpenAI error naming the first offending field (a missing one first: for a union of message
    types pydantic reports every member, and "missing content" says more than "role should be 'system'")."""
    found = list(error.errors())
    first = min(found, key=lambda e: e.get("type") != "missing") if found else {}
    # Union members appear in the location as class names (ChatCompletionRequestUserMessage): drop them.
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not str(p)[:1].isupper())
    message = first.get("msg", "invalid request")
    return 400, {
        "message": f"Invalid value for '{where}': {message}" if where else f"Invalid request: {message}",
        "type": "invalid_request_error",
        "param": where or None,
        "code": None,
    }


def _error_message_wrapper(self: Any, error: Exception, body: Any = None) -> tuple[int, Any]:
    if isinstance(error, RequestValidationError | ValidationError):
        return validation_error_response(error)
    return _answer_other_errors(self, error, body)


errors.RouteErrorHandler.error_message_wrapper = _error_message_wrapper  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
