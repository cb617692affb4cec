"""The routing policy as a pure function: `decide(snapshot, request)` on compiled YAML.

Every request pins its clock (`now`) and its split draw (`rand`), so each case is exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from proxy.errors import InvalidRequest, ModelNotAllowed, ModelNotFound, NoHealthyUpstream, ProxyError
from proxy.routing import (
    Decision,
    RouteRequest,
    Step,
    Target,
    decide,
    percent_bucket,
    pick_weighted,
    resolve_target,
)
from proxy.snapshot import Snapshot, snapshot_from_text

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WINDOW_START = datetime(2026, 12, 1, tzinfo=UTC)
WINDOW_END = datetime(2027, 1, 1, tzinfo=UTC)

POLICY = """
providers:
  mock: {type: mock}
  backup: {type: mock}
  openai: {type: openai, api_key: "${OPENAI_API_KEY}"}
teams:
  search:
    keys: [sk-search]
    default_model: fast
    models: [fast, smart, "claude-*", "mock/*"]
  research:
    keys: [sk-research]
    default_model: smart
  nodefault:
    keys: [sk-nodefault]
routes:
  - name: fast
    match: {model: fast}
    to: mock/gpt-4o-mini
    fallbacks: [backup/gpt-4o-mini]
  - name: fast-shadow                # never reached: `fast` above wins
    match: {model: fast}
    to: backup/never
  - name: embed
    match: {model: [embed, text-embedding-3-small]}
    to: mock/text-embedding-3-small
  - name: smart
    match: {model: smart}
    split: {mock/a: 75, backup/b: 25}
    fallbacks: [mock/spare]
  - name: trio
    match: {model: trio}
    split: {mock/one: 1, mock/two: 2, mock/three: 1}
  - name: beta-staff
    match: {model: beta, users: [alice, carol]}
    to: mock/beta-new
  - name: beta
    match: {model: beta}
    to: mock/beta-old
  - name: canary
    match: {model: canary, percent: 10, exclude_users: [bob]}
    to: mock/canary-new
  - name: canary-rest
    match: {model: canary}
    to: mock/canary-old
  - name: holiday
    match: {model: seasonal, after: "2026-12-01T00:00:00Z", before: "2027-01-01T00:00:00Z"}
    to: mock/holiday
  - name: seasonal
    match: {model: seasonal}
    to: mock/everyday
  - name: research-only
    match: {model: deep, teams: [research]}
    to: mock/deep-research
  - name: deep
    match: {model: deep}
    to: mock/deep-shallow
  - name: live-stream
    match: {model: live, stream: true}
    to: mock/streaming
  - name: live-batch
    match: {model: live, stream: false}
    to: mock/batch
  - name: needs-openai
    match: {model: gpt-4o}
    to: openai/gpt-4o
    fallbacks: [mock/gpt-4o]
  - name: openai-only
    match: {model: gpt-only}
    to: openai/gpt-only
  - name: openai-split
    match: {model: mixed}
    split: {openai/gpt-4o: 50, mock/gpt-4o: 50}
  - name: claude-prefix
    match: {model: "claude-*"}
    to: "mock/claude-{1}"
  - name: swap
    match: {model: "x-*-y-*"}
    to: "mock/{2}-{1}"
  - name: one-char
    match: {model: "v?"}
    to: "mock/version-{1}"
  - name: passthrough
    match: {model: "*/*"}
    to: "{model}"
