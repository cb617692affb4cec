"""Prices and cost: the lookup order, `pricing:` overrides, unknown prices, arithmetic."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.accounting import pricing
from proxy.accounting.pricing import Price, PriceTable, load_prices, pricing_source, warn_unpriced
from proxy.config import ConfigError
from proxy.snapshot import snapshot_from_text
from proxy.telemetry.logs import Throttled

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "proxy" / "data" / "pricing.yaml"

TABLE = PriceTable(
    {
        "openai/gpt-4o": Price(2.5, 10.0, 1.25),
        "openai/gpt-4o-mini": Price(0.15, 0.6, 0.075),
        "openai/gpt-4o-2024-05-13": Price(5.0, 15.0),
        "anthropic/claude-sonnet-4-5": Price(3.0, 15.0, 0.3),
        "openrouter/openai/gpt-4o": Price(2.75, 11.0),  # a router's own markup
        "acme/gpt-4o-mini": Price(9.0, 9.0),  # a second vendor for a bare name: the first one wins
    }
)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        # the exact provider/model
        ("openai/gpt-4o", Price(2.5, 10.0, 1.25)),
        ("openrouter/openai/gpt-4o", Price(2.75, 11.0)),  # exact beats the vendor/model it names
        ("acme/gpt-4o-mini", Price(9.0, 9.0)),
        # the vendor/model a router names
        ("azure/openai/gpt-4o-mini", Price(0.15, 0.6, 0.075)),
        ("openrouter/anthropic/claude-sonnet-4-5", Price(3.0, 15.0, 0.3)),
        # the bare model name under any vendor (the first vendor listed)
        ("mock/gpt-4o-mini", Price(0.15, 0.6, 0.075)),
        ("mock/claude-sonnet-4-5", Price(3.0, 15.0, 0.3)),
        # without a trailing date, in each of its spellings
        ("openai/gpt-4o-2024-08-06", Price(2.5, 10.0, 1.25)),
        ("openai/gpt-4o-mini-2024-07-18", Price(0.15, 0.6, 0.075)),
        ("anthropic/claude-sonnet-4-5-20250929", Price(3.0, 15.0, 0.3)),
        ("openai/gpt-4o-0613", Price(2.5, 10.0, 1.25)),
        ("mock/gpt-4o-mini-2024-07-18", Price(0.15, 0.6, 0.075)),
        ("openrouter/anthropic/claude-sonnet-4-5-20250929", Price(3.0, 15.0, 0.3)),
        # an exact dated entry beats stripping the date
        ("openai/gpt-4o-2024-05-13", Price(5.0, 15.0)),
        # unknown
        ("openai/gpt-9", None),
        ("mock/unknown-model", None),
        ("gpt-4o-mini-turbo", None),
        ("openai/gpt-4o-2024", Price(2.5, 10.0, 1.25)),  # a four-digit suffix counts as a date
        ("openai/gpt-4o-08-06", None),  # not a date form
        ("", None),
    ],
)
def test_lookup_order(target, expected):
    assert TABLE.price(target) == expected


def test_lookup_is_memoized_and_stable():
    table = PriceTable({"openai/gpt-4o": Price(1, 2)})
    first = table.price("mock/gpt-4o-2024-08-06")
    assert first == Price(1, 2)
    assert table.price("mock/gpt-4o-2024-08-06") is first
    assert table.price("nope/x") is None and table.price("nope/x") is None


def test_names_and_len():
    assert len(TABLE) == 6
    assert "openrouter/openai/gpt-4o" in TABLE.names()


# ---------------------------------------------------------------- cost arithmetic

GPT4O = Price(2.5, 10.0, 1.25)


@pytest.mark.parametrize(
    ("price", "usage", "expected"),
    [
        (GPT4O, {"prompt_tokens": 1_000_000, "completion_tokens": 0}, 2.5),
        (GPT4O, {"prompt_tokens": 0, "completion_tokens": 1_000_000}, 10.0),
        (GPT4O, {"prompt_tokens": 1000, "completion_tokens": 500}, (1000 * 2.5 + 500 * 10) / 1e6),
        # cached input tokens are part of prompt_tokens and priced at the cached rate
        (
            GPT4O,
            {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 400}},
            (600 * 2.5 + 400 * 1.25 + 500 * 10) / 1e6,
        ),
        # more cached than prompt tokens: capped at the prompt
        (
            GPT4O,
            {"prompt_tokens": 100, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 500}},
            100 * 1.25 / 1e6,
        ),
        # no cached rate: cached tokens cost the input rate
        (
            Price(2.0, 4.0),
            {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 400}},
            (1000 * 2.0 + 10 * 4.0) / 1e6,
        ),
        (GPT4O, {"prompt_tokens": 10, "completion_tokens": 10, "prompt_tokens_details": None}, (25 + 100) / 1e6),
        (GPT4O, {"prompt_tokens": 10, "completion_tokens": 10, "prompt_tokens_details": {}}, (25 + 100) / 1e6),
        # Anthropic-style names
        (GPT4O, {"input_tokens": 1000, "output_tokens": 100}, (1000 * 2.5 + 100 * 10) / 1e6),
        # garbage counts count as zero
        (GPT4O, {"prompt_tokens": -5, "completion_tokens": "7"}, 0.0),
        (GPT4O, {"prompt_tokens": True, "completion_tokens": 1.5}, 0.0),
        (GPT4O, {"prompt_tokens": None, "completion_tokens": None}, 0.0),
        (GPT4O, {}, 0.0),
        # embeddings: no output price
        (Price(0.02, 0), {"prompt_tokens": 1_000_000, "total_tokens": 1_000_000}, 0.02),
        (Price(0, 0), {"prompt_tokens": 1000, "completion_tokens": 1000}, 0.0),
    ],
)
def test_cost(price, usage, expected):
    assert price.cost(usage) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("target", "usage", "expected"),
    [
        ("openai/gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 1000}, (2500 + 10000) / 1e6),
        ("openrouter/openai/gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 1000}, (2750 + 11000) / 1e6),
        ("openai/gpt-9", {"prompt_tokens": 1000, "completion_tokens": 1000}, None),  # unknown price: unknown cost
        ("openai/gpt-4o", None, None),  # no usage: unknown cost
        ("openai/gpt-4o", {}, None),
    ],
)
def test_table_cost(target, usage, expected):
    cost = TABLE.cost(target, usage)
    if expected is None:
        assert cost is None
    else:
        assert cost == pytest.approx(expected)


# ---------------------------------------------------------------- unknown price warning


def test_unknown_price_warns_once_per_target(monkeypatch, caplog):
    monkeypatch.setattr(pricing, "_unpriced", Throttled(pricing.log, interval_s=3600))
    with caplog.at_level(logging.WARNING, logger="switchyard.pricing"):
        for _ in range(3):
            warn_unpriced("mock/unpriced-a")
        warn_unpriced("mock/unpriced-b")
        for i in range(500):  # names clients invent through a templated route: one line for them all
            warn_unpriced(f"up/invented-{i}", known=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "switchyard.pricing"]
    assert len(messages) == 3
    assert "no price for mock/unpriced-a" in messages[0]
    assert "pricing:" in messages[0]  # says how to fix it
    assert "mock/unpriced-b" in messages[1]
    assert "up/invented-0" in messages[2]


def test_throttled_lines_say_how_often_they_recurred():
    now = [0.0]
    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("switchyard.test-throttle")
    logger.addHandler(Sink())
    throttled = Throttled(logger, interval_s=10, max_keys=2, clock=lambda: now[0])
    assert throttled.warning("a", "problem %s", "a")
    assert not throttled.warning("a", "problem %s", "a")
    now[0] = 11
    assert throttled.warning("a", "problem %s", "a")
    throttled.warning("b", "b")
    throttled.warning("c", "c")  # over max_keys: the oldest key is forgotten
    assert throttled.warning("a", "problem %s", "a")
    assert records == ["problem a", "problem a (and 1 more times in the last 10 s)", "b", "c", "problem a"]


# ---------------------------------------------------------------- the shipped list and overrides


def test_shipped_price_list_loads():
    prices = load_prices(str(SHIPPED))
    assert len(prices) >= 30
    assert prices["openai/gpt-4o"] == Price(2.5, 10.0, 1.25)
    assert prices["openai/text-embedding-3-small"].output == 0
    for name, price in prices.items():
        assert "/" in name, name
        assert price.input >= 0 and price.output >= 0
        assert price.cached_input is None or price.cached_input <= price.input, name


def test_the_shipped_list_is_package_data_and_the_environment_overrides_it(monkeypatch, tmp_path):
    monkeypatch.delenv("SWITCHYARD_PRICING", raising=False)
    assert pricing_source() is None
    assert load_prices() == load_prices(str(SHIPPED))  # read through importlib.resources
    other = tmp_path / "other.yaml"
    other.write_text("x/z: {input: 1, output: 1}\n")
    monkeypatch.setenv("SWITCHYARD_PRICING", str(other))
    assert pricing_source() == str(other)
    s = snapshot_from_text("", env={})
    assert s.prices.price("x/z") == Price(1, 1) and s.prices.price("openai/gpt-4o") is None


def test_a_missing_pricing_file_named_by_the_environment_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SWITCHYARD_PRICING", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError) as exc:
        snapshot_from_text("", env={})
    (where, reason), = exc.value.problems
    assert where == str(tmp_path / "nope.yaml")
    assert reason.startswith("cannot read the price list (set by SWITCHYARD_PRICING)")


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("- a\n- b\n", "", "the price list must be a mapping of vendor/model to prices"),
        ("x/y: {input: 1}\n", ": x/y.output", "required"),
        ("x/y: {input: -1, output: 1}\n", ": x/y.input", "Input should be greater than or equal to 0"),
        ("x/y: {input: 1, output: 1, extra: 2}\n", ": x/y.extra", "unknown key"),
        ("x/y: [1, 2]\n", ": x/y", "Input should be a valid dictionary or instance of PriceConfig"),
    ],
)
def test_bad_price_list_names_entry_field_and_reason(tmp_path, text, where, reason):
    path = tmp_path / "pricing.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_prices(str(path))
    assert exc.value.problems == [(str(path) + where, reason)]


def test_unreadable_price_list(tmp_path):
    path = tmp_path / "pricing.yaml"
    path.write_text("x/y: {input: [\n")
    with pytest.raises(ConfigError) as exc:
        load_prices(str(path))
    assert exc.value.problems[0][1].startswith("cannot read the price list")


def test_proxy_yaml_pricing_overrides_and_extends_the_shipped_list():
    s = snapshot_from_text(
        """
