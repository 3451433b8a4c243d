"""Tool calls that wait for a person: asked when a run pauses, answered through the API, denied
when nobody answers in time. Kept in the database, so a waiting run needs no live process and
an answer may reach any replica."""

from __future__ import annotations

import time

from noroshi.store.database import Database
from noroshi.wire.agent import PendingApproval
from noroshi.wire.times import Timestamp

__all__ = ["Approvals"]


class Approvals:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ask(self, run_id: str, step: int, calls: list[PendingApproval]) -> None:
        """Record the calls a run waits on; asking again (a run resumed before it could say
        it waits) changes nothing."""
        now = time.time()
        await self.db.executemany(
            "INSERT INTO run_approvals (run_id, step, tool_call_id, name, arguments, "
            "requested_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, step, tool_call_id) DO NOTHING",
            [(run_id, step, c.tool_call_id, c.name, c.arguments, now, c.expires_at) for c in calls],
        )

    async def decide(self, run_id: str, tool_call_id: str, approved: bool, reason: str) -> bool:
        """Answer a call still waiting; False when there is none (answered, or never asked)."""
        done = await self.db.fetchone(
            "UPDATE run_approvals SET approved = ?, reason = ?, decided_at = ? "
            "WHERE run_id = ? AND tool_call_id = ? AND approved IS NULL RETURNING step",
            (int(approved), reason, time.time(), run_id, tool_call_id),
        )
        return done is not None

    async def pending(self, run_id: str) -> list[PendingApproval]:
        rows = await self.db.fetch(
            "SELECT tool_call_id, name, arguments, expires_at FROM run_approvals "
            "WHERE run_id = ? AND approved IS NULL ORDER BY tool_call_id",
            (run_id,),
        )
        return [
            PendingApproval(
                tool_call_id=r[0], name=r[1], arguments=r[2], expires_at=Timestamp(r[3])
            )
            for r in rows
        ]

    async def decisions(self, run_id: str, step: int) -> dict[str, tuple[bool, str]]:
        """The answers given for a step's calls, by call id."""
        rows = await self.db.fetch(
            "SELECT tool_call_id, approved, reason FROM run_approvals "
            "WHERE run_id = ? AND step = ? AND approved IS NOT NULL",
            (run_id, step),
        )
        return {str(r[0]): (bool(r[1]), str(r[2] or "")) for r in rows}

    async def expire(self, now: float | None = None) -> list[str]:
        """Deny every call nobody answered in time; the runs they belonged to."""
        now = time.time() if now is None else now
        rows = await self.db.fetch(
            "UPDATE run_approvals SET approved = 0, reason = 'expired', decided_at = ? "
            "WHERE approved IS NULL AND expires_at < ? RETURNING run_id",
            (now, now),
        )
        return sorted({str(r[0]) for r in rows})