"""


@pytest.fixture(scope="module")
def snap() -> Snapshot:
    return snapshot_from_text(POLICY, env={})


def request(
    snap: Snapshot,
    model: str | None,
    *,
    team: str = "research",
    user: str | None = None,
    stream: bool = False,
    now: datetime = NOW,
    rand: float = 0.0,
) -> RouteRequest:
    return RouteRequest(model=model, team=snap.teams[team], user=user, stream=stream, now=now, rand=rand)


def route_of(snap: Snapshot, model: str | None, **kw) -> tuple[str, str]:
    d = decide(snap, request(snap, model, **kw))
    return d.route, str(d.target)


# ---------------------------------------------------------------- the decision table

CASES = [
    # (id, model, request fields, expected route, expected target)
    ("alias", "fast", {}, "fast", "mock/gpt-4o-mini"),
    ("alias list first name", "embed", {}, "embed", "mock/text-embedding-3-small"),
    ("alias list second name", "text-embedding-3-small", {}, "embed", "mock/text-embedding-3-small"),
    ("team default model", None, {"team": "search"}, "fast", "mock/gpt-4o-mini"),
    ("empty model means default", "", {"team": "research"}, "smart", "mock/a"),
    ("users: listed user", "beta", {"user": "alice"}, "beta-staff", "mock/beta-new"),
    ("users: second listed user", "beta", {"user": "carol"}, "beta-staff", "mock/beta-new"),
    ("users: other user", "beta", {"user": "dave"}, "beta", "mock/beta-old"),
    ("users: no user", "beta", {}, "beta", "mock/beta-old"),
    ("teams: listed team", "deep", {"team": "research"}, "research-only", "mock/deep-research"),
    ("teams: other team", "deep", {"team": "nodefault"}, "deep", "mock/deep-shallow"),
    ("stream: true", "live", {"stream": True}, "live-stream", "mock/streaming"),
    ("stream: false", "live", {"stream": False}, "live-batch", "mock/batch"),
    ("window: before start", "seasonal", {"now": WINDOW_START - timedelta(seconds=1)}, "seasonal", "mock/everyday"),
    ("window: at start", "seasonal", {"now": WINDOW_START}, "holiday", "mock/holiday"),
    ("window: inside", "seasonal", {"now": datetime(2026, 12, 24, tzinfo=UTC)}, "holiday", "mock/holiday"),
    ("window: just before end", "seasonal", {"now": WINDOW_END - timedelta(microseconds=1)}, "holiday", "mock/holiday"),
    ("window: at end", "seasonal", {"now": WINDOW_END}, "seasonal", "mock/everyday"),
    ("window: other zone", "seasonal",
     {"now": datetime(2026, 12, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))}, "seasonal", "mock/everyday"),
    ("glob {1}", "claude-sonnet-4-5", {}, "claude-prefix", "mock/claude-sonnet-4-5"),
    ("glob {1} empty capture", "claude-", {}, "claude-prefix", "mock/claude-"),
    ("glob two captures reordered", "x-alpha-y-beta", {}, "swap", "mock/beta-alpha"),
    ("glob ? one char", "v2", {}, "one-char", "mock/version-2"),
    ("glob {model}", "mock/anything", {}, "passthrough", "mock/anything"),
    ("glob {model} keeps later slashes", "backup/openai/gpt-4o", {}, "passthrough", "backup/openai/gpt-4o"),
    ("split low edge", "smart", {"rand": 0.0}, "smart", "mock/a"),
    ("split just under first weight", "smart", {"rand": 0.7499999}, "smart", "mock/a"),
    ("split at first weight", "smart", {"rand": 0.75}, "smart", "backup/b"),
    ("split high edge", "smart", {"rand": 0.9999999}, "smart", "backup/b"),
    ("three-way split first", "trio", {"rand": 0.2499}, "trio", "mock/one"),
    ("three-way split second", "trio", {"rand": 0.25}, "trio", "mock/two"),
    ("three-way split second end", "trio", {"rand": 0.7499}, "trio", "mock/two"),
    ("three-way split third", "trio", {"rand": 0.75}, "trio", "mock/three"),
    ("disabled provider: fallback used", "gpt-4o", {}, "needs-openai", "mock/gpt-4o"),
    ("disabled provider in split: other side", "mixed", {"rand": 0.1}, "openai-split", "mock/gpt-4o"),
]


@pytest.mark.parametrize(("model", "fields", "route", "target"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_picks_route_and_target(snap, model, fields, route, target):
    assert route_of(snap, model, **fields) == (route, target)


def test_first_match_wins(snap):
    decision = decide(snap, request(snap, "fast"))
    assert decision.route == "fast" and decision.route_index == 0
    assert "fast-shadow" not in {d.route for d in (decide(snap, request(snap, "fast", rand=r)) for r in (0, 0.5, 0.99))}


def test_decision_records_requested_name_and_fallbacks(snap):
    d = decide(snap, request(snap, None, team="search"))
    assert d == Decision(
        requested="fast",
        route="fast",
        route_index=0,
        target=Target("mock", "gpt-4o-mini"),
        fallbacks=(Target("backup", "gpt-4o-mini"),),
    )


@pytest.mark.parametrize(
    ("rand", "target", "fallbacks"),
    [
        (0.1, "mock/a", ["mock/spare", "backup/b"]),  # configured fallbacks first, then the other split targets
        (0.9, "backup/b", ["mock/spare", "mock/a"]),
    ],
)
def test_split_fallbacks_then_spares(snap, rand, target, fallbacks):
    d = decide(snap, request(snap, "smart", rand=rand))
    assert str(d.target) == target
    assert [str(t) for t in d.fallbacks] == fallbacks
    assert d.pool == ((Target("mock", "a"), 75.0), (Target("backup", "b"), 25.0))
    assert d.balance == "weighted"


def test_split_draw_follows_the_weights(snap):
    counts: dict[str, int] = {}
    for i in range(1000):
        target = str(decide(snap, request(snap, "smart", rand=i / 1000)).target)
        counts[target] = counts.get(target, 0) + 1
    assert counts == {"mock/a": 750, "backup/b": 250}


@pytest.mark.parametrize(
    ("choices", "rand", "expected"),
    [
        ((("a", 1.0),), 0.0, "a"),
        ((("a", 1.0),), 0.999, "a"),
        ((("a", 80.0), ("b", 20.0)), 0.0, "a"),
        ((("a", 80.0), ("b", 20.0)), 0.79, "a"),
        ((("a", 80.0), ("b", 20.0)), 0.8, "b"),
        ((("a", 80.0), ("b", 20.0)), 0.99, "b"),
        ((("a", 0.5), ("b", 0.5)), 0.4999, "a"),
        ((("a", 0.5), ("b", 0.5)), 0.5, "b"),
        ((("a", 1.0), ("b", 1.0)), 1.0, "b"),  # out-of-range draw still lands on the last target
    ],
)
def test_pick_weighted_boundaries(choices, rand, expected):
    assert pick_weighted(choices, rand) == expected


# ---------------------------------------------------------------- canary percent

USERS = [f"user-{i}" for i in range(10_000)]


def canary_users(snap: Snapshot) -> set[str]:
    return {u for u in USERS if decide(snap, request(snap, "canary", user=u)).route == "canary"}


def test_percent_distribution_is_within_tolerance(snap):
    chosen = canary_users(snap)
    # 10% of 10,000 is 1,000; the binomial standard deviation is 30, allow five of them
    assert 850 <= len(chosen) <= 1150


def test_percent_is_sticky_between_calls_and_snapshots(snap):
    first = canary_users(snap)
    assert canary_users(snap) == first
    assert canary_users(snapshot_from_text(POLICY, env={}, generation=2)) == first


def test_percent_matches_the_bucket_helper(snap):
    for user in USERS[:500]:
        in_canary = decide(snap, request(snap, "canary", user=user)).route == "canary"
        assert in_canary == (percent_bucket("canary", user) < 10)


def test_percent_buckets_are_independent_between_rules():
    a = {u for u in USERS if percent_bucket("rule-a", u) < 10}
    b = {u for u in USERS if percent_bucket("rule-b", u) < 10}
    assert 850 <= len(a) <= 1150 and 850 <= len(b) <= 1150
    # independent draws overlap on about 1% of users, not 10%
    assert len(a & b) < 200


@pytest.mark.parametrize("subject", ["alice", "team-x", "", "ünïcødé"])
def test_percent_bucket_is_in_range_and_stable(subject):
    bucket = percent_bucket("r", subject)
    assert 0 <= bucket < 100
    assert percent_bucket("r", subject) == bucket


def test_percent_falls_back_to_the_team_without_a_user(snap):
    expected = "canary" if percent_bucket("canary", "research") < 10 else "canary-rest"
    for _ in range(3):
        assert decide(snap, request(snap, "canary", team="research")).route == expected
    expected_nd = "canary" if percent_bucket("canary", "nodefault") < 10 else "canary-rest"
    assert decide(snap, request(snap, "canary", team="nodefault")).route == expected_nd


def test_exclude_users_beats_percent(snap):
    # bob is excluded whatever his bucket is
    assert decide(snap, request(snap, "canary", user="bob")).route == "canary-rest"


@pytest.mark.parametrize(("percent", "expected"), [(0, 0), (100, 10_000)])
def test_percent_edges(percent, expected):
    policy = f"""
