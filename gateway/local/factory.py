"""Which local backend serves internalized models: chosen by the settings, imported only when chosen."""

from __future__ import annotations

from gateway.local.backend import LocalBackend
from gateway.settings import Settings


def make_local_backend(settings: Settings) -> LocalBackend:
    """The backend the settings name: supervised llama.cpp servers (`llama_cpp_server`, the default),
    in-process llama.cpp (`llama_cpp`) or an HTTP server (`remote`)."""
    if settings.local_backend == "llama_cpp_server":
        from gateway.local.children import LlamaServerPool

        return LlamaServerPool.from_settings(settings)
    if settings.local_backend == "remote":
        from gateway.local.remote import RemoteLocalBackend

        return RemoteLocalBackend.from_settings(settings)
    from gateway.local.pool import LlamaPool

    return LlamaPool.from_settings(settings)
