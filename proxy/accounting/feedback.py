"""Feedback on past requests (`POST /v1/feedback`): a score kept in the ledger beside the
request it rates, for experiments and reports."""

from __future__ import annotations

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
        rows = await acct.reader.query("SELECT 1 FROM requests WHERE id = ? AND team = ? LIMIT 1", (request_id, team))
        return bool(rows)

    def record(self, request_id: str, team: str, score: float, comment: str | None) -> None:
        writer = self.accounting.writer
        assert writer is not None, "feedback is only taken for requests found in the ledger"
        writer.append_feedback((request_id, team, time.time(), score, comment))