providers: {{mock: {{type: mock}}}}
teams: {{t: {{keys: [k]}}}}
routes:
  - {{name: edge, match: {{model: m, percent: {percent}}}, to: mock/in}}
  - {{name: rest, match: {{model: m}}, to: mock/out}}
"""
    s = snapshot_from_text(policy, env={})
    hits = sum(decide(s, request(s, "m", team="t", user=u)).route == "edge" for u in USERS)
    assert hits == expected


# ---------------------------------------------------------------- errors


def test_team_may_not_use_model(snap):
    with pytest.raises(ModelNotAllowed) as exc:
        decide(snap, request(snap, "beta", team="search"))
    err = exc.value
    assert (err.status, err.code, err.param) == (403, "model_not_allowed", "model")
    assert "fast" in err.message and "smart" in err.message


def test_unrouted_model_is_not_found_and_lists_allowed_names(snap):
    with pytest.raises(ModelNotFound) as exc:
        decide(snap, request(snap, "nonexistent"))
    err = exc.value
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "'nonexistent'" in err.message
    for name in ("fast", "smart", "embed", "claude-*", "*/*"):
        assert name in err.message


def test_no_model_and_no_default_is_invalid(snap):
    with pytest.raises(InvalidRequest) as exc:
        decide(snap, request(snap, None, team="nodefault"))
    assert (exc.value.status, exc.value.param) == (400, "model")


def test_templated_unknown_provider_skips_the_rule(snap):
    trace: list[Step] = []
    with pytest.raises(ModelNotFound):
        decide(snap, request(snap, "nowhere/model"), trace)
    assert trace[-1] == Step("passthrough", "skipped", "target nowhere/model names unknown provider 'nowhere'")


@pytest.mark.parametrize(
    ("model", "route"),
    [("gpt-only", "openai-only"), ("openai/gpt-4o", "passthrough")],
)
def test_only_disabled_targets_is_no_healthy_upstream(snap, model, route):
    with pytest.raises(NoHealthyUpstream) as exc:
        decide(snap, request(snap, model))
    err = exc.value
    assert (err.status, err.code) == (503, "no_healthy_upstream")
    assert route in err.message
    assert "OPENAI_API_KEY is not set" in err.message


def test_setting_the_key_variable_enables_the_provider():
    s = snapshot_from_text(POLICY, env={"OPENAI_API_KEY": "sk-upstream"})
    d = decide(s, request(s, "gpt-4o"))
    assert str(d.target) == "openai/gpt-4o" and [str(t) for t in d.fallbacks] == ["mock/gpt-4o"]
    assert str(decide(s, request(s, "mixed", rand=0.1)).target) == "openai/gpt-4o"


def test_disabled_split_target_leaves_the_pool(snap):
    d = decide(snap, request(snap, "mixed", rand=0.1))
    assert d.pool == ((Target("mock", "gpt-4o"), 50.0),)
    assert snap.disabled_providers["openai"] == "OPENAI_API_KEY is not set (providers.openai.api_key)"


# ---------------------------------------------------------------- the trace


def trace_of(snap: Snapshot, model: str | None, **kw) -> list[Step]:
    trace: list[Step] = []
    try:
        decide(snap, request(snap, model, **kw), trace)
    except ProxyError:
        pass  # the trace says why
    return trace


TRACE_POLICY = """
providers:
  mock: {type: mock}
  openai: {type: openai, api_key: "${OPENAI_API_KEY}"}
