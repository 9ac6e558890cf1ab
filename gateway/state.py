"""The gateway's state: everything a request needs, built once in the app's lifespan (never a global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.accounting.ledger import Ledger
from gateway.api.auth import Authenticator
from gateway.api.backends import ModelRegistry
from gateway.api.metrics import GatewayMetrics
from gateway.api.scrub import Scrubber
from gateway.local.tokens import TokenCounters
from gateway.log.writer import LogWriter
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.upstream.client import Upstream


@dataclass
class Gateway:
    settings: Settings
    registry: ModelRegistry
    upstream: Upstream
    writer: LogWriter
    metrics: GatewayMetrics
    ledger: Ledger
    auth: Authenticator
    token_counters: TokenCounters = field(default_factory=TokenCounters)
    router: Router | None = None  # None: routing disabled, every request goes upstream
    scrubber: Scrubber = field(default_factory=Scrubber)  # what leaves the gateway carries no secret
    metrics_auth: Authenticator = field(default_factory=lambda: Authenticator([]))  # api + metrics keys
