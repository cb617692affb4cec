"""The routing policy: a pure function of a snapshot and a request.

`decide(snapshot, request)` walks the routes in order; the first whose every condition
holds picks the target. Nothing here does I/O or reads a clock or a random source:
the time and a uniform random number come in with the request, so a decision can be
replayed and tested exactly. Pass `trace=[]` to collect why each rule did or did not
apply (`switchyard route` prints it); the hot path passes nothing and builds no text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from proxy.errors import InvalidRequest, ModelNotAllowed, ModelNotFound, NoHealthyUpstream, shown
from proxy.snapshot import Experiment, Route, Snapshot, Team, any_glob

_NO_PROMOTIONS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str | None  # as the client sent it; None or "" means the team's default
    team: Team
    user: str | None
    stream: bool
    now: datetime
    rand: float  # uniform in [0, 1): picks among weighted split targets
    complexity: str | None = None  # the prompt classifier's level, when a route asks for it
    promoted: Mapping[str, str] = field(default_factory=lambda: _NO_PROMOTIONS)  # experiment -> winning variant
    prompt: str | None = None  # the registered prompt id the request names
    prompt_pinned: str | None = None  # "id@version" when the request named the version itself


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str
    name: str = field(init=False, repr=False, compare=False)  # "provider/model", made once

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.provider}/{self.model}")

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Decision:
    requested: str  # the model name the policy was asked for
    route: str
    route_index: int
    target: Target
    fallbacks: tuple[Target, ...]
    # a split's usable targets and weights, for balancing strategies other than the
    # weighted draw already made here (empty for a single target)
    pool: tuple[tuple[Target, float], ...] = ()
    balance: str = "weighted"
    experiment: str | None = None
    variant: str | None = None
    prompt: str | None = None  # "id@version" (or a bare version) the experiment's variant renders
    prompt_only: bool = False  # that variant names no target: the routes after it picked this one


@dataclass(frozen=True, slots=True)
class Step:
    route: str
    outcome: str  # "matched", "skipped"
    reason: str


_PLACEHOLDER = re.compile(r"\{(model|\d+)\}")
MEMO_SIZE = 4096  # remembered decisions per snapshot (model names come from clients: bounded)


def remembered(snapshot: Snapshot, model: str | None, team: Team, stream: bool, prompt: str | None = None,
               pinned: str | None = None) -> Decision | None:
    """The decision `decide` took before for the same inputs, when the snapshot's routes
    look at nothing else (`Snapshot.routing_static`) and it picked one target, not a draw."""
    if not snapshot.routing_static:
        return None
    found: Decision | None = snapshot.decisions.get((model, team.name, stream, prompt, pinned))
    return found


def decide(snapshot: Snapshot, req: RouteRequest, trace: list[Step] | None = None) -> Decision:
    decision = _decide(snapshot, req, trace)
    if snapshot.routing_static and trace is None and snapshot.routes[decision.route_index].split is None:
        memo = snapshot.decisions
        if len(memo) >= MEMO_SIZE:
            memo.clear()  # a flood of distinct names: start over rather than grow
        memo[req.model, req.team.name, req.stream, req.prompt, req.prompt_pinned] = decision
    return decision


def _decide(snapshot: Snapshot, req: RouteRequest, trace: list[Step] | None) -> Decision:
    model = req.model or req.team.default_model
    if not model:
        raise InvalidRequest("you must provide a model parameter (this team has no default_model)", param="model")
    if not req.team.allows(model):
        raise _not_allowed(snapshot, req.team, model)
    assigned: tuple[str, str, str | None] | None = None  # a prompt-only variant: (experiment, variant, prompt)
    # untraced, only the rules whose model patterns take the name are looked at (remembered per name)
    candidates = _candidates(snapshot, model) if trace is None else tuple((r, ()) for r in snapshot.routes)
    for route, captured in candidates:
        if trace is None:
            if _condition_failing(route, req) is not None:
                continue
            groups: tuple[str, ...] = captured
        else:
            matched = _match(route, model, req, trace)
            if matched is None:
                continue
            groups = matched
        variant = None
        if route.experiment is not None:
            variant = assign_variant(route.experiment, req)
            _note(trace, route.name, "variant", f"experiment {route.experiment.name}: variant {variant}")
            if assigned is None and route.experiment.target_of(variant) is None:
                assigned = (route.experiment.name, variant, route.experiment.prompts.get(variant))
                _note(trace, route.name, "skipped", "the variant names only a prompt version: "
                                                    "the routes after this one pick the target")
                continue
        targets = _resolve_all(route, model, groups, req.rand, variant)
        if isinstance(targets, str):
            _note(trace, route.name, "skipped", targets)
            continue
        primary, fallbacks = targets
        if primary.provider not in snapshot.providers and primary.provider not in snapshot.disabled_providers:
            # only a templated target can name an unknown provider: the name is not for this rule
            _note(trace, route.name, "skipped", f"target {primary} names unknown provider {primary.provider!r}")
            continue
        usable = [t for t in (primary, *fallbacks) if t.provider in snapshot.providers]
        if not usable:
            reasons = "; ".join(
                f"{t}: provider {t.provider} {_why_unavailable(snapshot, t.provider)}" for t in (primary, *fallbacks)
            )
            _note(trace, route.name, "matched", f"no usable target ({reasons})")
            raise NoHealthyUpstream(f"route {route.name!r} has no available target: {reasons}")
        if trace is not None:
            skipped = [str(t) for t in (primary, *fallbacks) if t not in usable]
            extra = f"; skipped disabled {', '.join(skipped)}" if skipped else ""
            _note(trace, route.name, "matched", f"target {usable[0]}{extra}")
        pool = _pool(route, model, groups, snapshot) if route.split is not None else ()
        experiment = prompt = None
        if assigned is not None:  # the first experiment to assign a variant is the one recorded
            experiment, variant, prompt = assigned
        elif route.experiment is not None and variant is not None:
            experiment, prompt = route.experiment.name, route.experiment.prompts.get(variant)
        return Decision(model, route.name, route.index, usable[0], tuple(usable[1:]), pool, route.balance,
                        experiment, variant, prompt, assigned is not None)
    raise _not_found(snapshot, req.team, model)


def check_model(snapshot: Snapshot, team: Team, model: str) -> None:
    """What `GET /v1/models/{name}` asks: may this team request the name, and would a rule
    take it? Raises the same 403/404 a chat request for it would get. Conditions other than
    the model and team (percent, users, time, ...) are not evaluated: some request can meet them."""
    if not team.allows(model):
        raise _not_allowed(snapshot, team, model)
    for route in snapshot.routes:
        if route.match.teams is not None and team.name not in route.match.teams:
            continue
        if route.match.models is None or any(g.match(model) is not None for g in route.match.models):
            return
    raise _not_found(snapshot, team, model)


def _not_allowed(snapshot: Snapshot, team: Team, model: str) -> ModelNotAllowed:
    return ModelNotAllowed(
        f"team {team.name!r} may not use model {shown(model)}; allowed: {_allowed_text(snapshot, team)}", param="model"
    )


def _not_found(snapshot: Snapshot, team: Team, model: str) -> ModelNotFound:
    return ModelNotFound(
        f"model {shown(model)} does not exist or is not routed for team {team.name!r}; "
        f"allowed: {_allowed_text(snapshot, team)}",
        param="model",
    )


def _allowed_text(snapshot: Snapshot, team: Team) -> str:
    names = snapshot.model_names(team) + snapshot.model_patterns(team)
    return ", ".join(names) if names else "none"


def _why_unavailable(snapshot: Snapshot, provider: str) -> str:
    reason = snapshot.disabled_providers.get(provider)
    return f"is disabled: {reason}" if reason else "is not configured"


def _note(trace: list[Step] | None, route: str, outcome: str, reason: str) -> None:
    if trace is not None:
        trace.append(Step(route, outcome, reason))


def _match(route: Route, model: str, req: RouteRequest, trace: list[Step] | None) -> tuple[str, ...] | None:
    """The wildcard captures if every condition holds, else None (and, when tracing, why not)."""
    outcome = _check(route, model, req)
    if isinstance(outcome, tuple):
        return outcome
    if trace is not None:  # the reason is only worded for someone who reads it
        _note(trace, route.name, "skipped", _why_not(outcome, route, model, req))
    return None


def _candidates(snapshot: Snapshot, model: str) -> tuple[tuple[Route, tuple[str, ...]], ...]:
    """The rules whose model patterns take this name, in order, with what their wildcards
    captured; remembered per snapshot (bounded: names come from clients)."""
    memo = snapshot.model_routes
    found: tuple[tuple[Route, tuple[str, ...]], ...] | None = memo.get(model)
    if found is None:
        pairs = []
        for route in snapshot.routes:
            groups = _model_groups(route, model)
            if groups is not None:
                pairs.append((route, groups))
        found = tuple(pairs)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[model] = found
    return found


def _model_groups(route: Route, model: str) -> tuple[str, ...] | None:
    """What the rule's first matching model pattern captured; None when none matches."""
    if route.match.models is None:
        return ()
    for glob in route.match.models:
        found = glob.match(model)
        if found is not None:
            return found
    return None


