"""Feedback on past requests (`POST /v1/feedback`): a score kept in the ledger beside the
request it rates, for experiments and reports. On a shared (PostgreSQL) ledger the request
may have been served by another replica: its row is found in the shared table.

A request whose answer was stored in the response cache, or served from it, names that
entry version in its row (`cache_entry`); its score is tallied there too, and may
invalidate the entry for every replica (proxy/cache/)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from proxy.accounting.service import Accounting
from proxy.cache import Judged, ResponseCache


@dataclass(frozen=True, slots=True)
class Rated:
    """The ledger row a feedback is about."""

    request_id: str
    cache_entry: str | None  # the cache entry version its answer was stored as or served from


class Feedback:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting

    async def request_of_team(self, request_id: str, team: str) -> bool:
        """Whether the ledger has this request for this team (queued rows are written first)."""
        return await self.find(request_id, team) is not None

    async def find(self, request_id: str, team: str) -> Rated | None:
        """This team's request from the ledger (queued rows are written first); None if it has none."""
        acct = self.accounting
        if acct.reader is None or acct.writer is None:
            return None
        await acct.ready()
        await acct.writer.flush()
        found = await self._found(request_id, team)
        if found is None and acct.reader.store.shared:
            # served by another replica: its row may still sit in that replica's queue
            await asyncio.sleep(acct.writer.flush_interval_s + 0.2)
            found = await self._found(request_id, team)
        return found

    async def _found(self, request_id: str, team: str) -> Rated | None:
        assert self.accounting.reader is not None
        rows = await self.accounting.reader.query(
            "SELECT cache_entry FROM requests WHERE id = ? AND team = ? ORDER BY ts DESC LIMIT 1", (request_id, team))
        return Rated(request_id, rows[0]["cache_entry"]) if rows else None

    def record(self, request_id: str, team: str, score: float, comment: str | None) -> None:
        writer = self.accounting.writer
        assert writer is not None, "feedback is only taken for requests found in the ledger"
        writer.append_feedback((request_id, team, time.time(), score, comment))

    async def tally(self, cache: ResponseCache | None, rated: Rated, score: float) -> Judged | None:
        """The score counted on the cache entry the request's answer came from or went to;
        None when there is none (not cached, a fallback's answer, the entry gone since)."""
        if cache is None or rated.cache_entry is None:
            return None
        return await cache.feedback(rated.cache_entry, rated.request_id, score)