teams:
  a: {keys: [ka]}
  b: {keys: [kb]}
routes:
  - {name: by-model, match: {model: other}, to: mock/x}
  - {name: by-team, match: {model: m, teams: [b]}, to: mock/x}
  - {name: by-user, match: {model: m, users: [alice]}, to: mock/x}
  - {name: no-bob, match: {model: m, exclude_users: [bob]}, to: mock/x}
  - {name: streaming, match: {model: m, stream: true}, to: mock/x}
  - {name: later, match: {model: m, after: "2030-01-01T00:00:00Z"}, to: mock/x}
  - {name: earlier, match: {model: m, before: "2020-01-01T00:00:00Z"}, to: mock/x}
  - {name: nobody, match: {model: m, percent: 0}, to: mock/x}
  - {name: templ, match: {model: "m*"}, to: "mock/{1}-x"}
  - {name: dead, match: {model: dead}, to: openai/gpt-4o}
  - {name: half-dead, match: {model: half}, to: openai/gpt-4o, fallbacks: [mock/gpt-4o]}
"""


def test_trace_explains_every_rule_tried():
    s = snapshot_from_text(TRACE_POLICY, env={})
    assert trace_of(s, "m", team="a", user="bob") == [
        Step("by-model", "skipped", "model 'm' does not match other"),
        Step("by-team", "skipped", "team 'a' not in teams"),
        Step("by-user", "skipped", "user 'bob' not in users"),
        Step("no-bob", "skipped", "user 'bob' is excluded"),
        Step("streaming", "skipped", "stream is false, rule wants true"),
        Step("later", "skipped", "before the rule's start 2030-01-01T00:00:00+00:00"),
        Step("earlier", "skipped", "after the rule's end 2020-01-01T00:00:00+00:00"),
        Step("nobody", "skipped", f"user 'bob' is in bucket {percent_bucket('nobody', 'bob'):.2f}, outside the first 0%"),
        Step("templ", "matched", "target mock/-x"),
    ]


@pytest.mark.parametrize(
    ("model", "fields", "last"),
    [
        ("m", {"team": "b"}, Step("by-team", "matched", "target mock/x")),
        ("m", {"team": "a", "user": "alice"}, Step("by-user", "matched", "target mock/x")),
        ("m", {"team": "a", "user": "carol"}, Step("no-bob", "matched", "target mock/x")),
        ("half", {"team": "a"}, Step("half-dead", "matched", "target mock/gpt-4o; skipped disabled openai/gpt-4o")),
        (
            "dead",
            {"team": "a"},
            Step(
                "dead",
                "matched",
                "no usable target (openai/gpt-4o: provider openai is disabled: "
                "OPENAI_API_KEY is not set (providers.openai.api_key))",
            ),
        ),
    ],
)
def test_trace_ends_with_the_deciding_rule(model, fields, last):
    s = snapshot_from_text(TRACE_POLICY, env={})
    assert trace_of(s, model, **fields)[-1] == last


def test_template_naming_a_missing_capture_explains_why():
    # validation rejects such a rule, but the resolver still answers with a reason, not a crash
    assert resolve_target("mock/{2}", "m", ("x",)) == "target 'mock/{2}' uses {2} but the pattern captured 1 part(s)"


def test_decision_is_the_same_with_or_without_a_trace(snap):
    # the hot path passes no list
    trace: list[Step] = []
    assert decide(snap, request(snap, "beta", user="alice"), trace) == decide(snap, request(snap, "beta", user="alice"))
    assert [s.outcome for s in trace][-1] == "matched"


# ---------------------------------------------------------------- target templates


@pytest.mark.parametrize(
    ("template", "model", "groups", "expected"),
    [
        ("mock/x", "anything", (), Target("mock", "x")),
        ("{model}", "mock/gpt-4o", (), Target("mock", "gpt-4o")),
        ("{model}", "openrouter/openai/gpt-4o", (), Target("openrouter", "openai/gpt-4o")),
        ("mock/{1}", "claude-x", ("x",), Target("mock", "x")),
        ("mock/{2}/{1}", "a-b", ("a", "b"), Target("mock", "b/a")),
        ("{1}/{2}", "p/m", ("p", "m"), Target("p", "m")),
        ("mock/{model}-{1}", "m-z", ("z",), Target("mock", "m-z-z")),
        ("mock/{1}", "m{2}", ("{2}",), Target("mock", "{2}")),  # captured text is not expanded again
        ("{model}", "no-slash", (), "target 'no-slash' is not provider/model"),
        ("{model}", "/leading", (), "target '/leading' is not provider/model"),
        ("{model}", "trailing/", (), "target 'trailing/' is not provider/model"),
        ("mock/{3}", "a-b", ("a", "b"), "target 'mock/{3}' uses {3} but the pattern captured 2 part(s)"),
        ("mock/{0}", "a", ("a",), "target 'mock/{0}' uses {0} but the pattern captured 1 part(s)"),
    ],
)
def test_resolve_target(template, model, groups, expected):
    assert resolve_target(template, model, groups) == expected


def test_target_prints_as_provider_slash_model():
    assert str(Target("openrouter", "openai/gpt-4o")) == "openrouter/openai/gpt-4o"


def test_equivalent_targets_list_is_an_even_split():
    s = snapshot_from_text(
        """