def _check(route: Route, model: str, req: RouteRequest) -> tuple[str, ...] | str:
    """The wildcard captures when every condition holds, else the name of the first that fails."""
    groups = _model_groups(route, model)
    if groups is None:
        return "model"
    failing = _condition_failing(route, req)
    return groups if failing is None else failing


def _condition_failing(route: Route, req: RouteRequest) -> str | None:
    """The first of the rule's conditions besides the model name that the request fails."""
    m = route.match
    if m.teams is not None and req.team.name not in m.teams:
        return "teams"
    if m.users is not None and req.user not in m.users:
        return "users"
    if m.exclude_users is not None and req.user in m.exclude_users:
        return "exclude_users"
    if m.stream is not None and req.stream != m.stream:
        return "stream"
    if m.after is not None and req.now < m.after:
        return "after"
    if m.before is not None and req.now >= m.before:
        return "before"
    if m.complexity is not None and req.complexity not in m.complexity:
        return "complexity"
    if m.prompts is not None and (req.prompt is None or not any_glob(m.prompts, req.prompt)):
        return "prompts"
    if req.prompt_pinned is not None and route.experiment is not None and route.experiment.prompts:
        return "prompt_pinned"
    if m.percent is not None and percent_bucket(route.name, req.user or req.team.name) >= m.percent:
        return "percent"
    return None


