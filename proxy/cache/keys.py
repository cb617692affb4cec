"""Cache keys: a hash of the canonical request after routing.

Two requests share a key exactly when they would get the same answer: the same
resolved `provider/model`, endpoint, scope, and every body field that can change the
answer. Fields that only change delivery or bookkeeping are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from proxy.key_hash import sha256_hex

# fields that never change the answer: how it is delivered, and who is billed or tagged
IGNORED_FIELDS: Final = frozenset({"model", "stream", "stream_options", "user", "metadata", "store", "service_tier"})

PREFIX = "sy:"  # cache.key_prefix's default; cache keys then start with sy:c:


def cache_key(*, scope: str, target: str, endpoint: str, body: Mapping[str, Any], prefix: str = PREFIX) -> str:
    """`<prefix>c:<scope>:<target>:<sha256>`; scope and target in clear so purges can match them."""
    canonical = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    digest = sha256_hex(orjson.dumps([endpoint, target, canonical], option=orjson.OPT_SORT_KEYS))
    return f"{prefix}c:{_safe(scope)}:{_safe(target)}:{digest}"


def purge_pattern(*, scope: str | None, model: str | None, prefix: str = PREFIX) -> str:
    """A Redis glob for the keys of one scope and/or one model (None: any).

    `model` is a target (`openai/gpt-4o`) or a bare upstream model name (`gpt-4o`,
    matching it under every provider).
    """
    scope_part = "*" if scope is None else _glob_escape(_safe(scope))
    if model is None:
        target_part = "*"
    elif "/" in model:
        target_part = _glob_escape(_safe(model))
    else:
        target_part = "*/" + _glob_escape(_safe(model))
    return f"{_glob_escape(prefix)}c:{scope_part}:{target_part}:*"


def _safe(text: str) -> str:
    """`text` with ':' (which separates key parts; model names may hold it: llama3:8b) and
    '%' escaped. Remembered: a few scopes and targets, on every cached request (compiled,
    a dict lookup; an lru_cache wrapper was a generic call each, twice a key)."""
    found = _SAFE.get(text)
    if found is None:
        found = text.replace("%", "%25").replace(":", "%3A")
        if len(_SAFE) < MAX_SAFE:
            _SAFE[text] = found
    return found


_SAFE: Final[dict[str, str]] = {}
MAX_SAFE: Final = 1024


def _glob_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)


# Beside the entries, under the same prefix: each entry's tallies (`<key>:s`, which purges of
# the entry match too), the hit-count index of all entries, the list of invalidations. The
# last two start `cx:`, which no purge pattern (`c:...`) matches.


def stats_key(key: str) -> str:
    return key + ":s"


def hits_index_key(prefix: str = PREFIX) -> str:
    return f"{prefix}cx:hits"


def invalidations_key(prefix: str = PREFIX) -> str:
    return f"{prefix}cx:invalidated"


def key_parts(key: str, prefix: str = PREFIX) -> tuple[str, str] | None:
    """(scope, target) of a cache key, unescaped; None for a key not made with this prefix."""
    head = f"{prefix}c:"
    if not key.startswith(head):
        return None
    parts = key[len(head):].split(":")
    if len(parts) != 3:
        return None
    return _unsafe(parts[0]), _unsafe(parts[1])


def _unsafe(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")
