"""Stored responses of the Responses API, per key, in the shared database: any replica can
continue a conversation (`previous_response_id`), read, cancel or delete a response.

A response keeps its own input items and its output; the conversation a new request continues
is its chain of previous responses, read back in one recursive query. Another key's response
is not there at all: every read names its owner.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from noroshi.store.database import Database

__all__ = ["ResponseStore", "StoredResponse"]

MAX_CHAIN = 10_000  # bounds the walk back through previous responses
RUNNING = ("queued", "in_progress")

_CHAIN = f"""
WITH RECURSIVE chain(id, previous_id, depth) AS (
    SELECT id, previous_id, 0 FROM responses WHERE id = ? AND owner = ?
    UNION ALL
    SELECT r.id, r.previous_id, chain.depth + 1 FROM responses r
    JOIN chain ON r.id = chain.previous_id
    WHERE r.owner = ? AND chain.depth < {MAX_CHAIN}
)
SELECT r.input, r.response FROM chain JOIN responses r ON r.id = chain.id
ORDER BY chain.depth DESC
"""


class StoredResponse(msgspec.Struct):
    id: str
    background: bool
    status: str
    input: list[dict[str, Any]]
    response: dict[str, Any]


_decode = msgspec.json.decode
_encode = msgspec.json.encode


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        owner: str,
        response: dict[str, Any],
        items: list[dict[str, Any]],
        background: bool = False,
    ) -> None:
        now = time.time()
        await self.db.execute(
            "INSERT INTO responses (id, owner, previous_id, background, status, input, response,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                response["id"],
                owner,
                response.get("previous_response_id"),
                int(background),
                response["status"],
                _encode(items).decode(),
                _encode(response).decode(),
                now,
                now,
            ),
        )

    async def update(self, response: dict[str, Any], running: bool = True) -> bool:
        """Write a response's new state; with `running`, only over a response still running,
        so a cancel made on another replica is never overwritten."""
        where = " AND status IN ('queued', 'in_progress')" if running else ""
        row = await self.db.fetchone(
            f"UPDATE responses SET status = ?, response = ?, updated_at = ? WHERE id = ?{where}"
            " RETURNING id",
            (response["status"], _encode(response).decode(), time.time(), response["id"]),
        )
        return row is not None

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        row = await self.db.fetchone(
            "SELECT id, background, status, input, response FROM responses"
            " WHERE id = ? AND owner = ?",
            (response_id, owner),
        )
        if row is None:
            return None
        return StoredResponse(row[0], bool(row[1]), row[2], _decode(row[3]), _decode(row[4]))

    async def status(self, response_id: str) -> str | None:
        row = await self.db.fetchone("SELECT status FROM responses WHERE id = ?", (response_id,))
        return None if row is None else str(row[0])

    async def history(self, response_id: str, owner: str) -> list[dict[str, Any]] | None:
        """The items of the conversation up to and including this response: each previous
        response's input, then its output, oldest first; None if it is not this owner's."""
        rows = await self.db.fetch(_CHAIN, (response_id, owner, owner))
        if not rows:
            return None
        items: list[dict[str, Any]] = []
        for raw_input, raw_response in rows:
            items += _decode(raw_input)
            items += _decode(raw_response).get("output") or []
        return items

    async def delete(self, response_id: str, owner: str) -> bool:
        row = await self.db.fetchone(
            "DELETE FROM responses WHERE id = ? AND owner = ? RETURNING id", (response_id, owner)
        )
        return row is not None
