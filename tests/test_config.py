"""`proxy.yaml` validation and compilation: each bad config names its path and reason,
`${VAR}` interpolation, and the configs shipped in the repository compile."""

from __future__ import annotations

import hashlib
from datetime import UTC
from pathlib import Path

import pytest

from proxy.config import ConfigError, interpolate, load_file, load_text
from proxy.snapshot import SnapshotHolder, hash_key, snapshot_from_text

REPO = Path(__file__).resolve().parent.parent
HEX = hashlib.sha256(b"sk-one").hexdigest()
MOCK = "providers: {mock: {type: mock}}\n"


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as exc:
        snapshot_from_text(text, env=env or {})
    return exc.value.problems


# ---------------------------------------------------------------- bad configs

BAD = [
    # YAML itself
    ("unclosed flow", "routes: [\n  - name: x\n", "line 2, column 3", "invalid YAML: expected the node content, but found '-'"),
    ("tab indent", "a:\n\t- b", "line 2, column 1", "invalid YAML: found character '\\t' that cannot start any token"),
    ("top level list", "- a\n- b\n", "", "the top level must be a mapping"),
    ("top level scalar", "42", "", "the top level must be a mapping"),
    ("duplicate top-level key", "server: {port: 1}\nserver: {port: 2}\n", "line 2, column 1",
     "invalid YAML: duplicate key 'server' (first at line 1)"),
    ("duplicate team", "teams:\n  a: {keys: [k1]}\n  a: {keys: [k2]}\n", "line 3, column 3",
     "invalid YAML: duplicate key 'a' (first at line 2)"),
    # unknown fields
    ("unknown top-level key", "sever: {}", "sever", "unknown key"),
    ("unknown server key", "server: {hots: x}", "server.hots", "unknown key"),
    ("unknown match key", MOCK + "routes: [{name: a, to: mock/x, match: {modle: x}}]", "routes[0].match.modle", "unknown key"),
    ("unknown price key", "pricing: {x/y: {input: 1, output: 1, cache: 2}}", "pricing.x/y.cache", "unknown key"),
    ("unknown team key", "teams: {a: {key: [k]}}", "teams.a.key", "unknown key"),
    # wrong types and ranges
    ("port not a number", "server: {port: abc}", "server.port",
     "Input should be a valid integer, unable to parse string as an integer"),
    ("port too high", "server: {port: 70000}", "server.port", "Input should be less than or equal to 65535"),
    ("max body zero", "server: {max_body_mb: 0}", "server.max_body_mb", "Input should be greater than 0"),
    ("routes not a list", "routes: {a: 1}", "routes", "Input should be a valid list"),
    ("teams not a mapping", "teams: [a]", "teams", "Input should be a valid dictionary"),
    ("team models not a list", "teams: {a: {models: fast}}", "teams.a.models", "Input should be a valid list"),
    ("route not a mapping", "routes: [5]", "routes[0]", "Input should be a valid dictionary or instance of RouteConfig"),
    ("route name missing", MOCK + "routes: [{to: mock/x}]", "routes[0].name", "required"),
    ("route name blank", MOCK + "routes: [{name: ' ', to: mock/x}]", "routes[0].name", "must not be empty"),
    ("stream not a bool", MOCK + "routes: [{name: a, to: mock/x, match: {stream: maybe}}]", "routes[0].match.stream",
     "Input should be a valid boolean, unable to interpret input"),
    ("percent over 100", MOCK + "routes: [{name: a, to: mock/x, match: {percent: 101}}]", "routes[0].match.percent",
     "Input should be less than or equal to 100"),
    ("percent negative", MOCK + "routes: [{name: a, to: mock/x, match: {percent: -1}}]", "routes[0].match.percent",
     "Input should be greater than or equal to 0"),
    ("after without zone", MOCK + "routes: [{name: a, to: mock/x, match: {after: '2026-01-01T00:00:00'}}]",
     "routes[0].match.after", "needs a timezone, e.g. 2026-12-01T00:00:00Z"),
    ("after not a date", MOCK + "routes: [{name: a, to: mock/x, match: {after: soon}}]", "routes[0].match.after",
     "Input should be a valid datetime or date, input is too short"),
    ("window reversed", MOCK + "routes: [{name: a, to: mock/x, match: "
     "{after: '2026-01-01T00:00:00Z', before: '2025-01-01T00:00:00Z'}}]", "routes[0].match",
     "after must be earlier than before"),
    ("split weight zero", MOCK + "routes: [{name: a, split: {mock/x: 0}}]", "routes[0].split", "weights must be > 0"),
    ("split weight not a number", MOCK + "routes: [{name: a, split: {mock/x: heavy}}]", "routes[0].split.mock/x",
     "Input should be a valid number, unable to parse string as a number"),
    ("split empty", MOCK + "routes: [{name: a, split: {}}]", "routes[0].split", "needs at least one target"),
    ("to empty list", MOCK + "routes: [{name: a, to: []}]", "routes[0].to", "needs at least one target"),
    ("no action", "routes: [{name: a}]", "routes[0]", "needs exactly one action: to, split or experiment"),
    ("two actions", MOCK + "routes: [{name: a, to: mock/x, split: {mock/y: 1}}]", "routes[0]",
     "needs exactly one action: to, split or experiment"),
    ("route cache ttl zero", MOCK + "routes: [{name: a, to: mock/x, cache: {ttl_s: 0}}]", "routes[0].cache.ttl_s",
     "Input should be greater than or equal to 1"),
    ("balance unknown", "resilience: {balance: random}", "resilience.balance",
     "Input should be 'weighted', 'least_inflight' or 'lowest_latency'"),
    ("retry_on status out of range", "resilience: {retry_on: [200]}", "resilience.retry_on[0]",
     "Input should be greater than or equal to 400"),
    ("budget alert over 1", "teams: {a: {budget: {alerts: [1.5]}}}", "teams.a.budget.alerts",
     "alert thresholds are fractions of the budget, each in (0, 1]"),
    ("negative price", "pricing: {x/y: {input: -1, output: 1}}", "pricing.x/y.input",
     "Input should be greater than or equal to 0"),
    ("unknown time zone", "accounting: {timezone: Mars/Base}", "accounting.timezone", "unknown time zone 'Mars/Base'"),
    # providers
    ("provider type missing", "providers: {x: {base_url: 'http://a'}}", "providers.x.type", "required"),
    ("provider base_url scheme", "providers: {o: {type: openai, base_url: 'ftp://x'}}", "providers.o",
     "base_url must start with http:// or https://"),
    ("latency on a real provider", "providers: {o: {type: openai, latency_ms: 5}}", "providers.o",
     "latency_ms and chunk_interval_ms apply to type: mock only"),
    # cache
    ("cache backend unknown", "cache: {backend: memcached}", "cache.backend", "Input should be 'redis', 'memory' or 'off'"),
    ("cache url scheme", "cache: {url: 'http://x'}", "cache.url", "must start with redis://, rediss:// or unix://"),
    ("cache ttl zero", "cache: {ttl_s: 0}", "cache.ttl_s", "Input should be greater than or equal to 1"),
    ("telemetry endpoint scheme", "telemetry: {otlp_endpoint: 'grpc://c:4317'}", "telemetry.otlp_endpoint",
     "must start with http:// or https:// (OTLP over HTTP)"),
    # whole-document checks
    ("unknown provider in to", MOCK + "routes: [{name: a, to: nope/x}]", "routes[0].to", "unknown provider 'nope' (known: mock)"),
    ("unknown provider in to list", MOCK + "routes: [{name: a, to: [mock/x, z/y]}]", "routes[0].to[1]",
     "unknown provider 'z' (known: mock)"),
    ("unknown provider in split", MOCK + "routes: [{name: a, split: {z/y: 1}}]", "routes[0].split.z/y",
     "unknown provider 'z' (known: mock)"),
    ("unknown provider in fallbacks", MOCK + "routes: [{name: a, to: mock/x, fallbacks: [z/y]}]", "routes[0].fallbacks[0]",
     "unknown provider 'z' (known: mock)"),
    ("no providers at all", "routes: [{name: a, to: openai/x}]", "routes[0].to", "unknown provider 'openai' (known: none)"),
    ("target without slash", MOCK + "routes: [{name: a, to: mockx}]", "routes[0].to", "target 'mockx' must be provider/model"),
    ("target without model", MOCK + "routes: [{name: a, to: 'mock/'}]", "routes[0].to", "target 'mock/' names no model"),
    ("unknown team in match", MOCK + "routes: [{name: a, to: mock/x, match: {teams: [zz]}}]", "routes[0].match.teams",
     "unknown team 'zz'"),
    ("duplicate route names", MOCK + "routes: [{name: a, to: mock/x}, {name: a, to: mock/y}]", "routes[1].name",
     "duplicate route name 'a' (also routes[0])"),
    ("placeholder beyond wildcards", MOCK + "routes: [{name: a, match: {model: 'x-*'}, to: 'mock/{2}'}]", "routes[0].to",
     "{2} needs a wildcard in every match.model pattern (1 available)"),
    ("placeholder with a literal pattern in the list", MOCK + "routes: [{name: a, match: {model: ['a*', b]}, to: 'mock/{1}'}]",
     "routes[0].to", "{1} needs a wildcard in every match.model pattern (0 available)"),
    ("placeholder without any pattern", MOCK + "routes: [{name: a, to: 'mock/{1}'}]", "routes[0].to",
     "{1} needs a wildcard in every match.model pattern (0 available)"),
    ("placeholder in fallbacks", MOCK + "routes: [{name: a, match: {model: 'x*'}, to: 'mock/{1}', fallbacks: ['mock/{2}']}]",
     "routes[0].fallbacks[0]", "{2} needs a wildcard in every match.model pattern (1 available)"),
    ("placeholder zero", MOCK + "routes: [{name: a, match: {model: 'a*'}, to: 'mock/{0}'}]", "routes[0].to",
     "unknown placeholder {0}; use {model} or {1}, {2}, ..."),
    ("placeholder by name", MOCK + "routes: [{name: a, to: 'mock/{foo}'}]", "routes[0].to",
     "unknown placeholder {foo}; use {model} or {1}, {2}, ..."),
    # keys
    ("malformed sha256 key", "teams: {a: {keys: ['sha256:abc']}}", "teams.a.keys[0]", "a sha256: key needs 64 hex digits"),
    ("sha256 key not hex", "teams: {a: {keys: ['sha256:" + "g" * 64 + "']}}", "teams.a.keys[0]",
     "a sha256: key needs 64 hex digits"),
    ("malformed admin sha256 key", "server: {admin_keys: ['sha256:zz']}", "server.admin_keys[0]",
     "a sha256: key needs 64 hex digits"),
    ("same key in two teams", "teams: {a: {keys: [k1]}, b: {keys: [k1]}}", "teams.b.keys[0]", "key also belongs to team 'a'"),
    ("same hash in two teams, any case", f"teams: {{a: {{keys: ['sha256:{HEX.upper()}']}}, b: {{keys: ['sha256:{HEX}']}}}}",
     "teams.b.keys[0]", "key also belongs to team 'a'"),
    ("plain key and its hash in two teams", f"teams: {{a: {{keys: [sk-one]}}, b: {{keys: ['sha256:{HEX}']}}}}",
     "teams.b.keys[0]", "key also belongs to team 'a'"),
    ("same key twice in one team", "teams: {a: {keys: [k1, k1]}}", "teams.a.keys[1]", "duplicate key"),
    ("blank key", "teams: {a: {keys: ['  ']}}", "teams.a.keys[0]", "must not be empty"),
    ("same key from two variables", "teams: {a: {keys: ['${K1}']}, b: {keys: ['${K2}']}}", "teams.b.keys[0]",
     "key also belongs to team 'a'"),
]


