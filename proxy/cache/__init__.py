"""The response cache: what to look up and store for a request, and the stored entries.

An entry holds the answer's exact JSON body plus the target that produced it, its
usage and its creation time. Values are a one-line orjson header, a newline and the
body; those over `COMPRESS_OVER` bytes are zlib-compressed. Stores happen in the
background, after the answer has gone to the client.

Each stored version of an entry has an id (the storing request's id and a random suffix).
The ledger names the version a request's answer was stored as or served from
(`<entry id>@<key>`), so feedback on that request reaches it: hits and votes are tallied
beside it, and an entry whose mean score falls below `cache.min_feedback` (over at least
`cache.min_votes` votes) is replaced by a tombstone saying why, for the rest of its TTL.
The next identical request misses ("invalidated" in the ledger) and stores a new version.
"""

from __future__ import annotations

from proxy.cache.backends import Tally
from proxy.cache.service import (
    BYPASS,
    COMPRESS_OVER,
    CachePolicy,
    Entry,
    Judged,
    ResponseCache,
    Tombstone,
    build_cache,
    decode_entry,
    decode_tombstone,
    encode_entry,
    encode_tombstone,
    entry_ref,
    feedback_verdict,
    new_entry_id,
    parse_ref,
    request_policy,
)

__all__ = ["BYPASS", "COMPRESS_OVER", "CachePolicy", "Entry", "Judged", "ResponseCache", "Tally", "Tombstone",
           "build_cache", "decode_entry", "decode_tombstone", "encode_entry", "encode_tombstone", "entry_ref",
           "feedback_verdict", "new_entry_id", "parse_ref", "request_policy"]
