"""A/B experiments: per-variant statistics from the ledger, significance tests, verdicts,
and promotion of a winner.

Each variant is compared with the first one listed (the control):
- cost and latency (and time to first token): Welch's t-test, Cohen's d as effect size;
- error rate: Fisher's exact test when any expected cell is below 5, else chi-square;
  the difference in rates as effect size;
- feedback scores: Mann-Whitney U, rank-biserial correlation as effect size.
With more than two variants, alpha is divided among the comparisons (Bonferroni).
A verdict names a winner on the experiment's objective only when every variant has
`min_samples` requests (so looking early cannot declare a winner) and the difference
is significant; otherwise the report says "no winner yet" and why.

Assignment itself is in routing.py (a stable hash of experiment and subject).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.accounting.ledger import LedgerReader
from proxy.prompts import Prompt
from proxy.snapshot import Experiment, Snapshot

log = logging.getLogger("switchyard.experiments")

LOWER_IS_BETTER = {"cost": True, "latency": True, "errors": True, "feedback": False}


# ---------------------------------------------------------------- statistics (pure)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean and a Student-t confidence interval (None when it cannot be had)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "ci_low": None, "ci_high": None}
    from scipy import stats

    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> dict[str, Any]:
    """A rate with its Wilson score interval."""
    if n == 0:
        return {"n": 0, "rate": None, "ci_low": None, "ci_high": None}
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "count": successes, "rate": p, "ci_low": max(0.0, centre - half),
            "ci_high": min(1.0, centre + half)}


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of b against a; effect size Cohen's d (pooled sd), positive when b is larger."""
    if len(a) < 2 or len(b) < 2:
        return {"test": "welch_t", "p_value": None, "effect_size": None, "statistic": None}
    from scipy import stats

    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        same = statistics.fmean(a) == statistics.fmean(b)
        # no spread at all: the difference is certain, a standardised effect undefined
        return {"test": "welch_t", "p_value": 1.0 if same else 0.0, "statistic": None,
                "effect_size": 0.0 if same else None}
    result, notes = _quietly(stats.ttest_ind, b, a, equal_var=False)
    pooled = math.sqrt(((len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b))
                       / (len(a) + len(b) - 2))
    d = (statistics.fmean(b) - statistics.fmean(a)) / pooled if pooled > 0 else 0.0
    return {"test": "welch_t", "p_value": float(result.pvalue), "statistic": float(result.statistic),
            "effect_size": d, **notes}


