"""Feedback on past requests (`POST /v1/feedback`): a score kept in the ledger beside the
request it rates, for experiments and reports. On a shared (PostgreSQL) ledger the request
may have been served by another replica: its row is found in the shared table."""

from __future__ import annotations

import asyncio
import time

from proxy.accounting.service import Accounting


class Feedback:
    def __init__(self, accounting: Accounting) -> None:
        self.accounting = accounting

    async def request_of_team(self, request_id: str, team: str) -> bool:
        """Whether the ledger has this request for this team (queued rows are written first)."""
        acct = self.accounting
        if acct.reader is None or acct.writer is None:
            return False
        await acct.ready()
        await acct.writer.flush()
        if await self._found(request_id, team):
            return True
        if acct.reader.store.shared:
            # served by another replica: its row may still sit in that replica's queue
            await asyncio.sleep(acct.writer.flush_interval_s + 0.2)
            return await self._found(request_id, team)
        return False

    async def _found(self, request_id: str, team: str) -> bool:
        assert self.accounting.reader is not None
        rows = await self.accounting.reader.query(
            "SELECT 1 FROM requests WHERE id = ? AND team = ? LIMIT 1", (request_id, team))
        return bool(rows)

    def record(self, request_id: str, team: str, score: float, comment: str | None) -> None:
        writer = self.accounting.writer
        assert writer is not None, "feedback is only taken for requests found in the ledger"
        writer.append_feedback((request_id, team, time.time(), score, comment))