@pytest.mark.parametrize(("text", "path", "reason"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_path_and_reason(text, path, reason):
    found = problems(text, env={"K1": "same", "K2": "same"})
    assert (path, reason) in found
    # nothing else is reported, except a union's other member failing on the field itself,
    # and no union-member or internal names leak into the paths
    assert all(path == p or path.startswith(p + ".") for p, _ in found), found


def test_unknown_provider_type_lists_the_known_ones():
    [(path, reason)] = problems("providers: {x: {type: gemini-direct}}")
    assert path == "providers.x.type"
    assert reason.startswith("Input should be ") and "'openai'" in reason and "'mock'" in reason


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (MOCK + "routes: [{name: a, to: 5}]", "routes[0].to"),
        (MOCK + "routes: [{name: a, to: mock/x, match: {model: 5}}]", "routes[0].match.model"),
        (MOCK + "routes: [{name: a, to: mock/x, cache: sometimes}]", "routes[0].cache"),
        ("resilience: {retry_on: [soon]}", "resilience.retry_on[0]"),
    ],
)
def test_union_fields_report_the_field_path_only(text, path):
    assert {p for p, _ in problems(text)} == {path}


def test_every_problem_is_reported_at_once():
    text = MOCK + """
routes:
  - {name: a, to: nope/x}
  - {name: a, to: mock/y, fallbacks: [gone/z]}
teams: {t: {keys: ['sha256:12']}}
"""
    assert problems(text) == [
        ("routes[0].to", "unknown provider 'nope' (known: mock)"),
        ("routes[1].name", "duplicate route name 'a' (also routes[0])"),
        ("routes[1].fallbacks[0]", "unknown provider 'gone' (known: mock)"),
        ("teams.t.keys[0]", "a sha256: key needs 64 hex digits"),
    ]


