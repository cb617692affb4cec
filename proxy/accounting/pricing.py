"""Prices and cost: USD per 1M tokens, from the shipped `proxy/data/pricing.yaml` (or
`$SWITCHYARD_PRICING`) overlaid by `pricing:`.

A target is priced by the first entry found among: the exact `provider/model`; the
`vendor/model` a router names (`openrouter/openai/gpt-4o` → `openai/gpt-4o`); the bare
model name under any vendor (`mock/gpt-4o-mini` → `openai/gpt-4o-mini`); and each of
those again without a trailing date (`gpt-4o-2024-08-06` → `gpt-4o`). An unknown price
gives cost None, never an exception; the caller warns once per target.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from proxy.telemetry.logs import Throttled

log = logging.getLogger("switchyard.pricing")

_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


@dataclass(frozen=True, slots=True)
class Price:
    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Mapping[str, Any]) -> float:
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        details = usage.get("prompt_tokens_details")
        cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
        cached = min(cached, prompt)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        return ((prompt - cached) * self.input + cached * cached_rate + completion * self.output) / 1_000_000


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class PriceTable:
    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._exact = MappingProxyType(dict(prices))
        by_model: dict[str, Price] = {}
        for name, price in prices.items():
            by_model.setdefault(name.split("/", 1)[1] if "/" in name else name, price)
        self._by_model = MappingProxyType(by_model)
        self._memo: dict[str, Price | None] = {}

    def __len__(self) -> int:
        return len(self._exact)

    def names(self) -> tuple[str, ...]:
        return tuple(self._exact)

    def price(self, target: str) -> Price | None:
        try:
            return self._memo[target]
        except KeyError:
            pass
        found = self._lookup(target)
        if len(self._memo) < 4096:  # templated routes can name anything: keep the memo bounded
            self._memo[target] = found
        return found

    def _lookup(self, target: str) -> Price | None:
        provider, _, model = target.partition("/")
        for name in (target, model):
            for candidate in (name, _DATE_SUFFIX.sub("", name)):
                found = self._exact.get(candidate) or self._by_model.get(candidate)
                if found is not None:
                    return found
        return None

    def estimate(self, target: str, body_bytes: int, max_output_tokens: int | None) -> float:
        """What a request may cost before it is sent: its body read as input tokens (about four
        bytes each, an overestimate for JSON) and its output cap, if it set one. 0 when unpriced."""
        price = self.price(target)
        if price is None:
            return 0.0
        return (body_bytes / 4 * price.input + (max_output_tokens or 0) * price.output) / 1_000_000

    def cost(self, target: str, usage: Mapping[str, Any] | None) -> float | None:
        if not usage:
            return None
        price = self.price(target)
        return None if price is None else price.cost(usage)


SHIPPED = "the shipped price list"  # how load_prices names the package's own file in errors


def pricing_source() -> str | None:
    """The price list to load: `$SWITCHYARD_PRICING` when set, else None (the one shipped
    inside the package, so an installed switchyard prices requests wherever it runs)."""
    return os.environ.get("SWITCHYARD_PRICING") or None


def load_prices(path: str | None = None) -> dict[str, Price]:
    """The price list (the shipped one for None); each entry is checked by the same schema as `pricing:`."""
    from pydantic import ValidationError

    from proxy.config import ConfigError, PriceConfig, validation_problems

    where = path or SHIPPED
    try:
        if path is None:
            text = resources.files("proxy.data").joinpath("pricing.yaml").read_text(encoding="utf-8")
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        raw = yaml.safe_load(text) or {}
    except OSError as exc:
        hint = " (set by SWITCHYARD_PRICING)" if path is not None and path == pricing_source() else ""
        raise ConfigError([(where, f"cannot read the price list{hint}: {exc.strerror or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(where, f"cannot read the price list: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([(where, "the price list must be a mapping of vendor/model to prices")])
    prices = {}
    for name, fields in raw.items():
        try:
            p = PriceConfig.model_validate(fields)
        except ValidationError as exc:
            raise ConfigError(validation_problems(exc, f"{where}: {name}")) from None
        prices[name] = Price(p.input, p.output, p.cached_input)
    return prices


# a price named in the config warns once an hour per target; client-chosen targets (a
# templated route) share one throttled line, so invented model names cannot flood the log
_unpriced = Throttled(log, interval_s=3600, max_keys=1024)


def warn_unpriced(target: str, known: bool = True) -> None:
    """Log that a target's cost is unknown, at most once an hour per configured target."""
    _unpriced.warning(target if known else "<client-named targets>",
                      "no price for %s: its cost is recorded as unknown (add it under pricing: in proxy.yaml)",
                      target)
