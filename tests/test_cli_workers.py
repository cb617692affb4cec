"""`serve --workers N` says which state each worker would keep for itself."""

from __future__ import annotations

import pytest

from proxy.cli import split_state
from proxy.snapshot import snapshot_from_text

BASE = """
providers: {mock: {type: mock}}
teams: {t: {keys: [sk-t]{limits}}}
routes: [{name: r, match: {model: "*"}, to: mock/x}]
"""


def warnings(extra: str = "", limits: bool = False) -> list[str]:
    text = BASE.replace("{limits}", ", limits: {rpm: 10}" if limits else "") + extra
    return split_state(snapshot_from_text(text))


@pytest.mark.parametrize(
    ("extra", "limits", "expected"),
    [
        ("", False, ["stored responses"]),  # cache off: stored responses default to memory
        ("", True, ["accounting.backend: memory", "stored responses"]),
        ("accounting: {backend: redis}", True, ["stored responses"]),
        ("cache: {backend: redis}", False, []),  # auto: stored responses follow the cache to Redis
        ("cache: {backend: redis}\naccounting: {backend: redis}", True, []),
        ("cache: {backend: memory}", False, ["stored responses", "cache.backend: memory"]),
        ("cache: {backend: redis}\nresponses: {store: memory}", False, ["stored responses"]),
        ("responses: {store: off}", False, []),
        ("responses: {store: redis}", False, []),
    ],
)
def test_what_would_split_between_workers_is_named(extra, limits, expected):
    found = warnings(extra, limits)
    assert len(found) == len(expected), found
    for prefix, warning in zip(expected, found, strict=True):
        assert warning.startswith(prefix), warning