def test_config_error_renders_path_and_reason():
    err = ConfigError([("routes[3].split", "weights must be > 0"), ("", "the top level must be a mapping")])
    assert str(err) == "routes[3].split: weights must be > 0; the top level must be a mapping"
    assert err.as_dicts() == [
        {"path": "routes[3].split", "reason": "weights must be > 0"},
        {"path": "", "reason": "the top level must be a mapping"},
    ]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_file(str(tmp_path / "missing.yaml"))
    assert exc.value.problems == [("", "cannot read config: No such file or directory")]


def test_failed_reload_keeps_the_serving_snapshot(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(MOCK + "routes: [{name: a, to: mock/x}]\n")
    holder = SnapshotHolder(str(path), env={})
    assert holder.load() == "ok"
    good = holder.current
    path.write_text(MOCK + "routes: [{name: a, to: nope/x}]\n")
    assert holder.load() == "error"
    assert holder.current is good
    assert holder.last_failure is not None
    assert holder.last_failure.problems == (("routes[0].to", "unknown provider 'nope' (known: mock)"),)
    path.write_text(MOCK + "routes: [{name: a, to: mock/x}]\n")
    assert holder.load() == "unchanged" and holder.current is good


# ---------------------------------------------------------------- accepted shapes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "cache: {backend: off}",  # YAML 1.1 reads a bare off as false
        "ledger: {path: off}",
        MOCK + "routes: [{name: a, to: '{model}'}]",
        MOCK + "routes: [{name: a, match: {model: '*/*'}, to: '{1}/{2}'}]",  # templated provider: checked per request
        MOCK + "routes: [{name: a, match: {model: ['a-*', 'b-*']}, to: 'mock/{1}'}]",
        MOCK + "routes: [{name: a, match: {model: 'v?'}, to: 'mock/{1}'}]",
        MOCK + "routes: [{name: a, to: mock/x, cache: false}]",
        MOCK + "routes: [{name: a, to: mock/x, cache: {ttl_s: 5}}]",
        MOCK + "routes: [{name: a, to: mock/x, match: {after: '2026-01-01T00:00:00+02:00'}}]",
        f"teams: {{a: {{keys: ['sha256:{HEX}', other]}}}}",
        # anchors and merge keys: a key written beside `<<` overrides the merged one
        MOCK + "routes: [&base {name: a, to: mock/x}, {<<: *base, name: b}]",
    ],
)
def test_valid_configs_compile(text):
    snapshot_from_text(text, env={})