def _quietly(test: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    """Run a scipy test, turning its warnings (precision loss on nearly identical samples,
    say) into a `note` on the result instead of a stray line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = test(*args, **kwargs)
    notes = sorted({str(w.message) for w in caught})
    return result, ({"note": " ".join(notes)} if notes else {})


def rate_test(errors_a: int, n_a: int, errors_b: int, n_b: int) -> dict[str, Any]:
    """Fisher's exact test when counts are small, else chi-square; effect: rate_b - rate_a."""
    if n_a == 0 or n_b == 0:
        return {"test": None, "p_value": None, "effect_size": None}
    from scipy import stats

    table = [[errors_a, n_a - errors_a], [errors_b, n_b - errors_b]]
    total_errors, total = errors_a + errors_b, n_a + n_b
    expected = [n * k / total for n in (n_a, n_b) for k in (total_errors, total - total_errors)]
    effect = errors_b / n_b - errors_a / n_a
    if total_errors == 0 or total_errors == total:
        return {"test": "none_needed", "p_value": 1.0, "effect_size": effect}
    if min(expected) < 5:
        fisher, notes = _quietly(stats.fisher_exact, table)
        return {"test": "fisher_exact", "p_value": float(fisher[1]), "effect_size": effect, **notes}
    (chi2, p, _, _), notes = _quietly(stats.chi2_contingency, table)
    return {"test": "chi_square", "p_value": float(p), "statistic": float(chi2), "effect_size": effect, **notes}


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mann-Whitney U of b against a; effect: rank-biserial correlation (positive: b higher)."""
    if not a or not b:
        return {"test": "mann_whitney_u", "p_value": None, "effect_size": None}
    from scipy import stats

    if len(set(a) | set(b)) == 1:
        return {"test": "mann_whitney_u", "p_value": 1.0, "effect_size": 0.0}
    result, notes = _quietly(stats.mannwhitneyu, b, a, alternative="two-sided")
    r = 2 * float(result.statistic) / (len(a) * len(b)) - 1
    return {"test": "mann_whitney_u", "p_value": float(result.pvalue), "statistic": float(result.statistic),
            "effect_size": r, **notes}


# ---------------------------------------------------------------- samples and the report


@dataclass
class Samples:
    cost: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    feedback: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0


async def load_samples(reader: LedgerReader, experiment: str) -> dict[str, Samples]:
    return await _samples(reader, "variant", "r.experiment = ?", (experiment,))


async def _samples(reader: LedgerReader, group: str, where: str, params: tuple[Any, ...]) -> dict[str, Samples]:
    """Samples per value of the ledger column `group` among the rows `where` selects."""
    rows = await reader.query(
        f"SELECT r.{group} AS arm, r.cost_usd AS cost, r.latency_ms AS latency, r.ttft_ms AS ttft, "
        "r.status AS status, r.cache AS cache, f.score AS score "
        "FROM requests r LEFT JOIN (SELECT request_id, AVG(score) AS score FROM feedback GROUP BY request_id) f "
        f"ON f.request_id = r.id WHERE {where}",
        params,
    )
    out: dict[str, Samples] = {}
    for row in rows:
        s = out.setdefault(row["arm"], Samples())
        s.requests += 1
        if row["status"] >= 500:
            s.errors += 1
        if row["cost"] is not None and row["cache"] != "hit":
            s.cost.append(row["cost"])
        if row["latency"] is not None and row["status"] < 400:
            s.latency_ms.append(row["latency"])
        if row["ttft"] is not None:
            s.ttft_ms.append(row["ttft"])
        if row["score"] is not None:
            s.feedback.append(row["score"])
    return out


def analyse(experiment: Experiment, samples: dict[str, Samples]) -> dict[str, Any]:
    names = [name for name, _, _ in experiment.variants]
    control = names[0]
    alpha = experiment.alpha / max(len(names) - 1, 1)  # Bonferroni over the comparisons
    variants = []
    for name, target, weight in experiment.variants:
        s = samples.get(name, Samples())
        variants.append({"variant": name, "target": target, "weight": weight,
                         **describe(s, experiment.objective, experiment.min_samples)})
    base = samples.get(control, Samples())
    comparisons = []
    for name in names[1:]:
        s = samples.get(name, Samples())
        comparisons.append({
            "variant": name, "against": control,
            "cost": welch(base.cost, s.cost),
            "latency": welch(base.latency_ms, s.latency_ms),
            "errors": rate_test(base.errors, base.requests, s.errors, s.requests),
            "feedback": mann_whitney(base.feedback, s.feedback),
        })
    return {
        "experiment": experiment.name, "objective": experiment.objective, "sticky": experiment.sticky,
        "alpha": experiment.alpha, "alpha_per_comparison": alpha, "min_samples": experiment.min_samples,
        "control": control, "variants": variants, "comparisons": comparisons,
        "verdict": verdict(experiment, variants, comparisons, alpha),
    }


def describe(s: Samples, objective: str, min_samples: int) -> dict[str, Any]:
    """One arm's numbers: requests, means with their intervals, error rate, feedback."""
    return {
        "requests": s.requests, "cost_usd": mean_ci(s.cost), "latency_ms": mean_ci(s.latency_ms),
        "ttft_ms": mean_ci(s.ttft_ms), "error_rate": proportion_ci(s.errors, s.requests),
        "feedback": mean_ci(s.feedback), "min_samples_reached": _samples_for(objective, s) >= min_samples,
    }


def _samples_for(objective: str, s: Samples) -> int:
    return {"cost": len(s.cost), "latency": len(s.latency_ms), "feedback": len(s.feedback)}.get(objective, s.requests)


def _objective_mean(objective: str, variant: dict[str, Any]) -> float | None:
    if objective == "errors":
        rate: float | None = variant["error_rate"]["rate"]
        return rate
    key = {"cost": "cost_usd", "latency": "latency_ms", "feedback": "feedback"}[objective]
    mean: float | None = variant[key]["mean"]
    return mean


def verdict(experiment: Experiment, variants: list[dict[str, Any]], comparisons: list[dict[str, Any]],
            alpha: float) -> dict[str, Any]:
    objective = experiment.objective
    short = [v["variant"] for v in variants if not v["min_samples_reached"]]
    if short:
        return {"winner": None, "status": "no winner yet",
                "reason": f"fewer than min_samples ({experiment.min_samples}) {objective} samples for "
                          f"{', '.join(short)}: results so far are not evidence (no peeking)"}
    lower = LOWER_IS_BETTER[objective]
    by_name = {v["variant"]: v for v in variants}
    control = variants[0]["variant"]
    significant = [c for c in comparisons
                   if c[objective]["p_value"] is not None and c[objective]["p_value"] < alpha]
    if not significant:
        return {"winner": None, "status": "no winner yet",
                "reason": f"no variant differs from {control} on {objective} at alpha {alpha:g}"}
    means = {name: _objective_mean(objective, v) for name, v in by_name.items()}
    # the best of the control and the variants that differ from it significantly
    candidates = [control] + [c["variant"] for c in significant]
    pick = min if lower else max
    missing = math.inf if lower else -math.inf  # a variant without samples is never the best

    def mean_of(name: str) -> float:
        value = means[name]
        return missing if value is None else value

    winner = pick(candidates, key=mean_of)
    if winner == control:
        reason = (f"{control} is significantly better on {objective} than "
                  + ", ".join(c["variant"] for c in significant))
    else:
        p = next(c[objective]["p_value"] for c in significant if c["variant"] == winner)
        reason = f"{winner} is significantly {'lower' if lower else 'higher'} on {objective} than {control} (p={p:.3g})"
    return {"winner": winner, "status": "significant", "reason": reason}


# ---------------------------------------------------------------- promotion state


class ExperimentState:
    """Winners promoted at run time (the YAML is not rewritten), and the events that did it."""

    def __init__(self) -> None:
        self.promoted: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []

    def consider(self, experiment: Experiment, report: dict[str, Any]) -> None:
        winner = report["verdict"]["winner"]
        if not experiment.promote or winner is None or self.promoted.get(experiment.name) == winner:
            return
        self.promoted[experiment.name] = winner
        event = {"event": "promoted", "experiment": experiment.name, "variant": winner, "at": time.time(),
                 "reason": report["verdict"]["reason"]}
        self.events.append(event)
        log.warning("experiment %s: promoted %s to all traffic (%s)", experiment.name, winner, event["reason"])

    def forget_missing(self, snapshot: Snapshot) -> None:
        names = {r.experiment.name for r in snapshot.routes if r.experiment is not None}
        for name in [n for n in self.promoted if n not in names]:
            del self.promoted[name]


def experiments_of(snapshot: Snapshot) -> dict[str, Experiment]:
    return {r.experiment.name: r.experiment for r in snapshot.routes if r.experiment is not None}


async def report(reader: LedgerReader | None, experiment: Experiment) -> dict[str, Any]:
    samples = await load_samples(reader, experiment.name) if reader is not None else {}
    return analyse(experiment, samples)


# ---------------------------------------------------------------- prompt versions


async def prompt_report(reader: LedgerReader | None, prompt: Prompt) -> dict[str, Any]:
    """A registered prompt's versions compared as an experiment's variants are: the active
    version is the control, the `testing` ones are tested against it on the prompt's
    objective; the others (draft, deprecated, and versions gone from the config that the
    ledger still holds) are described but take no part in the verdict."""
    samples = await _samples(reader, "prompt_version", "r.prompt = ?", (prompt.id,)) if reader is not None else {}
    return analyse_prompt(prompt, samples)


def analyse_prompt(prompt: Prompt, samples: dict[str, Samples]) -> dict[str, Any]:
    compared = [prompt.active] + [name for name, v in prompt.versions.items()
                                  if v.status == "testing" and name != prompt.active]
    arms = tuple((name, prompt.versions[name].model, 1.0) for name in compared)
    if len(arms) > 1:
        as_experiment = Experiment(f"prompt {prompt.id}", arms, "request", prompt.objective, prompt.min_samples,
                                   prompt.alpha, False)
        analysed = analyse(as_experiment, samples)
        comparisons = [{"version": c.pop("variant"), **c} for c in analysed["comparisons"]]
        verdict_of = analysed["verdict"]
    else:
        comparisons = []
        verdict_of = {"winner": None, "status": "nothing to compare",
                      "reason": f"no version of {prompt.id} has status testing beside the active {prompt.active}"}
    others = [name for name in prompt.versions if name not in compared]
    others += sorted(name for name in samples if name not in prompt.versions)
    versions = []
    for name in compared + others:
        version = prompt.versions.get(name)
        versions.append({
            "version": name, "status": version.status if version is not None else "removed",
            "model": version.model if version is not None else None, "compared": name in compared,
            **describe(samples.get(name, Samples()), prompt.objective, prompt.min_samples),
        })
    return {
        "object": "prompt.report", "prompt": prompt.id, "active": prompt.active, "control": prompt.active,
        "objective": prompt.objective, "alpha": prompt.alpha,
        "alpha_per_comparison": prompt.alpha / max(len(compared) - 1, 1), "min_samples": prompt.min_samples,
        "versions": versions, "comparisons": comparisons, "verdict": verdict_of,
    }
