"""Compiling a validated config into the immutable `Snapshot`, and the holder that swaps it.

A request reads `holder.current` once and uses that snapshot to the end, so a reload
never changes the rules under a request in flight. Compilation either succeeds whole
or raises `ConfigError`; a failed reload leaves the serving snapshot untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from proxy.accounting.pricing import Price, PriceTable, load_prices, pricing_source
from proxy.config import (
    Config,
    ConfigError,
    LoadedConfig,
    ProviderConfig,
    RouteCacheConfig,
    RouteConfig,
    load_file,
    load_text,
    stored_key_hash,
)
from proxy.forwarding import FORWARDED, allowed_names
from proxy.key_hash import hash_key
from proxy.prompts import EMPTY, Registry, compile_prompts

# ---------------------------------------------------------------- globs


@dataclass(frozen=True, slots=True)
class Glob:
    """A model-name pattern: `*` matches any run of characters, `?` one character.

    The text each wildcard matched is available as `{1}`, `{2}`, ... in targets.
    """

    pattern: str
    regex: re.Pattern[str]
    literal: bool

    @classmethod
    def compile(cls, pattern: str) -> Glob:
        parts = []
        for ch in pattern:
            if ch == "*":
                parts.append("(.*)")
            elif ch == "?":
                parts.append("(.)")
            else:
                parts.append(re.escape(ch))
        literal = "*" not in pattern and "?" not in pattern
        return cls(pattern, re.compile("".join(parts) + r"\Z", re.DOTALL), literal)

    def match(self, name: str) -> tuple[str, ...] | None:
        if self.literal:
            return () if name == self.pattern else None
        m = self.regex.match(name)
        return m.groups() if m else None


def any_glob(globs: tuple[Glob, ...], name: str) -> bool:
    return any(g.match(name) is not None for g in globs)


# ---------------------------------------------------------------- compiled pieces


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    default_model: str | None
    models: tuple[Glob, ...] | None  # None: every name is allowed
    # the team's BudgetConfig and LimitsConfig (or None), read here on the request path:
    # compiled, an attribute of the pydantic config is a generic lookup, ~370 instructions
    budget: Any = None
    limits: Any = None

    def allows(self, model: str) -> bool:
        return self.models is None or any_glob(self.models, model)


@dataclass(frozen=True, slots=True)
class Match:
    models: tuple[Glob, ...] | None
    teams: frozenset[str] | None
    users: frozenset[str] | None
    exclude_users: frozenset[str] | None
    percent: float | None
    after: datetime | None
    before: datetime | None
    stream: bool | None
    complexity: frozenset[str] | None = None  # prompt classifier levels
    prompts: tuple[Glob, ...] | None = None  # registered prompt ids


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    name: str
    match: Match
    to: str | None  # a target template
    split: tuple[tuple[str, float], ...] | None  # (target template, weight)
    fallbacks: tuple[str, ...]
    cache_enabled: bool = True
    cache_ttl_s: int | None = None  # None: the cache section's ttl_s
    balance: str = "weighted"  # weighted | least_inflight | lowest_latency
    experiment: Experiment | None = None

    def targets(self) -> tuple[str, ...]:
        if self.experiment is not None:
            return tuple(t for _, t, _ in self.experiment.variants if t is not None)
        if self.to is not None:
            return (self.to,)
        return tuple(t for t, _ in self.split or ())


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    # (variant, target template, weight); no target: the routes after the experiment's pick it
    variants: tuple[tuple[str, str | None, float], ...]
    sticky: str  # user | team | request
    objective: str  # cost | latency | feedback | errors
    min_samples: int
    alpha: float
    promote: bool
    prompts: Mapping[str, str] = field(default_factory=dict)  # variant -> "id@version" it renders

    def target_of(self, variant: str) -> str | None:
        for name, target, _ in self.variants:
            if name == variant:
                return target
        return None

    def has(self, variant: str) -> bool:
        return any(name == variant for name, _, _ in self.variants)



@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What it takes to build a provider adapter; equal specs share one adapter."""

    name: str
    type: str
    base_url: str | None
    api_key: str | None
    headers: tuple[tuple[str, str], ...]
    timeout_s: float
    connect_timeout_s: float
    max_connections: int
    max_keepalive: int
    latency_ms: float
    chunk_interval_ms: float
    api_version: str | None = None
    pool_timeout_s: float = 10.0
    forwarded: frozenset[str] = FORWARDED  # request header names this provider gets
    apis: frozenset[str] = frozenset({"chat/completions", "embeddings"})  # the endpoints it serves natively
    # egress: None: the environment's proxy (HTTPS_PROXY, NO_PROXY...); "none": direct; else the proxy's URL
    proxy: str | None = None
    ca_bundle: str | None = None  # TLS: trusted beside the system's CAs
    client_cert: str | None = None  # mTLS, the key in client_key or in the same file
    client_key: str | None = None
    verify_tls: bool = True
    # a digest of those files' contents: a renewed certificate at the same path makes the spec
    # (so the adapter and its TLS context) new on the next reload, like any other change
    tls_files: str = ""