def test_off_means_off():
    s = snapshot_from_text("cache: {backend: off}\nledger: {path: off}", env={})
    assert s.config.cache.backend == "off" and s.config.ledger.path == "off"


@pytest.mark.parametrize(
    "settings, connections, keepalive",
    [("", 200, 200), ("max_connections: 50", 50, 50), ("max_keepalive: 10", 200, 10),
     ("max_connections: 8, max_keepalive: 0", 8, 0)],
)
def test_connection_pool_sizes(settings: str, connections: int, keepalive: int) -> None:
    # idle connections kept default to all of them: a burst returns every one at once
    s = snapshot_from_text(f'providers: {{up: {{type: openai, base_url: "http://x/v1", {settings}}}}}', env={})
    assert (s.providers["up"].max_connections, s.providers["up"].max_keepalive) == (connections, keepalive)


def test_compiled_snapshot_indexes_keys_by_hash():
    s = snapshot_from_text(f"teams: {{a: {{keys: ['sha256:{HEX.upper()}']}}, b: {{keys: [plain]}}}}", env={})
    assert dict(s.key_index) == {HEX: "a", hash_key("plain"): "b"}


# ---------------------------------------------------------------- interpolation


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-post", {"A": "x"}, "pre-x-post"),
        ("${A}${B}", {"A": "1", "B": "2"}, "12"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("${A:-fallback}", {"A": ""}, "fallback"),  # empty counts as unset
        ("${A:-}", {}, ""),
        ("${A:-http://h:1/x}", {}, "http://h:1/x"),
        ("$A", {"A": "x"}, "$A"),  # only the braced form interpolates
        ("${not a var}", {}, "${not a var}"),
        ("plain", {}, "plain"),
        (5, {}, 5),
        (None, {}, None),
        (True, {}, True),
    ],
)
def test_interpolate_values(value, env, expected):
    assert interpolate(value, env) == expected


