"""The gateway's state: everything a request needs, built once in the app's lifespan (never a global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import Authenticator
from gateway.backends import ChooseBackend, ModelRegistry
from gateway.local_tokens import TokenCounters
from gateway.log_writer import LogWriter
from gateway.metrics import GatewayMetrics
from gateway.pricing import Pricer
from gateway.router import Router
from gateway.settings import Settings
from gateway.upstream import Upstream


@dataclass
class Gateway:
    settings: Settings
    registry: ModelRegistry
    upstream: Upstream
    writer: LogWriter
    metrics: GatewayMetrics
    pricer: Pricer
    auth: Authenticator
    choose_backend: ChooseBackend
    token_counters: TokenCounters = field(default_factory=TokenCounters)
    router: Router | None = None  # None: routing disabled, every request goes upstream