MAX_REMEMBERED_KEYS = 10_000  # matched keys kept per snapshot (Snapshot.team_for_key)


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int
    source: str
    digest: str
    loaded_at: float
    config: Config
    teams: Mapping[str, Team]
    key_index: Mapping[str, str]  # sha256 hex of a key -> team name
    admin_key_hashes: frozenset[str]
    routes: tuple[Route, ...]
    providers: Mapping[str, ProviderSpec]  # enabled providers only
    disabled_providers: Mapping[str, str]  # name -> reason
    max_body_bytes: int
    prices: PriceTable
    warnings: tuple[str, ...] = ()
    # provider/model names written literally in the config (targets, fallbacks, prices):
    # the only upstream model names used as metric labels, so their number is bounded
    known_targets: frozenset[str] = frozenset()
    uses_complexity: bool = False  # some route matches on it: classify each prompt
    complexity: Any = None  # complexity.ComplexitySettings when used
    prompts: Registry = field(default_factory=lambda: EMPTY)  # the prompt registry (proxy/prompts.py)
    # no route looks at the user, the time, a percent bucket, the prompt's complexity or an
    # experiment: a decision depends only on (model, team, stream, prompt) and may be remembered
    routing_static: bool = False
    decisions: dict[Any, Any] = field(default_factory=dict, compare=False)  # routing.py's memo
    model_routes: dict[str, Any] = field(default_factory=dict, compare=False)  # name -> the rules it can match
    # a key that matched -> its team: the same few keys on every request, hashed once per
    # snapshot (a reload starts afresh); keys that match nothing are hashed every time
    key_teams: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    # what accounting reads per request, as plain fields (see Team.budget)
    team_index: dict[str, Team] = field(default_factory=dict, compare=False, repr=False)  # `teams` as a dict
    baseline_model: str | None = None  # accounting.baseline_model
    resilience: Any = None  # config.resilience (one lookup less for each of its reads)
    timezone: str = "UTC"  # accounting.timezone

    def team_for_key(self, key: str) -> Team | None:
        name = self.key_teams.get(key)
        if name is None:
            name = self.key_index.get(hash_key(key))
            if name is None:
                return None
            if len(self.key_teams) >= MAX_REMEMBERED_KEYS:
                self.key_teams.clear()
            self.key_teams[key] = name
        return self.teams[name]

    def is_admin_key(self, key: str) -> bool:
        return hash_key(key) in self.admin_key_hashes

    def model_names(self, team: Team) -> list[str]:
        """Concrete model names this team may request (route names and aliases)."""
        names = set()
        for route in self.routes:
            if route.match.teams is not None and team.name not in route.match.teams:
                continue
            for g in route.match.models or ():
                if g.literal and team.allows(g.pattern):
                    names.add(g.pattern)
        for g in team.models or ():
            if g.literal:
                names.add(g.pattern)
        return sorted(names)

    def model_patterns(self, team: Team) -> list[str]:
        """Wildcard names this team may request (shown in 404 messages)."""
        patterns = set()
        source = team.models if team.models is not None else ()
        for g in source:
            if not g.literal:
                patterns.add(g.pattern)
        if team.models is None:
            for route in self.routes:
                if route.match.teams is not None and team.name not in route.match.teams:
                    continue
                for g in route.match.models or ():
                    if not g.literal:
                        patterns.add(g.pattern)
        return sorted(patterns)