def _why_not(condition: str, route: Route, model: str, req: RouteRequest) -> str:
    m = route.match
    if condition == "model":
        return f"model {shown(model)} does not match {', '.join(g.pattern for g in m.models or ())}"
    if condition == "teams":
        return f"team {req.team.name!r} not in teams"
    if condition == "users":
        return f"user {_shown(req.user)} not in users"
    if condition == "exclude_users":
        return f"user {_shown(req.user)} is excluded"
    if condition == "stream":
        return f"stream is {str(req.stream).lower()}, rule wants {str(m.stream).lower()}"
    if condition == "after" and m.after is not None:
        return f"before the rule's start {m.after.isoformat()}"
    if condition == "before" and m.before is not None:
        return f"after the rule's end {m.before.isoformat()}"
    if condition == "complexity":
        return f"prompt is {req.complexity or 'unclassified'}, rule wants {', '.join(sorted(m.complexity or ()))}"
    if condition == "prompts":
        named = f"prompt {req.prompt!r}" if req.prompt else "no registered prompt"
        return f"request names {named}, rule wants {', '.join(g.pattern for g in m.prompts or ())}"
    if condition == "prompt_pinned":
        return f"request pins prompt version {req.prompt_pinned}: experiments on prompt versions leave it alone"
    who = f"user {shown(req.user)}" if req.user else f"team {req.team.name!r} (no user)"
    bucket = percent_bucket(route.name, req.user or req.team.name)
    return f"{who} is in bucket {bucket:.2f}, outside the first {m.percent:g}%"