@pytest.mark.parametrize(("value", "env"), [("${A}", {}), ("${A}", {"A": ""}), ("x-${A}-${B}", {"B": "1"})])
def test_interpolate_missing_variable_is_not_an_empty_string(value, env):
    missing: list[tuple[str, str]] = []
    result = interpolate({"k": value}, env, "", missing)
    assert result["k"] != "" and type(result["k"]).__name__ == "_Missing"
    assert missing == [("k", "A")]


def test_interpolate_drops_missing_list_items_and_reports_paths():
    missing: list[tuple[str, str]] = []
    node = {"server": {"admin_keys": ["${GONE}", "${HERE}", "lit"]}, "n": [1, "${X:-d}"]}
    assert interpolate(node, {"HERE": "h"}, "", missing) == {"server": {"admin_keys": ["h", "lit"]}, "n": [1, "d"]}
    assert missing == [("server.admin_keys[0]", "GONE")]


def test_missing_provider_key_disables_the_provider_and_says_so():
    text = """
providers:
  mock: {type: mock}
  openai: {type: openai, api_key: "${OPENAI_API_KEY}"}
  other: {type: openai, api_key: "${OTHER_KEY}", base_url: "${OTHER_URL:-https://other.example/v1}"}
routes: [{name: a, to: openai/gpt-4o, fallbacks: [mock/gpt-4o]}]
"""
    loaded = load_text(text, {"OTHER_KEY": "sk-other"})
    assert loaded.disabled_providers == {"openai": "OPENAI_API_KEY is not set (providers.openai.api_key)"}
    assert "provider openai disabled: OPENAI_API_KEY is not set (providers.openai.api_key)" in loaded.warnings
    s = snapshot_from_text(text, env={"OTHER_KEY": "sk-other"})
    assert set(s.providers) == {"mock", "other"}
    assert s.providers["other"].api_key == "sk-other"
    assert s.providers["other"].base_url == "https://other.example/v1"
    assert dict(s.disabled_providers) == loaded.disabled_providers


def test_missing_variable_outside_providers_falls_back_to_the_default_with_a_warning():
    loaded = load_text('cache: {backend: redis, url: "${REDIS_URL}"}\nserver: {admin_keys: ["${ADMIN}"]}', {})
    assert loaded.config.cache.url == "redis://127.0.0.1:6379/0"
    assert loaded.config.server.admin_keys == []
    assert "cache.url: REDIS_URL is not set; ignored" in loaded.warnings
    assert "server.admin_keys[0]: ADMIN is not set; ignored" in loaded.warnings


def test_interpolated_values_are_validated_after_substitution():
    assert load_text('server: {port: "${PORT}"}', {"PORT": "9000"}).config.server.port == 9000
    assert problems('server: {port: "${PORT}"}', env={"PORT": "nine"}) == [
        ("server.port", "Input should be a valid integer, unable to parse string as an integer")
    ]


def test_team_whose_only_key_is_unset_warns():
    s = snapshot_from_text('teams: {a: {keys: ["${A_KEY}"]}}', env={})
    assert "team a has no usable key" in s.warnings
    assert not s.key_index


