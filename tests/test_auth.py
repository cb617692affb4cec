"""API keys: plain and sha256 keys, Bearer and api-key headers, wrong and missing keys."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from proxy.auth import authenticate, authenticate_admin, presented_key, redact
from proxy.errors import AdminForbidden, InvalidApiKey
from proxy.snapshot import snapshot_from_text

SEARCH_KEY = "sk-search-plain-0001"
RESEARCH_KEY = "sk-research-hashed-0002"
ENV_KEY = "sk-from-env-0003"
ADMIN_KEY = "admin-key-0004"
RESEARCH_HASH = hashlib.sha256(RESEARCH_KEY.encode()).hexdigest()
ADMIN_HASH = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()

POLICY = f"""
server: {{admin_keys: ["sha256:{ADMIN_HASH}", "${{SECOND_ADMIN}}"]}}
teams:
  search: {{keys: [{SEARCH_KEY}]}}
  research: {{keys: ["sha256:{RESEARCH_HASH.upper()}"]}}
  ops: {{keys: ["${{OPS_KEY}}", "${{UNSET_KEY}}"]}}
"""


@pytest.fixture(scope="module")
def snap():
    return snapshot_from_text(POLICY, env={"OPS_KEY": ENV_KEY, "SECOND_ADMIN": "admin-plain"})


# ---------------------------------------------------------------- which header carries the key


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer sk-1"}, "sk-1"),
        ({"authorization": "bearer sk-1"}, "sk-1"),
        ({"authorization": "BEARER sk-1"}, "sk-1"),
        ({"authorization": "Bearer   sk-1  "}, "sk-1"),
        ({"api-key": "sk-2"}, "sk-2"),
        ({"api-key": "  sk-2 "}, "sk-2"),
        ({"authorization": "Bearer sk-1", "api-key": "sk-2"}, "sk-1"),  # Authorization wins
        ({"authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"authorization": "Bearer"}, None),
        ({"authorization": "Bearer    "}, None),
        ({"authorization": "sk-1"}, None),  # no scheme
        ({"api-key": ""}, None),
        ({"api-key": "   "}, None),
        ({}, None),
        ({"x-api-key": "sk-3"}, "sk-3"),  # Anthropic's SDK sends it there
        ({"x-api-key": "  "}, None),
    ],
)
def test_presented_key(headers, expected):
    assert presented_key(headers) == expected


# ---------------------------------------------------------------- key -> team


@pytest.mark.parametrize(
    ("headers", "team"),
    [
        ({"authorization": f"Bearer {SEARCH_KEY}"}, "search"),
        ({"api-key": SEARCH_KEY}, "search"),
        ({"authorization": f"Bearer {RESEARCH_KEY}"}, "research"),  # stored as sha256 (upper-case hex)
        ({"api-key": RESEARCH_KEY}, "research"),
        ({"authorization": f"Bearer {ENV_KEY}"}, "ops"),  # plain, from ${OPS_KEY}
    ],
)
def test_authenticate(snap, headers, team):
    assert authenticate(snap, headers).name == team


@pytest.mark.parametrize(
    "key",
    [
        "sk-wrong",
        SEARCH_KEY.upper(),  # keys are case sensitive
        SEARCH_KEY + " x",
        SEARCH_KEY[:-1],
        f"sha256:{RESEARCH_HASH}",  # the stored hash is not itself a key
        RESEARCH_HASH,
        "${OPS_KEY}",
        "${UNSET_KEY}",
        ADMIN_KEY,  # an admin key is not a team key
    ],
)
def test_wrong_key_is_401_and_not_echoed(snap, key):
    with pytest.raises(InvalidApiKey) as exc:
        authenticate(snap, {"authorization": f"Bearer {key}"})
    err = exc.value
    assert (err.status, err.type, err.code) == (401, "invalid_request_error", "invalid_api_key")
    assert err.message.startswith("Incorrect API key provided: ")
    assert key not in err.message
    assert redact(key) in err.message
    body = orjson.loads(err.body())["error"]
    assert body["code"] == "invalid_api_key" and key not in body["message"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}, {"api-key": ""}],
)
def test_missing_key_is_401(snap, headers):
    with pytest.raises(InvalidApiKey) as exc:
        authenticate(snap, headers)
    assert exc.value.status == 401
    assert exc.value.message == ("You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
                                 "(or 'x-api-key: <key>').")


def test_unset_key_variable_is_not_an_empty_key(snap):
    # `${UNSET_KEY}` was dropped, so an empty key cannot match it
    assert snap.team_for_key("") is None
    assert len(snap.key_index) == 3


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("", ""),
        ("short", "*****"),
        ("12345678", "********"),
        ("123456789", "123****6789"),
        ("sk-proj-abcdefghijklmnop", "sk-****mnop"),
    ],
)
def test_redact(key, shown):
    assert redact(key) == shown


# ---------------------------------------------------------------- admin


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {ADMIN_KEY}"},
        {"api-key": ADMIN_KEY},
        {"authorization": "Bearer admin-plain"},
    ],
)
def test_admin_key_accepted(snap, headers):
    assert authenticate_admin(snap, headers) is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": f"Bearer {SEARCH_KEY}"},  # a team key is not an admin key
        {"authorization": f"Bearer sha256:{ADMIN_HASH}"},
        {"authorization": "Bearer wrong"},
    ],
)
def test_admin_key_rejected(snap, headers):
    with pytest.raises(InvalidApiKey) as exc:
        authenticate_admin(snap, headers)
    assert exc.value.status == 401


def test_admin_api_disabled_without_admin_keys():
    s = snapshot_from_text('server: {admin_keys: ["${NOT_SET}"]}\nteams: {a: {keys: [k]}}', env={})
    with pytest.raises(AdminForbidden) as exc:
        authenticate_admin(s, {"authorization": "Bearer k"})
    assert (exc.value.status, exc.value.code) == (403, "admin_forbidden")


def test_api_key_header_counts_beside_a_non_bearer_authorization():
    # a corporate proxy's Basic credentials must not hide the Azure-style key
    assert presented_key({"authorization": "Basic dXNlcjpwYXNz", "api-key": "sk-az"}) == "sk-az"
    assert presented_key({"authorization": "Bearer sk-b", "api-key": "sk-az"}) == "sk-b"


# ---------------------------------------------------------------- matched keys remembered per snapshot


def test_a_matched_key_is_remembered_and_a_wrong_one_is_not():
    s = snapshot_from_text(POLICY, env={"OPS_KEY": ENV_KEY})
    for _ in range(3):
        assert s.team_for_key(RESEARCH_KEY).name == "research"
        assert s.team_for_key("sk-wrong") is None
    assert s.key_teams == {RESEARCH_KEY: "research"}


def test_a_reload_that_drops_a_key_refuses_it_though_the_old_snapshot_remembered_it():
    old = snapshot_from_text(POLICY, env={"OPS_KEY": ENV_KEY})
    assert old.team_for_key(ENV_KEY).name == "ops"
    rotated = snapshot_from_text(POLICY, env={"OPS_KEY": "sk-rotated-0005"})
    assert rotated.team_for_key(ENV_KEY) is None
    assert rotated.team_for_key("sk-rotated-0005").name == "ops"


def test_remembered_keys_are_bounded(monkeypatch):
    from proxy import snapshot

    monkeypatch.setattr(snapshot, "MAX_REMEMBERED_KEYS", 2)
    s = snapshot_from_text(POLICY, env={"OPS_KEY": ENV_KEY})
    for key in (SEARCH_KEY, RESEARCH_KEY, ENV_KEY, SEARCH_KEY):
        assert s.team_for_key(key) is not None
        assert len(s.key_teams) <= 2