# ---------------------------------------------------------------- compile


def compile_snapshot(loaded: LoadedConfig, *, source: str, digest: str, generation: int) -> Snapshot:
    config = loaded.config
    teams = {
        name: Team(
            name=name,
            default_model=t.default_model,
            models=None if t.models is None else tuple(Glob.compile(m) for m in t.models),
            budget=t.budget,
            limits=t.limits,
        )
        for name, t in config.teams.items()
    }
    key_index = {stored_key_hash(k): name for name, t in config.teams.items() for k in t.keys}
    admin = frozenset(stored_key_hash(k) for k in config.server.admin_keys)
    routes = tuple(_compile_route(i, r, config.resilience.balance) for i, r in enumerate(config.routes))
    providers = {
        name: _provider_spec(name, p)
        for name, p in config.providers.items()
        if name not in loaded.disabled_providers
    }
    prices = _price_table(config)
    warnings = list(loaded.warnings)
    for name, team in config.teams.items():
        if not team.keys:
            warnings.append(f"team {name} has no usable key")
    for name, spec in providers.items():
        if not spec.verify_tls:
            warnings.append(f"provider {name} has verify_tls: false: its certificate is not checked, so anyone on "
                            "the network path can read and change its traffic (trust its CA with ca_bundle instead)")
    return Snapshot(
        generation=generation,
        source=source,
        digest=digest,
        loaded_at=time.time(),
        config=config,
        teams=MappingProxyType(teams),
        team_index=teams,
        baseline_model=config.accounting.baseline_model,
        resilience=config.resilience,
        timezone=config.accounting.timezone,
        key_index=MappingProxyType(key_index),
        admin_key_hashes=admin,
        routes=routes,
        providers=MappingProxyType(providers),
        disabled_providers=MappingProxyType(dict(loaded.disabled_providers)),
        max_body_bytes=int(config.server.max_body_mb * 1024 * 1024),
        prices=prices,
        warnings=tuple(warnings),
        known_targets=_known_targets(routes, prices),
        uses_complexity=any(r.match.complexity is not None for r in routes),
        complexity=_complexity_settings(config) if _wants_complexity(config) else None,
        prompts=compile_prompts(config.prompts),
        routing_static=all(_static_route(r) for r in routes),
    )


def _static_route(route: Route) -> bool:
    m = route.match
    return (route.experiment is None and m.users is None and m.exclude_users is None and m.percent is None
            and m.after is None and m.before is None and m.complexity is None)


def _compile_route(index: int, r: RouteConfig, balance: str = "weighted") -> Route:
    m = r.match
    models = m.model if isinstance(m.model, list) else ([m.model] if m.model else None)
    match = Match(
        models=None if models is None else tuple(Glob.compile(x) for x in models),
        teams=None if m.teams is None else frozenset(m.teams),
        users=None if m.users is None else frozenset(m.users),
        exclude_users=None if m.exclude_users is None else frozenset(m.exclude_users),
        percent=m.percent,
        after=m.after,
        before=m.before,
        stream=m.stream,
        complexity=None if m.complexity is None else frozenset(m.complexity),
        prompts=None if m.prompts is None else tuple(Glob.compile(x) for x in m.prompts),
    )
    to: str | None
    split = None if r.split is None else tuple(r.split.items())
    if isinstance(r.to, list):  # equivalent targets: one is an alias, several an even split balanced like one
        to = r.to[0] if len(r.to) == 1 else None
        split = None if len(r.to) == 1 else tuple((t, 1.0) for t in r.to)
    else:
        to = r.to
    enabled = r.cache is not False
    ttl = r.cache.ttl_s if isinstance(r.cache, RouteCacheConfig) else None
    experiment = None
    if r.experiment is not None:
        e = r.experiment
        variants = tuple(
            (name, spec, 1.0) if isinstance(spec, str) else (name, spec.to, spec.weight)
            for name, spec in e.variants.items()
        )
        prompts = {name: spec.prompt for name, spec in e.variants.items()
                   if not isinstance(spec, str) and spec.prompt is not None}
        experiment = Experiment(e.name or r.name, variants, e.sticky, e.objective, e.min_samples, e.alpha,
                                e.promote_when_significant, MappingProxyType(prompts))
        if prompts and match.prompts is None:
            # variants that render versions of named prompts: the rule is for requests naming those
            named = sorted({ref.rpartition("@")[0] for ref in prompts.values()})
            match = dataclasses.replace(match, prompts=tuple(Glob.compile(pid) for pid in named))
    return Route(index, r.name, match, to, split, tuple(r.fallbacks), enabled, ttl, r.balance or balance,
                 experiment)


