"""A/B experiments: the statistics against known values, verdicts, assignment stability
and distribution, feedback, and a whole experiment through a served proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest
from scipy import stats

from proxy.experiments import Samples, analyse, mann_whitney, mean_ci, proportion_ci, rate_test, welch
from proxy.routing import RouteRequest, assign_variant, assignment_draw, decide
from proxy.snapshot import Experiment, Team, snapshot_from_text
from support import REPO, ServerProcess, chat_body

# ---------------------------------------------------------------- statistics against known values


@pytest.mark.parametrize(
    "a, b, p, t",
    [
        ([1, 2, 3, 4, 5], [2, 3, 4, 5, 6], 0.34659350708733416, 1.0),
        ([3.9, 4.4, 5.1, 4.7, 3.8, 4.9], [1.1, 2.3, 1.9, 2.8, 3.1, 2.2], 0.00013700704468094425, -6.204767712579331),
    ],
)
def test_welch_matches_known_values(a, b, p, t):
    result = welch(a, b)
    assert result["p_value"] == pytest.approx(p, rel=1e-9)
    assert result["statistic"] == pytest.approx(t, rel=1e-9)
    assert (result["effect_size"] > 0) == (sum(b) > sum(a))


def test_a_scipy_warning_becomes_a_note_not_a_stray_line():
    """Nearly identical costs (the mock's, say) make scipy warn of precision loss; the
    report carries that as a note (pytest turns any escaped warning into an error)."""
    result = welch([0.000190] * 44 + [0.00019000000000001], [0.000019] * 76)
    assert result["p_value"] is not None and "Precision loss" in result["note"]
    assert "note" not in welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])


def test_welch_cohens_d():
    assert welch([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])["effect_size"] == pytest.approx(1 / 1.5811388, rel=1e-6)


@pytest.mark.parametrize(
    "counts, test, p",
    [
        ((1, 10, 6, 10), "fisher_exact", 0.057275541795665644),
        ((20, 100, 40, 100), "chi_square", 0.0033704314473977145),
        ((0, 50, 0, 50), "none_needed", 1.0),
    ],
)
def test_rate_test_picks_fisher_for_small_counts(counts, test, p):
    result = rate_test(*counts)
    assert result["test"] == test
    assert result["p_value"] == pytest.approx(p, rel=1e-9)


def test_mann_whitney_known_value_and_direction():
    result = mann_whitney([0.2, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0])
    assert result["p_value"] == pytest.approx(0.02857142857142857, rel=1e-9)
    assert result["effect_size"] == pytest.approx(1.0)  # every b above every a


def test_confidence_intervals():
    ci = mean_ci([1, 2, 3, 4, 5])
    half = stats.t.ppf(0.975, 4) * stats.tstd([1, 2, 3, 4, 5]) / 5**0.5
    assert ci["mean"] == 3 and ci["ci_low"] == pytest.approx(3 - half) and ci["ci_high"] == pytest.approx(3 + half)
    assert mean_ci([])["mean"] is None and mean_ci([2.0])["ci_low"] is None
    rate = proportion_ci(10, 100)
    assert rate["rate"] == 0.1 and 0.05 < rate["ci_low"] < 0.1 < rate["ci_high"] < 0.18


def experiment(objective: str = "cost", min_samples: int = 30, variants: int = 2) -> Experiment:
    names = ["control", "treatment", "third"][:variants]
    return Experiment("exp", tuple((n, f"mock/{n}", 1.0) for n in names), "user", objective, min_samples, 0.05, True)


def samples(mean: float, n: int, spread: float = 0.1, errors: int = 0) -> Samples:
    # deterministic, symmetric around the mean
    values = [mean + spread * ((i % 7) - 3) / 3 for i in range(n)]
    return Samples(cost=values, latency_ms=values, ttft_ms=[], feedback=values, requests=n, errors=errors)


def test_no_difference_gives_no_winner():
    report = analyse(experiment(), {"control": samples(1.0, 60), "treatment": samples(1.0, 60)})
    assert report["verdict"]["winner"] is None and report["verdict"]["status"] == "no winner yet"
    assert report["comparisons"][0]["cost"]["p_value"] > 0.5


@pytest.mark.parametrize("objective, better", [("cost", "treatment"), ("latency", "treatment"),
                                               ("feedback", "control")])
def test_clear_difference_names_the_right_winner(objective, better):
    report = analyse(experiment(objective), {"control": samples(1.0, 60), "treatment": samples(0.5, 60)})
    assert report["verdict"]["winner"] == better, report["verdict"]


def test_error_objective():
    report = analyse(experiment("errors"), {"control": samples(1.0, 200, errors=40),
                                            "treatment": samples(1.0, 200, errors=5)})
    assert report["verdict"]["winner"] == "treatment"
    assert report["comparisons"][0]["errors"]["test"] == "chi_square"


def test_peeking_guard_below_min_samples():
    report = analyse(experiment(min_samples=100), {"control": samples(1.0, 60), "treatment": samples(0.1, 60)})
    assert report["verdict"]["winner"] is None
    assert "min_samples" in report["verdict"]["reason"] and "peeking" in report["verdict"]["reason"]
    assert report["comparisons"][0]["cost"]["p_value"] < 0.001  # the difference is shown, not declared


def test_three_variants_bonferroni():
    report = analyse(experiment(variants=3),
                     {"control": samples(1.0, 60), "treatment": samples(0.5, 60), "third": samples(0.98, 60)})
    assert report["alpha_per_comparison"] == pytest.approx(0.025)
    assert report["verdict"]["winner"] == "treatment"


# ---------------------------------------------------------------- assignment


def route_request(user: str | None, team: str = "t", rand: float = 0.5, promoted=None) -> RouteRequest:
    return RouteRequest(model="m", team=Team(team, None, None), user=user, stream=False,
                        now=datetime(2026, 11, 24, tzinfo=UTC), rand=rand,
                        promoted=promoted or {})


@pytest.mark.parametrize("weights", [(1, 1), (90, 10), (1, 2, 3)])
def test_assignment_distribution_within_tolerance_over_10000_subjects(weights):
    names = [f"v{i}" for i in range(len(weights))]
    exp = Experiment("dist", tuple((n, f"p/{n}", float(w)) for n, w in zip(names, weights, strict=True)), "user",
                     "cost", 100, 0.05, False)
    counts = dict.fromkeys(names, 0)
    for i in range(10_000):
        counts[assign_variant(exp, route_request(f"user-{i}"))] += 1
    expected = [10_000 * w / sum(weights) for w in weights]
    _, p = stats.chisquare([counts[n] for n in names], expected)
    assert p > 0.001, counts


def test_assignment_is_sticky_per_subject_and_independent_of_rand():
    exp = experiment()
    for i in range(200):
        first = assign_variant(exp, route_request(f"u{i}", rand=0.01))
        assert all(assign_variant(exp, route_request(f"u{i}", rand=r)) == first for r in (0.3, 0.99))
    team_exp = Experiment("t", exp.variants, "team", "cost", 10, 0.05, False)
    assert len({assign_variant(team_exp, route_request(f"u{i}", team="same")) for i in range(50)}) == 1
    request_exp = Experiment("r", exp.variants, "request", "cost", 10, 0.05, False)
    assert {assign_variant(request_exp, route_request("u", rand=r)) for r in (0.1, 0.9)} == {"control", "treatment"}


def test_assignment_draw_is_independent_of_the_percent_bucket():
    from proxy.routing import percent_bucket

    inside = [u for u in (f"u{i}" for i in range(20_000)) if percent_bucket("exp", u) < 10]
    draws = [assignment_draw("exp", u) for u in inside]
    assert 0.45 < sum(d < 0.5 for d in draws) / len(draws) < 0.55


def test_promoted_winner_takes_all_traffic():
    exp = experiment()
    assert {assign_variant(exp, route_request(f"u{i}", promoted={"exp": "treatment"})) for i in range(100)} == {
        "treatment"}


def test_decide_reports_experiment_and_variant():
    snapshot = snapshot_from_text("""
providers: {mock: {type: mock}}
teams: {t: {keys: [k]}}
routes:
  - name: ab
    match: {model: m}
    experiment:
      variants: {control: mock/a, cheap: {to: mock/b, weight: 3}}
    fallbacks: [mock/c]
""")
    decision = decide(snapshot, route_request("alice"))
    assert decision.experiment == "ab" and decision.variant in {"control", "cheap"}
    assert str(decision.target) == ("mock/a" if decision.variant == "control" else "mock/b")
    assert [str(t) for t in decision.fallbacks] == ["mock/c"]  # never the other variant


# ---------------------------------------------------------------- the live proxy

KEY, OTHER, ADMIN = "sk-exp-team-1", "sk-exp-team-2", "admin-exp-1"
CONFIG = f"""
server: {{admin_keys: ["{ADMIN}"]}}
ledger: {{path: ledger.db, flush_interval_s: 0.05}}
providers:
  fastmock: {{type: mock}}
  slowmock: {{type: mock, latency_ms: 25}}
pricing:
  fastmock/small: {{input: 1, output: 1}}
  slowmock/large: {{input: 10, output: 10}}
teams:
  t: {{keys: ["{KEY}"]}}
  other: {{keys: ["{OTHER}"]}}
routes:
  - name: ab
    match: {{model: ab}}
    experiment:
      name: size-test
      variants: {{large: slowmock/large, small: fastmock/small}}
      objective: latency
      min_samples: 20
      promote_when_significant: true
"""


@pytest.mark.integration
def test_experiment_through_the_served_proxy_reaches_the_right_verdict(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text(CONFIG)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with ServerProcess(path) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        seen: dict[str, str] = {}
        ids: dict[str, list[str]] = {"large": [], "small": []}
        for i in range(120):
            user = f"user-{i % 60}"
            r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                             "x-switchyard-user": user},
                            json=chat_body("ab", f"q{i}"))
            assert r.status_code == 200
            name, variant = r.headers["x-switchyard-experiment"].split(":")
            assert name == "size-test"
            assert seen.setdefault(user, variant) == variant  # sticky
            ids[variant].append(r.headers["x-request-id"])
        assert ids["large"] and ids["small"]

        # feedback: own requests only
        auth = {"Authorization": f"Bearer {KEY}"}
        ok = client.post("/v1/feedback", headers=auth, json={"request_id": ids["small"][0], "score": 0.9,
                                                             "comment": "good"})
        assert ok.status_code == 201
        other = client.post("/v1/feedback", headers={"Authorization": f"Bearer {OTHER}"},
                            json={"request_id": ids["small"][0], "score": 0.1})
        assert other.status_code == 404
        for bad, param in (({"request_id": ids["small"][0], "score": 2}, "score"),
                           ({"score": 0.5}, "request_id"),
                           ({"request_id": ids["small"][0], "score": 0.5, "extra": 1}, "extra")):
            r = client.post("/v1/feedback", headers=auth, json=bad)
            assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert client.post("/v1/feedback", headers=auth, json={"request_id": "req-nope", "score": 1}).status_code == 404

        report = client.get("/admin/experiments/size-test", headers=admin).json()
        assert report["verdict"]["winner"] == "small", report["verdict"]
        by_variant = {v["variant"]: v for v in report["variants"]}
        assert by_variant["large"]["latency_ms"]["mean"] > by_variant["small"]["latency_ms"]["mean"] + 15
        assert by_variant["small"]["feedback"]["n"] == 1
        assert report["comparisons"][0]["latency"]["p_value"] < 0.01
        assert report["promoted"] == "small" and report["events"][0]["event"] == "promoted"
        listing = client.get("/admin/experiments", headers=admin).json()["data"]
        assert listing[0]["experiment"] == "size-test" and listing[0]["promoted"] == "small"
        assert client.get("/admin/experiments/nope", headers=admin).status_code == 404

        for i in range(10):  # promoted: everyone gets the winner now
            r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                             "x-switchyard-user": f"user-{i}"},
                            json=chat_body("ab", "after"))
            assert r.headers["x-switchyard-experiment"] == "size-test:small"
        metrics = client.get("/metrics").text
        assert 'llm_experiment_requests_total{experiment="size-test",status="200",variant="small"}' in metrics
    cli = subprocess.run([sys.executable, "-m", "proxy", "experiments", "report", "size-test", "--config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "small wins" in cli.stdout and "latency" in cli.stdout
    as_json = subprocess.run([sys.executable, "-m", "proxy", "experiments", "report", "size-test", "--config",
                              str(path), "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert json.loads(as_json.stdout)["verdict"]["winner"] == "small"