def _shown(user: str | None) -> str:
    return "-" if user is None else shown(user)


def percent_bucket(route_name: str, subject: str) -> float:
    """A stable position in [0, 100) for this subject on this rule."""
    digest = hashlib.blake2b(f"{route_name}\x00{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100.0 / 2**64


def classify_level(snapshot: Snapshot, body: dict[str, Any]) -> str:
    """The prompt's complexity level under the snapshot's classifier settings."""
    from proxy.complexity import classify_body

    return classify_body(body, snapshot.complexity).level


def assign_variant(experiment: Experiment, req: RouteRequest) -> str:
    """Stable: hash(experiment, subject) picks by weight, so a subject keeps its variant.
    A declared winner (promotion) takes all traffic."""
    promoted = req.promoted.get(experiment.name)
    if promoted is not None and experiment.has(promoted):
        return promoted
    if experiment.sticky == "request":
        draw = req.rand
    else:
        subject = req.team.name if experiment.sticky == "team" else (req.user or req.team.name)
        draw = assignment_draw(experiment.name, subject)
    return pick_weighted(tuple((name, weight) for name, _, weight in experiment.variants), draw)


def assignment_draw(experiment: str, subject: str) -> float:
    """Uniform in [0, 1), fixed per (experiment, subject)."""
    # its own hash space: a route's `percent` bucket must not correlate with its variants
    digest = hashlib.blake2b(f"experiment\x00{experiment}\x00{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick_weighted(choices: tuple[tuple[str, float], ...], rand: float) -> str:
    total = sum(w for _, w in choices)
    point = rand * total
    for target, weight in choices:
        point -= weight
        if point < 0:
            return target
    return choices[-1][0]


def _resolve_all(
    route: Route, model: str, groups: tuple[str, ...], rand: float, variant: str | None = None
) -> tuple[Target, tuple[Target, ...]] | str:
    """Primary and fallback targets, or the reason the rule cannot serve this name."""
    if route.experiment is not None and variant is not None:
        # the other variants are not spares: an answer must belong to the variant assigned
        templates = (route.experiment.target_of(variant) or "", *route.fallbacks)
    elif route.split is not None:
        chosen = pick_weighted(route.split, rand)
        # the other split targets follow the configured fallbacks as spares
        spares = [t for t, _ in route.split if t != chosen]
        templates = (chosen, *route.fallbacks, *spares)
    else:
        assert route.to is not None
        templates = (route.to, *route.fallbacks)
    resolved: list[Target] = []
    for template in templates:
        target = resolve_target(template, model, groups)
        if isinstance(target, str):
            return target
        if target not in resolved:
            resolved.append(target)
    return resolved[0], tuple(resolved[1:])


def _pool(route: Route, model: str, groups: tuple[str, ...], snapshot: Snapshot) -> tuple[tuple[Target, float], ...]:
    out = []
    for template, weight in route.split or ():
        target = resolve_target(template, model, groups)
        if isinstance(target, Target) and target.provider in snapshot.providers:
            out.append((target, weight))
    return tuple(out)


def resolve_target(template: str, model: str, groups: tuple[str, ...]) -> Target | str:
    """Fill `{model}` and `{N}` into a target template; a str result is the reason it failed."""

    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "model":
            return model
        index = int(key) - 1
        if not 0 <= index < len(groups):
            raise LookupError(key)
        return groups[index]

    try:
        text = _PLACEHOLDER.sub(fill, template)
    except LookupError as exc:
        return f"target {template!r} uses {{{exc.args[0]}}} but the pattern captured {len(groups)} part(s)"
    provider, sep, upstream_model = text.partition("/")
    if not sep or not provider or not upstream_model:
        return f"target {text!r} is not provider/model"
    return Target(provider, upstream_model)
