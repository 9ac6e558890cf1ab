"""The model registry: which upstream model answers the model name a client asked for.

- a configured model's `name` is served by that model;
- any other name falls back to `settings.default_model` when it is set, and is a 404 `model_not_found`
  when it is not. In the embedded default (no models configured) the only name is the embedded model's
  (`settings.embedded_model_name`); set `default_model` to it to accept every name offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.api.errors import GatewayError
from gateway.api.schemas import model_card
from gateway.settings import Settings, UpstreamModel


@dataclass
class ModelRegistry:
    models: dict[str, UpstreamModel] = field(default_factory=dict)
    default_model: str | None = None
    # Extra `GET /v1/models` entries (e.g. internalized models, added by the router later).
    extra_listers: list[Callable[[], list[dict[str, Any]]]] = field(default_factory=list)

    def add(self, model: UpstreamModel) -> None:
        self.models[model.name] = model

    def check(self) -> None:
        """Fail at start, not on the first request, when `default_model` names nothing."""
        check_default_model(self.default_model, list(self.models))

    def resolve(self, name: str) -> UpstreamModel:
        model = self.models.get(name)
        if model is not None:
            return model
        if self.default_model is not None:
            return self.models[self.default_model]
        known = ", ".join(sorted(self.models)) or "none"
        raise GatewayError(
            404,
            f"The model '{name}' does not exist on this gateway. Available: {known}.",
            code="model_not_found",
            param="model",
        )

    def listing(self) -> list[dict[str, Any]]:
        cards = [model_card(name, "promptintern-upstream") for name in self.models]
        for lister in self.extra_listers:
            cards.extend(lister())
        return cards


def check_default_model(default_model: str | None, names: list[str]) -> None:
    if default_model is not None and default_model not in names:
        known = ", ".join(sorted(names)) or "none"
        raise ValueError(f"default_model {default_model!r} is not a configured model (known: {known})")


def model_names(settings: Settings) -> list[str]:
    """The client-facing model names these settings serve (the embedded model's when none is configured)."""
    return [m.name for m in settings.models] or [settings.embedded_model_name]