def _wants_complexity(config: Config) -> bool:
    return bool(config.complexity.weights) or any(r.match.complexity for r in config.routes)


def _complexity_settings(config: Config) -> Any:
    from proxy.complexity import DEFAULT_WEIGHTS, ComplexitySettings

    unknown = sorted(set(config.complexity.weights) - set(DEFAULT_WEIGHTS))
    if unknown:
        raise ConfigError([(f"complexity.weights.{name}", f"unknown feature; known: {', '.join(DEFAULT_WEIGHTS)}")
                           for name in unknown])
    return ComplexitySettings(
        weights=MappingProxyType({**DEFAULT_WEIGHTS, **config.complexity.weights}),
        medium=config.complexity.medium,
        complex=config.complexity.complex,
    )


def _known_targets(routes: tuple[Route, ...], prices: PriceTable) -> frozenset[str]:
    literal = {t for r in routes for t in (*r.targets(), *r.fallbacks) if "{" not in t}
    return frozenset(literal | set(prices.names()))


def _price_table(config: Config) -> PriceTable:
    prices = load_prices(pricing_source())
    prices.update({name: Price(p.input, p.output, p.cached_input) for name, p in config.pricing.items()})
    return PriceTable(prices)


DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


def _provider_spec(name: str, p: ProviderConfig) -> ProviderSpec:
    base_url = p.base_url
    if base_url is None and p.type in DEFAULT_BASE_URLS:
        base_url = DEFAULT_BASE_URLS[p.type]
    return ProviderSpec(
        name=name,
        type=p.type,
        base_url=base_url.rstrip("/") if base_url else None,
        api_key=p.api_key,
        headers=tuple(sorted(p.headers.items())),
        timeout_s=p.timeout_s,
        connect_timeout_s=p.connect_timeout_s,
        max_connections=p.max_connections,
        # under bursts every connection in use comes back at once: keep them all by default
        max_keepalive=p.max_connections if p.max_keepalive is None else p.max_keepalive,
        latency_ms=p.latency_ms,
        chunk_interval_ms=p.chunk_interval_ms,
        api_version=p.api_version,
        pool_timeout_s=p.pool_timeout_s,
        forwarded=allowed_names(p.forward_headers),
        apis=provider_apis(p.type, p.chat_only),
        proxy=p.proxy,
        ca_bundle=p.ca_bundle,
        client_cert=p.client_cert,
        client_key=p.client_key,
        verify_tls=p.verify_tls,
        tls_files=_files_digest(p.ca_bundle, p.client_cert, p.client_key),
    )


def _files_digest(*paths: str | None) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path is not None:
            try:
                with open(path, "rb") as fh:
                    digest.update(fh.read())
            except OSError:  # gone since validation: building the adapter's TLS context will say so
                pass
    return digest.hexdigest()[:16] if any(paths) else ""


# what each provider type serves natively; a request for anything else is translated (or refused)
OPENAI_APIS = frozenset({"chat/completions", "embeddings", "completions", "responses"})
APIS = {
    "openai": OPENAI_APIS,
    "azure": frozenset({"chat/completions", "embeddings", "completions"}),
    "mock": frozenset({"chat/completions", "embeddings"}),
    "anthropic": frozenset({"messages", "messages/count_tokens"}),
}


def provider_apis(provider_type: str, chat_only: bool = False) -> frozenset[str]:
    if provider_type == "openai" and chat_only:
        return OPENAI_APIS - {"responses"}
    return APIS[provider_type]