pricing:
  openai/gpt-4o: {input: 1.0, output: 2.0}
  openrouter/openai/gpt-4o: {input: 3.0, output: 4.0, cached_input: 0.5}
  inhouse/llama-local: {input: 0, output: 0}
""",
        env={},
    )
    assert s.prices.price("openai/gpt-4o") == Price(1.0, 2.0)
    assert s.prices.price("openai/gpt-4o-2024-08-06") == Price(1.0, 2.0)
    assert s.prices.price("mock/gpt-4o") == Price(1.0, 2.0)
    assert s.prices.price("openrouter/openai/gpt-4o") == Price(3.0, 4.0, 0.5)
    assert s.prices.price("inhouse/llama-local") == Price(0, 0)
    assert s.prices.price("openai/gpt-4o-mini") == Price(0.15, 0.6, 0.075)  # untouched shipped entry
    assert s.prices.cost("inhouse/llama-local", {"prompt_tokens": 10, "completion_tokens": 10}) == 0.0
    assert "inhouse/llama-local" in s.known_targets


def test_snapshot_without_overrides_uses_the_shipped_list():
    s = snapshot_from_text("", env={})
    assert len(s.prices) == len(load_prices(str(SHIPPED)))


@pytest.mark.parametrize("amount, text", [
    (0.0, b"0"),
    (-0.0, b"0"),
    (1e-11, b"0"),  # below ten decimals
    (0.0001825, b"0.0001825"),
    (0.000010949999999999998, b"0.00001095"),  # float noise cut at ten decimals
    (2.5, b"2.5"),
    (3.0, b"3"),
    (1234.5678901234, b"1234.5678901234"),
    (0.1 + 0.2, b"0.3"),
])
def test_cost_header_values(amount: float, text: bytes) -> None:
    from proxy.pipeline.endpoint import _usd

    assert _usd(amount) == text
    assert _usd(amount) == text  # remembered: the same again


def test_cost_header_values_stay_right_past_the_remembered_bound() -> None:
    from proxy.pipeline import endpoint

    endpoint._USD_TEXT.clear()  # (the compiled module holds this very dict: it is not replaced)
    amounts = [n / 1e6 for n in range(1, endpoint.MAX_USD_TEXTS * 2 + 10)]
    assert [endpoint._usd(a) for a in amounts] == [format(a, ".10f").rstrip("0").encode() for a in amounts]
    assert len(endpoint._USD_TEXT) <= endpoint.MAX_USD_TEXTS
