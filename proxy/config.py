"""The `proxy.yaml` schema, YAML loading and `${VAR}` interpolation.

Validation is pydantic's: every model forbids unknown keys, and every failure is
reported as `path: reason` (`routes[3].split: weights must be > 0`). Checks that
need the whole document (targets naming known providers, unique route names, a key
used by one team only) run after the schema and report paths the same way.

`${VAR}` (or `${VAR:-default}`) is replaced from the environment before validation.
A missing variable is not an empty string: the list item holding it is dropped, and a
provider using it is disabled with a reason that `switchyard check` and startup print.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from proxy.forwarding import refused_reason
from proxy.key_hash import hash_key
from proxy.prompts import prompt_problems, prompt_reference_problems

COMPLEXITY_LEVELS = ("simple", "medium", "complex")


class ConfigError(Exception):
    """A config that cannot be used; `problems` are `(path, reason)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {r}" if p else r for p, r in problems))

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"path": p, "reason": r} for p, r in self.problems]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


NonEmpty = Annotated[str, AfterValidator(_non_empty)]


def _redis_url(url: str) -> str:
    if not re.match(r"^(redis|rediss|unix)://", url):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return url


def _http_url(url: str) -> str:
    if not re.match(r"^https?://", url):
        raise ValueError("must start with http:// or https://")
    return url


RedisUrl = Annotated[str, AfterValidator(_redis_url)]


def _key_prefix(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", prefix):
        raise ValueError("1 to 64 letters, digits and _ . : - { } (for example \"sy:\" or \"staging:\")")
    return prefix


# what every Redis key of a section starts with: deployments sharing one Redis keep apart
KeyPrefix = Annotated[str, AfterValidator(_key_prefix)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_mb: float = Field(8, gt=0, le=1024)
    admin_keys: list[NonEmpty] = []
    watch: bool = True  # reload proxy.yaml when it changes on disk
    max_header_kb: float = Field(64, gt=0, le=1024)  # a larger request head gets 431
    header_timeout_s: float = Field(10, gt=0)  # a head not complete this long after its first byte: 408
    keepalive_timeout_s: float = Field(5, gt=0)  # an idle connection (or one that never speaks) is closed


class ProviderConfig(_Strict):
    type: Literal["openai", "anthropic", "azure", "mock"]
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = {}
    timeout_s: float = Field(600, gt=0)  # read timeout between bytes of the answer
    connect_timeout_s: float = Field(10, gt=0)
    max_connections: int = Field(200, ge=1)
    max_keepalive: int | None = Field(None, ge=0)  # idle connections kept; None: max_connections
    # the longest a request waits for a free connection when all max_connections are busy:
    # past it the gateway is saturated (503 gateway_busy), which is not the provider's failure
    pool_timeout_s: float = Field(10, gt=0)
    forward_headers: list[NonEmpty] = []  # request headers sent on beyond the default allow-list
    # mock only: time before the answer and between streamed chunks
    latency_ms: float = Field(0, ge=0)
    chunk_interval_ms: float = Field(0, ge=0)
    api_version: str | None = None  # azure only: the api-version query parameter
    # openai only: the server speaks Chat Completions but not the Responses API (vLLM, Ollama,
    # most routers): Responses requests are translated to chat for it
    chat_only: bool = False
    # egress through an HTTP proxy, "http://user:password@proxy.corp:3128"; "none" (or off,
    # false) goes direct whatever the environment says; unset (or null): HTTPS_PROXY,
    # HTTP_PROXY and NO_PROXY decide, read once when the provider's pool is made
    proxy: Annotated[str, BeforeValidator(_off_is_false)] | None = None
    # TLS to an https provider: a private CA's PEM bundle, trusted in addition to the system's
    # CAs (never instead); a client certificate for mTLS, its unencrypted key in client_key or
    # in the same file; verify_tls: false accepts any certificate (a config warning while set).
    # Files are read when the config loads: a missing or unparseable one fails the load
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = Field(None, validate_default=True)  # checked against client_cert even when unset
    verify_tls: bool = True

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, url: str | None) -> str | None:
        # parsed as the client will parse it (Proxy.from_url), with the scheme required here
        # (the environment's bare host:port is not accepted in a file); reasons never echo
        # the URL (it may hold a password)
        from urllib.parse import urlsplit

        from proxy.providers.http import Proxy

        if url is None or url.strip().lower() in ("none", "off", "direct"):
            return None if url is None else "none"
        if urlsplit(url.strip()).scheme.lower() != "http":
            raise ValueError("must be an http:// proxy URL (an https upstream is still TLS from end to end, "
                             "inside a CONNECT tunnel), or none to go direct")
        Proxy.from_url(url)  # ValueError with the reason
        return url.strip()

    @field_serializer("proxy", when_used="json")
    def _proxy_without_password(self, url: str | None) -> str | None:
        # the JSON form is what /admin/config shows: never the proxy's password
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url or "")
        if url is None or parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:<redacted>@{host}"))

    @field_validator("ca_bundle", "client_cert")
    @classmethod
    def _certificates_load(cls, path: str | None) -> str | None:
        import ssl

        if path is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
            except OSError as exc:
                raise ValueError(cls._unusable(path, exc, "has no PEM certificate in it")) from None
        return path

    @field_validator("client_key")
    @classmethod
    def _key_matches(cls, key: str | None, info: ValidationInfo) -> str | None:
        import ssl

        if "client_cert" not in info.data:  # client_cert itself failed: said already
            return key
        cert = info.data["client_cert"]
        if cert is None:
            if key is not None:
                raise ValueError("client_key needs client_cert")
            return key

        def encrypted() -> str:
            raise ValueError("is encrypted; give an unencrypted PEM key (the gateway cannot prompt for a password)")

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=encrypted)
        except ValueError as exc:
            raise ValueError(f"{key or cert} {exc}") from None
        except OSError as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                raise ValueError(f"{key} is not the key of client_cert {cert}") from None
            if key is None:
                raise ValueError(f"not set, and client_cert {cert} holds no private key: put the key in that "
                                 "file or name it in client_key") from None
            raise ValueError(cls._unusable(key, exc, "has no PEM private key in it")) from None
        return key

    @staticmethod
    def _unusable(path: str, exc: OSError, unparsed: str) -> str:
        if isinstance(exc, FileNotFoundError):
            return f"{path}: no such file"
        if isinstance(exc, IsADirectoryError):
            return f"{path}: a directory, not a file"
        if isinstance(exc, PermissionError):
            return f"{path}: not readable (permission denied)"
        if exc.strerror and not hasattr(exc, "reason"):  # any other OSError; ssl.SSLError has a reason
            return f"{path}: {exc.strerror}"
        return f"{path} {unparsed}"

    @model_validator(mode="after")
    def _check_type_fields(self) -> ProviderConfig:
        if self.type != "mock" and (self.latency_ms or self.chunk_interval_ms):
            raise ValueError("latency_ms and chunk_interval_ms apply to type: mock only")
        if self.type == "azure" and (not self.base_url or not self.api_version):
            raise ValueError("type: azure needs base_url (https://<resource>.openai.azure.com) and api_version")
        if self.type != "azure" and self.api_version is not None:
            raise ValueError("api_version applies to type: azure only")
        if self.type != "openai" and self.chat_only:
            raise ValueError("chat_only applies to type: openai only")
        if self.base_url is not None and not re.match(r"^https?://", self.base_url):
            raise ValueError("base_url must start with http:// or https://")
        tls = [name for name in ("ca_bundle", "client_cert", "client_key") if getattr(self, name) is not None]
        tls += [] if self.verify_tls else ["verify_tls"]
        if self.type == "mock" and (tls or self.proxy is not None):
            raise ValueError("proxy, ca_bundle, client_cert, client_key and verify_tls do not apply to type: mock")
        if tls and self.base_url is not None and self.base_url.startswith("http://"):
            raise ValueError(f"{', '.join(tls)}: TLS settings need an https:// base_url")
        for name in self.forward_headers:
            reason = refused_reason(name)
            if reason is not None:
                raise ValueError(f"forward_headers: {reason}")
        return self


def _off_is_false(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false; accept it as the word it was meant to be
    return "off" if value is False else value


class CacheConfig(_Strict):
    backend: Annotated[Literal["redis", "memory", "off"], BeforeValidator(_off_is_false)] = "off"
    url: RedisUrl = "redis://127.0.0.1:6379/0"
    ttl_s: int = Field(3600, ge=1)
    scope: Literal["team", "shared"] = "team"
    max_entries: int = Field(10_000, ge=1)  # memory backend, and the local fallback while Redis is down
    timeout_ms: float = Field(10, gt=0)  # every Redis call is cut off after this
    failures: int = Field(3, ge=1)  # consecutive Redis failures before it is skipped ...
    cooldown_s: float = Field(5, gt=0)  # ... for this long, then tried again
    key_prefix: KeyPrefix = "sy:"  # Redis keys are <prefix>c:<scope>:<target>:<hash>
    # an entry whose mean feedback score (POST /v1/feedback, 0..1) falls below min_feedback,
    # over at least min_votes votes, is invalidated for every replica; null: feedback never does
    min_feedback: float | None = Field(0.5, ge=0, le=1)
    min_votes: int = Field(1, ge=1, le=1000)



class ResponsesConfig(_Strict):
    """Where Responses API answers the gateway made itself (translated for providers that
    do not serve the Responses API) are kept, so a later request's previous_response_id
    and GET /v1/responses/{id} find them."""

    # auto: redis when cache.backend is redis
    store: Annotated[Literal["auto", "redis", "memory", "off"], BeforeValidator(_off_is_false)] = "auto"
    url: RedisUrl | None = None  # null: cache.url
    ttl_s: int = Field(30 * 86400, ge=1)  # 30 days, as OpenAI keeps stored responses
    max_entries: int = Field(10_000, ge=1)  # memory store, and its stand-in while Redis is down


class TelemetryConfig(_Strict):
    # OTLP/HTTP collector, e.g. http://otel-collector:4318; null: $OTEL_EXPORTER_OTLP_ENDPOINT
    # (or $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) if set, else no tracing at all
    otlp_endpoint: str | None = None
    service_name: str = "switchyard"  # $OTEL_SERVICE_NAME wins when set
    sample_ratio: float = Field(1.0, ge=0, le=1)  # of traces started here; a client's sampled flag wins
    capture_content: bool = False  # put prompt and completion text on spans
    access_log: bool = True  # one line per request on the switchyard.access logger
    # auto: text on a terminal, JSON otherwise; $SWITCHYARD_LOG_FORMAT overrides all three
    log_format: Literal["auto", "json", "text"] = "auto"

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://", url):
            raise ValueError("must start with http:// or https:// (OTLP over HTTP)")
        return url


class RouteCacheConfig(_Strict):
    ttl_s: int = Field(ge=1)


class PriceConfig(_Strict):
    input: float = Field(ge=0)  # USD per 1M input tokens
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)


class BudgetConfig(_Strict):
    daily_usd: float | None = Field(None, gt=0)
    monthly_usd: float | None = Field(None, gt=0)
    alerts: list[float] = [0.5, 0.75, 0.9]  # fractions of a budget; crossing 1.0 always alerts too
    webhook_url: HttpUrl | None = None  # overrides accounting.alert_webhook for this team

    @field_validator("alerts")
    @classmethod
    def _fractions(cls, alerts: list[float]) -> list[float]:
        if any(not 0 < a <= 1 for a in alerts):
            raise ValueError("alert thresholds are fractions of the budget, each in (0, 1]")
        return sorted(set(alerts))



class LimitsConfig(_Strict):
    rpm: int | None = Field(None, ge=1)  # requests per minute, for the whole team
    tpm: int | None = Field(None, ge=1)  # tokens (input + output) per minute
    user_rpm: int | None = Field(None, ge=1)  # the same per end user of the team
    user_tpm: int | None = Field(None, ge=1)


class TeamConfig(_Strict):
    keys: list[NonEmpty] = []
    default_model: NonEmpty | None = None
    models: list[NonEmpty] | None = None  # globs of requestable names; None = all
    budget: BudgetConfig | None = None
    limits: LimitsConfig | None = None


def _postgres_url(url: str) -> str:
    if not re.match(r"^postgres(ql)?://", url):
        raise ValueError("must start with postgresql:// (or postgres://)")
    return url


class LedgerConfig(_Strict):
    # SQLite file, relative to proxy.yaml's directory; "off" keeps no ledger (and budgets
    # then start from zero at each start)
    path: Annotated[str, BeforeValidator(_off_is_false)] = "switchyard.db"
    # PostgreSQL instead of the file: one ledger shared by every replica and worker
    url: Annotated[str, AfterValidator(_postgres_url)] | None = None
    retention_days: float | None = Field(None, gt=0)  # None: keep every row forever
    batch_size: int = Field(500, ge=1)  # rows per transaction
    flush_interval_s: float = Field(0.5, gt=0)  # the longest a finished request waits for its row
    max_pending: int = Field(1_000_000, ge=1000)  # rows held in memory while the store cannot be written

    @model_validator(mode="after")
    def _one_store(self) -> LedgerConfig:
        if self.url is not None and "path" in self.model_fields_set:
            raise ValueError("set ledger.path (a SQLite file, or off) or ledger.url (PostgreSQL), not both")
        return self


class AccountingConfig(_Strict):
    # where spend counters and rate limits live: redis (shared by replicas, local when it
    # is down) or memory (this process)
    backend: Annotated[Literal["redis", "memory"], BeforeValidator(_off_is_false)] = "memory"
    url: RedisUrl = "redis://127.0.0.1:6379/0"
    timeout_ms: float = Field(20, gt=0)
    sync_interval_s: float = Field(1.0, gt=0)  # how often other replicas' spend is read
    baseline_model: NonEmpty | None = None  # e.g. openai/gpt-4o: "what it would have cost"
    alert_webhook: HttpUrl | None = None  # JSON POST for every budget alert
    timezone: str = "UTC"  # where days and months begin
    key_prefix: KeyPrefix = "sy:"  # Redis keys are <prefix>spend:..., <prefix>rl:...



    @field_validator("timezone")
    @classmethod
    def _zone(cls, name: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r}") from None
        return name


class MatchConfig(_Strict):
    model: NonEmpty | list[NonEmpty] | None = None
    teams: list[NonEmpty] | None = None
    users: list[NonEmpty] | None = None
    exclude_users: list[NonEmpty] | None = None
    percent: float | None = Field(None, ge=0, le=100)
    after: datetime | None = None
    before: datetime | None = None
    stream: bool | None = None
    complexity: list[Literal["simple", "medium", "complex"]] | None = None  # from the prompt classifier
    prompts: list[NonEmpty] | None = None  # globs of registered prompt ids the request names

    @field_validator("after", "before")
    @classmethod
    def _timezone_required(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a timezone, e.g. 2026-12-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _window_ordered(self) -> MatchConfig:
        if self.after and self.before and self.after >= self.before:
            raise ValueError("after must be earlier than before")
        return self


Balance = Literal["weighted", "least_inflight", "lowest_latency"]


class CircuitConfig(_Strict):
    failures: int = Field(5, ge=1)  # consecutive failures that open a target's circuit
    cooldown_s: float = Field(30, gt=0)  # open this long, then one probe request (half-open)
    error_rate: float | None = Field(None, gt=0, le=1)  # also open above this failure share ...
    window_s: float = Field(60, gt=0)  # ... over this window ...
    min_requests: int = Field(20, ge=1)  # ... once it holds this many requests


RetryOn = Annotated[int, Field(ge=400, le=599)] | Literal["timeout", "connect"]


class ResilienceConfig(_Strict):
    retries: int = Field(2, ge=0)  # more attempts on the same target before its fallbacks
    backoff_ms: float = Field(200, ge=0)  # first retry's delay; doubles, with full jitter
    max_backoff_ms: float = Field(5000, ge=0)
    retry_on: list[RetryOn] = [429, 500, 502, 503, 504, 529, "timeout", "connect"]
    timeout_s: float = Field(600, gt=0)  # per request: every attempt must have started answering by then
    circuit: CircuitConfig = CircuitConfig()
    balance: Balance = "weighted"  # how a split (or a list of targets) picks


class VariantConfig(_Strict):
    to: NonEmpty | None = None  # absent (with a prompt): the routes after this one pick the target
    prompt: NonEmpty | None = None  # "id@version": the registered prompt version this variant renders
    weight: float = Field(1, gt=0)

    @model_validator(mode="after")
    def _names_something(self) -> VariantConfig:
        if self.to is None and self.prompt is None:
            raise ValueError("a variant needs a target (to), a prompt version (prompt) or both")
        return self


PromptStatus = Literal["draft", "testing", "active", "deprecated"]


class PromptMessageConfig(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: NonEmpty  # text; {{name}} placeholders are filled from the request's variables


class PromptVersionConfig(_Strict):
    status: PromptStatus | None = None  # absent: active if the prompt's `active` names it, else draft
    model: NonEmpty | None = None  # the model this version asks for (routed like a requested name)
    messages: list[PromptMessageConfig] = Field(min_length=1)
    description: str | None = None


class PromptReportConfig(_Strict):
    objective: Literal["cost", "latency", "feedback", "errors"] = "feedback"
    min_samples: int = Field(100, ge=2)
    alpha: float = Field(0.05, gt=0, lt=1)


class PromptConfig(_Strict):
    active: NonEmpty | None = None  # the version used when a request names none
    # the variables its versions may use: a list of names (all required), or a mapping of
    # name to default (null: required); absent, the versions' placeholders are the declaration
    variables: list[NonEmpty] | dict[str, str | None] | None = None
    versions: dict[str, PromptVersionConfig] = Field(min_length=1)
    report: PromptReportConfig = PromptReportConfig()  # what `switchyard prompts report` compares on


class ExperimentConfig(_Strict):
    name: NonEmpty | None = None  # defaults to the route's name; rows and reports use it
    variants: dict[str, VariantConfig | NonEmpty]  # name: target, or name: {to, weight}
    sticky: Literal["user", "team", "request"] = "user"  # who always sees the same variant
    objective: Literal["cost", "latency", "feedback", "errors"] = "cost"
    min_samples: int = Field(100, ge=2)  # per variant, before any verdict (guards against peeking)
    alpha: float = Field(0.05, gt=0, lt=1)
    promote_when_significant: bool = False  # once a winner is clear, send new traffic to it

    @field_validator("variants")
    @classmethod
    def _two_or_more(cls, variants: dict[str, Any]) -> dict[str, Any]:
        if len(variants) < 2:
            raise ValueError("an experiment needs at least two variants")
        return variants


class ComplexityConfig(_Strict):
    medium: float = Field(0.30, ge=0, le=1)  # score at which a prompt stops being simple
    complex: float = Field(0.60, ge=0, le=1)  # ... and becomes complex (both fitted on tests/data)
    weights: dict[str, float] = {}  # per feature, laid over the defaults (see README)

    @model_validator(mode="after")
    def _ordered(self) -> ComplexityConfig:
        if self.medium > self.complex:
            raise ValueError("medium must not be above complex")
        return self


class RouteConfig(_Strict):
    name: NonEmpty
    match: MatchConfig = MatchConfig()
    to: NonEmpty | list[NonEmpty] | None = None  # a list: equivalent targets, balanced
    split: dict[str, float] | None = None
    fallbacks: list[NonEmpty] = []
    cache: RouteCacheConfig | bool = True  # false (or off): never cache this route
    balance: Balance | None = None  # overrides resilience.balance for this route
    experiment: ExperimentConfig | None = None

    @field_validator("to")
    @classmethod
    def _targets_listed(cls, to: str | list[str] | None) -> str | list[str] | None:
        if isinstance(to, list) and not to:
            raise ValueError("needs at least one target")
        return to

    @field_validator("split")
    @classmethod
    def _weights_positive(cls, split: dict[str, float] | None) -> dict[str, float] | None:
        if split is not None:
            if not split:
                raise ValueError("needs at least one target")
            if any(w <= 0 for w in split.values()):
                raise ValueError("weights must be > 0")
        return split

    @model_validator(mode="after")
    def _one_action(self) -> RouteConfig:
        if sum(x is not None for x in (self.to, self.split, self.experiment)) != 1:
            raise ValueError("needs exactly one action: to, split or experiment")
        return self


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    cache: CacheConfig = CacheConfig()
    responses: ResponsesConfig = ResponsesConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    ledger: LedgerConfig = LedgerConfig()
    accounting: AccountingConfig = AccountingConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    complexity: ComplexityConfig = ComplexityConfig()
    providers: dict[str, ProviderConfig] = {}
    pricing: dict[str, PriceConfig] = {}
    teams: dict[str, TeamConfig] = {}
    prompts: dict[str, PromptConfig] = {}
    routes: list[RouteConfig] = []


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config plus what interpolation found missing."""

    config: Config
    disabled_providers: dict[str, str] = field(default_factory=dict)  # name -> reason
    warnings: tuple[str, ...] = ()


# ---------------------------------------------------------------- interpolation

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Missing:
    __slots__ = ("var",)

    def __init__(self, var: str) -> None:
        self.var = var


def interpolate(
    node: Any, env: dict[str, str], path: str = "", missing: list[tuple[str, str]] | None = None
) -> Any:
    """Replace `${VAR}` in strings; a value naming an unset variable becomes `_Missing`.

    Missing list items are dropped; missing mapping values stay as `_Missing` markers so
    the caller can decide what they disable. `missing` collects `(path, VAR)` pairs.
    """
    if missing is None:
        missing = []
    if isinstance(node, str):
        absent: list[str] = []

        def substitute(m: re.Match[str]) -> str:
            value = env.get(m.group(1))
            if value is None or value == "":
                if m.group(2) is not None:
                    return m.group(2)
                absent.append(m.group(1))
                return ""
            return value

        result = _VAR.sub(substitute, node)
        if absent:
            missing.append((path, absent[0]))
            return _Missing(absent[0])
        return result
    if isinstance(node, dict):
        return {k: interpolate(v, env, _join(path, k), missing) for k, v in node.items()}
    if isinstance(node, list):
        items = [interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(node)]
        return [v for v in items if not isinstance(v, _Missing)]
    return node


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _strip_missing(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_missing(v) for k, v in node.items() if not isinstance(v, _Missing)}
    return node


# ---------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of repeated keys; YAML forbids them, and a team or provider
    written twice would silently lose its first definition."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges; keys written beside it may override the merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"invalid YAML: {problem}")]) from None


EMPTY = "the file is empty (or only comments); an empty config is never applied"


def load_text(text: str, env: dict[str, str] | None = None, *, allow_empty: bool = True) -> LoadedConfig:
    """`allow_empty=False` for files: an empty one is most likely a write caught between
    truncate and write, never a policy (the server and `switchyard check` both refuse it)."""
    raw = parse_yaml(text)
    if raw is None:
        if not allow_empty:
            raise ConfigError([("", EMPTY)])
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the top level must be a mapping")])
    missing: list[tuple[str, str]] = []
    data = interpolate(raw, dict(os.environ) if env is None else env, "", missing)
    disabled: dict[str, str] = {}
    warnings: list[str] = []
    for path, var in missing:
        parts = path.split(".")
        if parts[0] == "providers" and len(parts) >= 3:
            disabled.setdefault(parts[1], f"{var} is not set ({path})")
        else:
            warnings.append(f"{path}: {var} is not set; ignored")
    data = _strip_missing_deep(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    problems = cross_check(config)
    if problems:
        raise ConfigError(problems)
    for name, reason in disabled.items():
        warnings.append(f"provider {name} disabled: {reason}")
    return LoadedConfig(config, disabled, tuple(warnings))


def load_file(path: str, env: dict[str, str] | None = None) -> LoadedConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read config: {exc.strerror}")]) from None
    return load_text(text, env, allow_empty=False)


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where one of a team's keys comes from, for `switchyard keys list` (never the key)."""

    team: str
    index: int
    stored: str | None  # what the key index is built from (sha256:<hex> or a plain key); None: unset
    origin: str


def key_sources(path: str, env: dict[str, str] | None = None) -> list[KeySource]:
    """Each team key as written in the file: a sha256: hash, an environment variable, or plain text."""
    with open(path, encoding="utf-8") as fh:
        raw = parse_yaml(fh.read())
    env = dict(os.environ) if env is None else env
    teams = raw.get("teams") if isinstance(raw, dict) else None
    out = []
    for team, spec in (teams or {}).items():
        keys = spec.get("keys") if isinstance(spec, dict) else None
        for i, written in enumerate(keys if isinstance(keys, list) else []):
            value = interpolate(str(written), env)
            stored = None if isinstance(value, _Missing) else value
            names = [m.group(1) for m in _VAR.finditer(str(written))]
            if names:
                origin = f"${{{names[0]}}}" + (" (unset: ignored)" if stored is None else "")
            elif str(written).startswith("sha256:"):
                origin = "sha256 in the file"
            else:
                origin = "plain text in the file (prefer sha256:, from `switchyard keys new`)"
            out.append(KeySource(str(team), i, stored, origin))
    return out


def _strip_missing_deep(node: Any) -> Any:
    node = _strip_missing(node)
    if isinstance(node, dict):
        return {k: _strip_missing_deep(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_strip_missing_deep(v) for v in node]
    return node


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Each of pydantic's errors as `(path, reason)`, the path under `prefix`."""
    problems = []
    for error in exc.errors():
        loc = _loc(error["loc"])
        problems.append((_join(prefix, loc) if loc else prefix, _reason(error)))
    return problems


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and not _is_union_tag(part):
            out = _join(out, part)
    return out


def _is_union_tag(part: str) -> bool:
    # pydantic names union members in locations (`str`, `list[str]`, `function-after[...]`,
    # `literal['timeout','connect']`, or a model's class name such as `RouteCacheConfig`)
    return (
        part in ("str", "list[str]", "float", "int", "bool")
        or part.startswith(("function-", "list[", "constrained-", "literal["))
        or part in {cls.__name__ for cls in _Strict.__subclasses__()}
    )


def _reason(error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required"
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


# ---------------------------------------------------------------- keys


def stored_key_hash(key: str) -> str:
    """The hash a key written in the config is indexed by: `sha256:<hex>` as written, a plain key hashed."""
    return key[7:].lower() if key.startswith("sha256:") else hash_key(key)


# ---------------------------------------------------------------- cross checks


def target_provider(target: str) -> str | None:
    """The provider part of a literal target, or None when it is a template."""
    head = target.split("/", 1)[0]
    return None if "{" in head else head


def cross_check(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    providers = config.providers
    seen_routes: dict[str, int] = {}
    seen_experiments: set[str] = set()
    for i, route in enumerate(config.routes):
        where = f"routes[{i}]"
        if route.name in seen_routes:
            problems.append(
                (f"{where}.name", f"duplicate route name {route.name!r} (also routes[{seen_routes[route.name]}])")
            )
        seen_routes.setdefault(route.name, i)
        if route.experiment is not None:
            experiment = route.experiment.name or route.name
            if experiment in seen_experiments:
                problems.append((f"{where}.experiment.name", f"duplicate experiment name {experiment!r}"))
            seen_experiments.add(experiment)
        targets: list[tuple[str, str]] = []
        if isinstance(route.to, str):
            targets.append((f"{where}.to", route.to))
        for j, target in enumerate(route.to if isinstance(route.to, list) else []):
            targets.append((f"{where}.to[{j}]", target))
        for target in route.split or {}:
            targets.append((f"{where}.split.{target}", target))
        for variant, spec in (route.experiment.variants.items() if route.experiment else ()):
            variant_target = spec if isinstance(spec, str) else spec.to
            if variant_target is not None:
                targets.append((f"{where}.experiment.variants.{variant}", variant_target))
            if not isinstance(spec, str) and spec.prompt is not None:
                problems.extend(prompt_reference_problems(f"{where}.experiment.variants.{variant}.prompt",
                                                          spec.prompt, config.prompts, route.match.prompts or ()))
        for j, target in enumerate(route.fallbacks):
            targets.append((f"{where}.fallbacks[{j}]", target))
        for path, target in targets:
            problems.extend(_check_target(path, target, providers))
            problems.extend(_check_placeholders(path, target, route.match.model))
        for team_name in route.match.teams or []:
            if team_name not in config.teams:
                problems.append((f"{where}.match.teams", f"unknown team {team_name!r}"))
        problems.extend(_prompt_route_problems(where, route, config))
    key_owner: dict[str, str] = {}
    for team_name, team in config.teams.items():
        for k, key in enumerate(team.keys):
            path = f"teams.{team_name}.keys[{k}]"
            if key.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", key):
                problems.append((path, "a sha256: key needs 64 hex digits"))
            # compare what the key index stores, so a plain key and its sha256: form collide
            normal = stored_key_hash(key)
            owner = key_owner.get(normal)
            if owner is not None and owner != team_name:
                problems.append((path, f"key also belongs to team {owner!r}"))
            elif owner == team_name:
                problems.append((path, "duplicate key"))
            key_owner[normal] = team_name
    problems.extend(prompt_problems(config.prompts))
    for k, key in enumerate(config.server.admin_keys):
        if key.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", key):
            problems.append((f"server.admin_keys[{k}]", "a sha256: key needs 64 hex digits"))
    return problems


def _prompt_route_problems(where: str, route: RouteConfig, config: Config) -> list[tuple[str, str]]:
    """A rule's prompt ids must exist."""
    problems = []
    for j, pattern in enumerate(route.match.prompts or []):
        if "*" not in pattern and "?" not in pattern and pattern not in config.prompts:
            problems.append((f"{where}.match.prompts[{j}]", f"unknown prompt {pattern!r}"))
    return problems


_PLACEHOLDER = re.compile(r"\{([^}]*)\}")


def _check_placeholders(path: str, target: str, model: str | list[str] | None) -> list[tuple[str, str]]:
    """`{N}` must name a wildcard every model pattern of the rule has; `{model}` always works."""
    patterns = [model] if isinstance(model, str) else (model or [])
    wildcards = min((p.count("*") + p.count("?") for p in patterns), default=0)
    for name in _PLACEHOLDER.findall(target):
        if name == "model":
            continue
        if not name.isdigit() or int(name) < 1:
            return [(path, f"unknown placeholder {{{name}}}; use {{model}} or {{1}}, {{2}}, ...")]
        if int(name) > wildcards:
            return [(path, f"{{{name}}} needs a wildcard in every match.model pattern ({wildcards} available)")]
    return []


def _check_target(path: str, target: str, providers: dict[str, ProviderConfig]) -> list[tuple[str, str]]:
    if target in ("{model}",):
        return []
    if "/" not in target:
        return [(path, f"target {target!r} must be provider/model")]
    provider = target_provider(target)
    if provider is not None and provider not in providers:
        known = ", ".join(sorted(providers)) or "none"
        return [(path, f"unknown provider {provider!r} (known: {known})")]
    model = target.split("/", 1)[1]
    if not model:
        return [(path, f"target {target!r} names no model")]
    return []
