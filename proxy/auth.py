"""API keys to teams, and the admin check.

Keys are looked up by their SHA-256: the table holds only hashes, and a lookup keyed by
the hash of what the client sent reveals nothing through timing about any stored key. A
key that matched is remembered by the snapshot (`Snapshot.team_for_key`): only a client
presenting that very key can tell a remembered one (dict lookups of strings compare
keyed hashes first, so a near miss takes no longer than any miss).
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.errors import AdminForbidden, InvalidApiKey
from proxy.snapshot import Snapshot, Team


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer <key>`, or `x-api-key` (Anthropic's SDK and Claude
    Code), or `api-key` (Azure-style clients)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    # an Authorization header of another kind (Basic, from a corporate proxy) is not ours
    for name in ("x-api-key", "api-key"):
        key = headers.get(name)
        if key and key.strip():
            return key.strip()
    return None


def authenticate(snapshot: Snapshot, headers: Mapping[str, str]) -> Team:
    key = presented_key(headers)
    if key is None:
        raise InvalidApiKey(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')."
        )
    team = snapshot.team_for_key(key)
    if team is None:
        raise InvalidApiKey(f"Incorrect API key provided: {redact(key)}.")
    return team


def authenticate_admin(snapshot: Snapshot, headers: Mapping[str, str]) -> None:
    if not snapshot.admin_key_hashes:
        raise AdminForbidden("the admin API is disabled: no server.admin_keys are configured")
    key = presented_key(headers)
    if key is None or not snapshot.is_admin_key(key):
        raise InvalidApiKey("an admin key is required for /admin")


def redact(key: str) -> str:
    """Show a key the way OpenAI does in errors: its start and its last four characters."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 4}{key[-4:]}"