providers: {mock: {type: mock}, backup: {type: mock}}
teams: {t: {keys: [k]}}
resilience: {balance: least_inflight}
routes:
  - {name: pair, match: {model: m}, to: [mock/x, backup/x]}
""",
        env={},
    )
    low = decide(s, request(s, "m", team="t", rand=0.49))
    high = decide(s, request(s, "m", team="t", rand=0.5))
    assert (str(low.target), str(high.target)) == ("mock/x", "backup/x")
    assert low.pool == ((Target("mock", "x"), 1.0), (Target("backup", "x"), 1.0))
    assert low.balance == "least_inflight"


# ---------------------------------------------------------------- remembered decisions

STATIC = """
providers: {mock: {type: mock}, backup: {type: mock}}
teams:
  a: {keys: [ka], default_model: fast}
  b: {keys: [kb], models: [fast]}
routes:
  - {name: streams, match: {model: fast, stream: true}, to: backup/streamer}
  - {name: fast, match: {model: fast}, to: mock/fast, fallbacks: [backup/fast]}
  - {name: split, match: {model: split}, split: {mock/x: 50, backup/y: 50}}
  - {name: pass, match: {model: "*/*"}, to: "{model}"}
"""


def ask(snapshot: Snapshot, model: str | None, team: str = "a", stream: bool = False, rand: float = 0.3,
        user: str | None = None) -> Decision:
    return decide(snapshot, RouteRequest(model, snapshot.teams[team], user, stream, NOW, rand))


def test_a_static_policy_remembers_each_decision_by_its_inputs():
    from proxy.routing import remembered

    snapshot = snapshot_from_text(STATIC)
    assert snapshot.routing_static
    team = snapshot.teams["a"]
    assert remembered(snapshot, "fast", team, False) is None
    first = ask(snapshot, "fast")
    assert remembered(snapshot, "fast", team, False) is first
    assert remembered(snapshot, "fast", team, True) is None  # another input, another decision
    assert ask(snapshot, "fast", stream=True).route == "streams"
    assert remembered(snapshot, "fast", team, True).route == "streams"
    assert remembered(snapshot, "fast", snapshot.teams["b"], False) is None  # teams never share
    assert ask(snapshot, None).route == "fast" and remembered(snapshot, None, team, False).route == "fast"
    assert str(ask(snapshot, "mock/gpt-x").target) == "mock/gpt-x"
    assert remembered(snapshot, "mock/gpt-x", team, False).target == Target("mock", "gpt-x")


def test_draws_refusals_and_traced_decisions_are_never_remembered():
    from proxy.routing import remembered

    snapshot = snapshot_from_text(STATIC)
    team = snapshot.teams["a"]
    assert {str(ask(snapshot, "split", rand=r).target) for r in (0.1, 0.9)} == {"mock/x", "backup/y"}
    assert remembered(snapshot, "split", team, False) is None
    with pytest.raises(ModelNotAllowed):
        ask(snapshot, "mock/other", team="b")
    assert remembered(snapshot, "mock/other", snapshot.teams["b"], False) is None
    decide(snapshot, RouteRequest("fast", team, None, False, NOW, 0.5), trace=[])
    assert remembered(snapshot, "fast", team, False) is None


@pytest.mark.parametrize("condition", [
    "users: [u]", "exclude_users: [u]", "percent: 50", 'after: "2026-01-01T00:00:00Z"',
    'before: "2027-01-01T00:00:00Z"', "complexity: [simple]",
])
def test_a_policy_looking_at_users_time_or_prompts_decides_afresh(condition):
    from proxy.routing import remembered

    snapshot = snapshot_from_text(STATIC.replace("{model: fast, stream: true}", f"{{model: fast, {condition}}}"))
    assert not snapshot.routing_static
    ask(snapshot, "fast", user="u")
    assert remembered(snapshot, "fast", snapshot.teams["a"], False) is None


def test_the_memo_is_bounded_against_a_flood_of_names():
    from proxy.routing import MEMO_SIZE

    snapshot = snapshot_from_text(STATIC)
    for n in range(MEMO_SIZE + 10):
        ask(snapshot, f"mock/m{n}")
    assert len(snapshot.decisions) <= MEMO_SIZE


def test_looking_only_at_the_rules_a_name_can_match_decides_as_walking_every_rule():
    """Untraced decisions start from the rules whose model patterns take the name (remembered
    per name); traced ones walk every rule. Over many requests they must agree."""
    import random as rand

    snapshot = snapshot_from_text(POLICY, env={"OPENAI_API_KEY": "sk-x"})
    draw = rand.Random(3)
    names = ["fast", "smart", "trio", "embed", "claude-3", "mock/x", "nope", "", "text-embedding-3-small", None]
    for _ in range(400):
        req = RouteRequest(draw.choice(names), snapshot.teams[draw.choice(list(snapshot.teams))],
                           draw.choice([None, "alice", "bob", "carol"]), draw.random() < 0.5,
                           draw.choice([NOW, WINDOW_START + timedelta(days=3)]), draw.random())
        outcomes = []
        for trace in (None, []):
            try:
                outcomes.append(decide(snapshot, req, trace))
            except ProxyError as exc:
                outcomes.append((type(exc), exc.message))
        assert outcomes[0] == outcomes[1], req
    assert len(snapshot.model_routes) <= len(names)


def test_a_targets_name_is_made_once_and_not_compared() -> None:
    target = Target("openai", "gpt-4o")
    assert target.name == str(target) == "openai/gpt-4o"
    assert target == Target("openai", "gpt-4o") and hash(target) == hash(Target("openai", "gpt-4o"))
    assert target != Target("openai", "gpt-4o-mini")
    assert "name" not in repr(target)