def test_environment_is_read_when_no_env_is_given(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_TEST_PORT", "8123")
    assert load_text('server: {port: "${SWITCHYARD_TEST_PORT}"}').config.server.port == 8123


# ---------------------------------------------------------------- shipped configs

SHIPPED = [REPO / "proxy.yaml", *sorted((REPO / "config" / "examples").glob("*.yaml"))]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "OPENAI_API_KEY": "sk-o",
            "OPENROUTER_API_KEY": "sk-or",
            "ANTHROPIC_API_KEY": "sk-ant",
            "SWITCHYARD_ADMIN_KEY": "adm",
            "SEARCH_TEAM_KEY": "sk-s",
            "RESEARCH_TEAM_KEY": "sk-r",
            "APP_TEAM_KEY": "sk-a",
        },
    ],
    ids=["no-env", "full-env"],
)
def test_shipped_configs_compile(path, env):
    s = snapshot_from_text(path.read_text(), source=str(path), env=env)
    assert s.routes, "a shipped policy routes something"
    assert len(s.prices) > 0
    if env:
        assert not s.disabled_providers
    loaded = load_file(str(path), env)
    assert loaded.config == s.config


def test_shipped_examples_exist():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("env", [{}, {"OPENROUTER_API_KEY": "sk-or", "OPENAI_API_KEY": "sk-o"}])
def test_the_shipped_demo_canary_splits_as_its_comment_says(env):
    """`sonnet-canary`: 10% of users, sticky; alice always, bob never; a team's anonymous
    traffic moves as a whole, and neither demo team's is in the canary."""
    from datetime import datetime

    from proxy.routing import RouteRequest, decide

    s = snapshot_from_text((REPO / "proxy.yaml").read_text(), source=str(REPO / "proxy.yaml"), env=env)
    now = datetime(2026, 11, 30, tzinfo=UTC)

    def route(team: str, user: str | None, rand: float = 0.5) -> str:
        return decide(s, RouteRequest("smart", s.teams[team], user, False, now, rand)).route

    canary = {"sonnet-canary", "smart-alice"}
    users = [f"user-{i}" for i in range(4000)]
    share = sum(route("search", u) == "sonnet-canary" for u in users) / len(users)
    assert 0.085 < share < 0.115
    assert all(route("search", u) == route("research", u) for u in users[:200])  # by user, not team
    assert all(route("search", u, rand) == route("search", u) for u in users[:200] for rand in (0.01, 0.99))
    assert route("search", "alice") in canary and route("search", "bob") == "smart"
    for team in ("search", "research"):
        assert route(team, None) == "smart"


@pytest.mark.parametrize(
    "ledger, problem",
    [
        ('{url: "postgresql://sy@db:5432/sy", path: other.db}', "not both"),
        ('{url: "postgresql://sy@db:5432/sy", path: off}', "not both"),
        ('{url: "mysql://db/sy"}', "must start with postgresql://"),
        ("{retention_days: 0}", "greater than 0"),
    ],
)
def test_ledger_url_is_checked(ledger, problem):
    with pytest.raises(ConfigError) as caught:
        load_text(f"ledger: {ledger}", {})
    assert problem in str(caught.value) and "ledger" in str(caught.value)


def test_ledger_url_from_the_environment():
    text = 'ledger: {url: "${SWITCHYARD_LEDGER_URL}", retention_days: 90}'
    loaded = load_text(text, {"SWITCHYARD_LEDGER_URL": "postgresql://sy:pw@db:5432/sy"})
    assert loaded.config.ledger.url == "postgresql://sy:pw@db:5432/sy" and loaded.config.ledger.retention_days == 90
    unset = load_text(text, {})  # unset: said at startup, and the SQLite file stays the ledger
    assert unset.config.ledger.url is None and any("SWITCHYARD_LEDGER_URL" in w for w in unset.warnings)


def test_startup_line_never_shows_the_ledger_password():
    from proxy.cli import startup_line

    snapshot = snapshot_from_text('ledger: {url: "postgresql://sy:s3cret@db:5432/sy"}', env={})
    line = startup_line(snapshot, "proxy.yaml", "127.0.0.1", 8080, 1)
    assert "ledger: postgresql://sy:***@db:5432/sy" in line and "s3cret" not in line