def snapshot_from_text(text: str, *, source: str = "<text>", generation: int = 1,
                       env: dict[str, str] | None = None) -> Snapshot:
    loaded = load_text(text, env)
    return compile_snapshot(loaded, source=source, digest=_digest(text.encode()), generation=generation)


def snapshot_from_file(path: str, *, generation: int = 1, env: dict[str, str] | None = None) -> Snapshot:
    """The policy file compiled exactly as the server compiles it (`switchyard check` and
    the server must agree on what is valid), with the same digest."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    return _compile_bytes(data, path, generation, env)


def _compile_bytes(data: bytes, path: str, generation: int, env: dict[str, str] | None) -> Snapshot:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([("", "config is not UTF-8 text")]) from None
    loaded = load_text(text, env, allow_empty=False)
    return compile_snapshot(loaded, source=path, digest=_digest(data), generation=generation)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------- holder


def drops_everything(serving: Snapshot, new: Snapshot) -> list[tuple[str, str]]:
    """Problems when `new` would leave no route or no team where `serving` has some."""
    problems = []
    hint = "kept the serving policy (a write caught half-way?); POST /admin/reload?force=true applies it anyway"
    if serving.routes and not new.routes:
        problems.append(("routes", f"the file has no routes: it would drop all {len(serving.routes)} routes; {hint}"))
    if serving.teams and not new.teams:
        problems.append(("teams", f"the file has no teams: it would drop all {len(serving.teams)} teams; {hint}"))
    return problems


@dataclass(frozen=True, slots=True)
class ReloadFailure:
    at: float
    digest: str
    problems: tuple[tuple[str, str], ...]


class SnapshotHolder:
    """Owns the serving snapshot; `load()` builds a new one and swaps it in if it compiles.

    `listeners` are called with each new snapshot after the swap (the provider pool
    uses this to build clients for new providers and retire unused ones).
    """

    def __init__(self, path: str, env: dict[str, str] | None = None) -> None:
        self.path = path
        self._env = env
        self._current: Snapshot | None = None
        self.last_failure: ReloadFailure | None = None
        self.listeners: list[Callable[[Snapshot], None]] = []  # called with each snapshot swapped in
        self.observers: list[Callable[[str], None]] = []  # called with each load's result: ok, unchanged or error
        self.reloads = {"ok": 0, "error": 0, "unchanged": 0}

    @property
    def current(self) -> Snapshot:
        assert self._current is not None, "no config loaded"
        return self._current

    def load(self, *, force: bool = False, allow_drop: bool = False) -> str:
        """Read the file and swap in its snapshot. Returns ok, unchanged or error.

        `force` reloads even an unchanged file; `allow_drop` applies a file that would drop
        every route or every team the serving policy has (refused otherwise: most likely
        a write caught half-way)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return self._fail("", [("", f"cannot read {self.path}: {exc.strerror}")])
        digest = _digest(data)
        if not force and self._current is not None and digest == self._current.digest:
            self.last_failure = None  # the file is back to what is serving: nothing is wrong now
            return self._count("unchanged")
        generation = 1 if self._current is None else self._current.generation + 1
        try:
            snapshot = _compile_bytes(data, self.path, generation, self._env)
        except ConfigError as exc:
            return self._fail(digest, exc.problems)
        dropped = [] if allow_drop or self._current is None else drops_everything(self._current, snapshot)
        if dropped:
            return self._fail(digest, dropped)
        self.install(snapshot)
        return self._count("ok")

    def install(self, snapshot: Snapshot) -> None:
        self._current = snapshot
        self.last_failure = None
        for listener in self.listeners:
            listener(snapshot)

    def _fail(self, digest: str, problems: list[tuple[str, str]]) -> str:
        self.last_failure = ReloadFailure(time.time(), digest, tuple(problems))
        return self._count("error")

    def _count(self, result: str) -> str:
        self.reloads[result] += 1
        for observer in self.observers:
            observer(result)
        return result


__all__ = [
    "ConfigError",
    "Glob",
    "ProviderSpec",
    "ReloadFailure",
    "Route",
    "Snapshot",
    "SnapshotHolder",
    "Team",
    "compile_snapshot",
    "hash_key",
    "load_file",
    "snapshot_from_file",
    "snapshot_from_text",
]
