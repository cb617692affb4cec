"""Log formatting: which format, every line in it, and money without float noise."""

from __future__ import annotations

import io
import json
import logging
import warnings
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.telemetry.logs import JsonFormatter, TextFormatter, money, resolve_format


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize(
    ("env", "configured", "stream", "expected"),
    [
        (None, None, Terminal(), "text"),  # a person at a terminal reads text
        (None, None, io.StringIO(), "json"),  # a pipe, a file, a container's log: JSON
        (None, "auto", Terminal(), "text"),
        (None, "json", Terminal(), "json"),  # the config's choice wins over the guess
        (None, "text", io.StringIO(), "text"),
        ("json", "text", Terminal(), "json"),  # and the environment over the config
        ("TEXT", "json", io.StringIO(), "text"),
        ("yaml", None, io.StringIO(), "json"),  # not a format: ignored
        (None, None, Closed(), "json"),
    ],
)
def test_resolve_format(monkeypatch, env, configured, stream, expected):
    if env is None:
        monkeypatch.delenv("SWITCHYARD_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("SWITCHYARD_LOG_FORMAT", env)
    assert resolve_format(configured, stream) == expected


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, message, None, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_a_captured_warning_is_one_json_line():
    """logging.captureWarnings sends warnings.warn() through the same formatter."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        message = warnings.formatwarning("Precision loss occurred", RuntimeWarning, "/x/scipy.py", 12)
    line = JsonFormatter().format(record(message))
    assert "\n" not in line
    assert json.loads(line)["logger"] == "py.warnings" and "Precision loss" in json.loads(line)["message"]


def test_fields_and_text():
    rec = record("request", fields={"team": "a", "cost_usd": money(1.0949999999999998e-05), "user": None})
    data = json.loads(JsonFormatter().format(rec))
    assert data["team"] == "a" and data["cost_usd"] == 1.095e-05 and "message" not in data
    assert TextFormatter().format(rec).endswith("team=a cost_usd=1.095e-05")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [(0.000010949999999999998, 1.095e-05), (0.1 + 0.2, 0.3), (12.5, 12.5), (0.0, 0.0), (None, None), (3e-11, 0.0)],
)
def test_money(raw, shown):
    assert money(raw) == shown


def test_money_cuts_as_round_to_ten_decimals_does():
    import random

    draw = random.Random(7)
    amounts = [draw.random() * 10 ** draw.uniform(-9, 4) for _ in range(20_000)] + [-2.5e-6, 1e12, 5e-11, 4.9e-11]
    differ = [a for a in amounts if money(a) != round(a, 10)]
    # the same cut, but for amounts a hair from a half unit, where usd * 1e10's own rounding
    # (or round-half-even) lands on the other side: one unit of 1e-10 away, in a few of 20,000
    assert len(differ) <= 20 and all(abs(money(a) - round(a, 10)) < 1.01e-10
                                     for a in differ)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                 st.integers(-10**6, 10**6).map(lambda n: n + 0.5),  # every kind of half
                 st.floats(-1e6, 1e6), st.floats(-1, 1)))
def test_rounded_is_round(value):
    from proxy.pipeline.record import rounded

    assert rounded(value) == round(value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_rounded_refuses_what_round_refuses(value):
    from proxy.pipeline.record import rounded

    with pytest.raises((OverflowError, ValueError)) as raised:
        round(value)
    with pytest.raises(raised.type):
        rounded(value)


def test_money_leaves_what_cannot_be_cut():
    import math

    assert money(math.inf) == math.inf and money(-math.inf) == -math.inf and math.isnan(money(math.nan))
    assert money(1e295) == 1e295


@pytest.mark.parametrize(("millis", "stamp"), [
    (0, "1970-01-01T00:00:00.000Z"),
    (1796235684612, "2026-12-02T18:21:24.612Z"),  # .612 - whole came out as 611 from the float clock
    (1796235684001, "2026-12-02T18:21:24.001Z"),
    (1796235684999, "2026-12-02T18:21:24.999Z"),
    (1796235685000, "2026-12-02T18:21:25.000Z"),  # the next second's text, not the cached one
    (1796235684999, "2026-12-02T18:21:24.999Z"),  # and back
    (951782400000, "2000-02-29T00:00:00.000Z"),
])
def test_access_line_stamp_of_whole_milliseconds(millis, stamp):
    from proxy.telemetry.access_log import utc_stamp

    assert utc_stamp(millis) == stamp


def test_access_line_time_is_utc_to_the_millisecond():
    import calendar
    import re
    import time
    from datetime import UTC, datetime

    from proxy.telemetry.access_log import _utc_now

    # whole milliseconds compared as integers: float seconds carry about 0.24 µs of rounding
    # today, enough to put a stamp taken just past a millisecond's start "before" it
    for _ in range(2000):
        before = time.time_ns() // 1_000_000
        stamp = _utc_now()
        after = time.time_ns() // 1_000_000
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
        at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        at_ms = calendar.timegm(at.timetuple()) * 1000 + at.microsecond // 1000
        assert before <= at_ms <= after


# --- the access line: every field, in its order, whatever the record holds

_texts = st.one_of(st.none(), st.sampled_from(["search", "gpt-4o-mini", "fast", ""]),
                   st.text(max_size=12))  # quotes, backslashes, control characters, astral planes
_floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(min_value=-1e-3, max_value=1e-3), st.sampled_from([0.0, -0.0, 1e-7, 25e-6]))


@st.composite
def access_records(draw):
    from proxy.pipeline.record import RequestRecord

    record = RequestRecord(draw(st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True)),
                           draw(st.sampled_from(["chat", "embeddings", "text_completion"])))
    for name in ("endpoint", "outcome", "cache"):
        setattr(record, name, draw(st.text(max_size=8)))
    for name in ("team", "user", "requested_model", "route", "provider", "model", "error_kind", "experiment",
                 "variant"):
        setattr(record, name, draw(_texts))
    record.stream = draw(st.booleans())
    record.status = draw(st.integers(100, 599))
    record.prompt_id, record.prompt_version = draw(st.one_of(st.just((None, None)), st.tuples(_texts, _texts)))
    record.attempts = [SimpleNamespace(outcome=outcome) for outcome in draw(
        st.lists(st.sampled_from(["ok", "circuit_open", "refused", "status_5xx"]), max_size=3))]
    record.usage = draw(st.one_of(st.none(), st.fixed_dictionaries({
        "prompt_tokens": st.one_of(st.integers(-5, 2**63 - 1), st.none(), st.booleans()),
        "completion_tokens": st.integers(0, 10**6)})))
    record.cost_usd, record.saved_usd = draw(_floats), draw(_floats)
    record.started = 1000.0
    record.finished = 1000.0 + draw(st.floats(0, 1e6))
    record.upstream_started, record.upstream_answered = draw(st.one_of(
        st.just((None, None)), st.tuples(st.floats(1000, 1001), st.floats(1000, 1002))))
    record.response_started = draw(st.one_of(st.none(), st.floats(1000, 1003)))
    record.first_token_at = draw(st.one_of(st.none(), st.floats(1000, 1003)))
    return record


def _line_as_dict(record, ts):
    """The access line's keys and values, in order, written out independently of the template."""
    from proxy.pipeline.record import ms, tries

    counted = record.usage is not None
    input_tokens, output_tokens = record.tokens()
    return {
        "ts": ts, "level": "info", "logger": "switchyard.access", "request_id": record.request_id,
        "operation": record.operation, "endpoint": record.endpoint, "team": record.team, "user": record.user,
        "requested_model": record.requested_model, "route": record.route, "provider": record.provider,
        "model": record.model, "stream": record.stream, "status": record.status, "outcome": record.outcome,
        "error": record.error_kind, "cache": record.cache, "experiment": record.experiment,
        "variant": record.variant,
        "prompt": None if record.prompt_id is None else f"{record.prompt_id}@{record.prompt_version}",
        "attempts": tries(record.attempts),
        "input_tokens": input_tokens if counted else None, "output_tokens": output_tokens if counted else None,
        "cost_usd": money(record.cost_usd), "saved_usd": money(record.saved_usd),
        "latency_ms": ms(record.duration()),
        "ttft_ms": None if record.ttft() is None else ms(record.ttft()),
        "overhead_ms": ms(record.overhead()),
    }


@settings(max_examples=400, deadline=None)
@given(access_records())
def test_access_line_has_every_field_in_order(record):
    import orjson

    from proxy.telemetry.access_log import fields

    expected = _line_as_dict(record, "2026-12-03T12:00:00.000Z")
    assert orjson.dumps(fields(record, "2026-12-03T12:00:00.000Z")) == orjson.dumps(expected)
