"""What channels keep in the database: every message a platform delivered (the inbox), which
replica serves each channel and where its long poll stands, and each conversation's session.

The inbox is what makes delivery safe. A message is stored before the platform hears that it
arrived, keyed by the platform's own id, so a redelivery is recognised; its row records the
run that answers it and the handles of the messages sent in answer, so after a restart the
answer is finished in place (edited) rather than sent twice.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from noroshi.channels.base import Inbound
from noroshi.store.database import Database

__all__ = ["ChannelStore", "Pending"]

_encode = msgspec.json.encode
_decode_inbound = msgspec.json.Decoder(Inbound)
_decode_handles = msgspec.json.Decoder(list[str])

OPEN = ("pending", "running")


class Pending(msgspec.Struct, kw_only=True):
    """A message not yet answered: new, or cut off mid-answer by a restart."""

    channel: str
    conversation: str
    message: Inbound
    state: str  # "pending", or "running" when an answer was begun
    run_id: str | None
    handles: list[str]  # the messages already sent in answer, page by page


def _pending(row: tuple[Any, ...]) -> Pending:
    return Pending(
        channel=row[0],
        conversation=row[1],
        message=_decode_inbound.decode(row[2]),
        state=row[3],
        run_id=row[4],
        handles=_decode_handles.decode(row[5]),
    )


class ChannelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, channel: str, conversation: str, message: Inbound) -> bool:
        """Keep a message; False when its id was seen before (a redelivery)."""
        row = await self.db.fetchone(
            "INSERT INTO channel_inbox (channel, message_id, conversation, message, state, "
            "reply, received_ns) VALUES (?, ?, ?, ?, 'pending', '[]', ?) "
            "ON CONFLICT (channel, message_id) DO NOTHING RETURNING message_id",
            (channel, message.id, conversation, _encode(message).decode(), time.time_ns()),
        )
        return row is not None

    async def unanswered(self, channel: str, limit: int) -> list[Pending]:
        """The oldest open messages of a channel, in the order they arrived."""
        rows = await self.db.fetch(
            "SELECT channel, conversation, message, state, run_id, reply FROM channel_inbox "
            "WHERE channel = ? AND state IN (?, ?) ORDER BY received_ns, message_id LIMIT ?",
            (channel, *OPEN, limit),
        )
        return [_pending(r) for r in rows]

    async def begin(self, pending: Pending, run_id: str) -> None:
        pending.state, pending.run_id = "running", run_id
        await self.db.execute(
            "UPDATE channel_inbox SET state = 'running', run_id = ? "
            "WHERE channel = ? AND message_id = ?",
            (run_id, pending.channel, pending.message.id),
        )

    async def sent(self, pending: Pending) -> None:
        """Record the answer's messages as soon as each exists."""
        await self.db.execute(
            "UPDATE channel_inbox SET reply = ? WHERE channel = ? AND message_id = ?",
            (_encode(pending.handles).decode(), pending.channel, pending.message.id),
        )

    async def finish(self, pending: Pending, state: str) -> None:
        """`answered`, or `failed` when the platform would not take the answer."""
        pending.state = state
        await self.db.execute(
            "UPDATE channel_inbox SET state = ?, answered_at = ? "
            "WHERE channel = ? AND message_id = ?",
            (state, time.time(), pending.channel, pending.message.id),
        )

    async def forget_answered(self, before: float) -> None:
        """Drop answered messages older than `before`: platforms redeliver within hours."""
        await self.db.execute(
            "DELETE FROM channel_inbox WHERE state NOT IN (?, ?) AND answered_at < ?",
            (*OPEN, before),
        )

    # --- which replica serves a channel, and its poll offset --------------------------------

    async def lease(self, channel: str, owner: str, seconds: float) -> bool:
        """Take or keep the channel for `owner` until `seconds` from now; False while another
        replica holds an unexpired lease."""
        now = time.time()
        row = await self.db.fetchone(
            "INSERT INTO channel_state (channel, poll_offset, owner, lease_until) "
            "VALUES (?, '', ?, ?) ON CONFLICT (channel) DO UPDATE "
            "SET owner = excluded.owner, lease_until = excluded.lease_until "
            "WHERE channel_state.owner = excluded.owner OR channel_state.lease_until < ? "
            "RETURNING owner",
            (channel, owner, now + seconds, now),
        )
        return row is not None

    async def release(self, channel: str, owner: str) -> None:
        """Let the next replica (or this one restarted) take the channel at once."""
        await self.db.execute(
            "UPDATE channel_state SET lease_until = 0 WHERE channel = ? AND owner = ?",
            (channel, owner),
        )

    async def offset(self, channel: str) -> str:
        row = await self.db.fetchone(
            "SELECT poll_offset FROM channel_state WHERE channel = ?", (channel,)
        )
        return str(row[0]) if row is not None else ""

    async def save_offset(self, channel: str, owner: str, offset: str) -> None:
        """Only the lease holder moves the offset."""
        await self.db.execute(
            "UPDATE channel_state SET poll_offset = ? WHERE channel = ? AND owner = ?",
            (offset, channel, owner),
        )

    # --- conversations ----------------------------------------------------------------------

    async def session_of(self, channel: str, conversation: str) -> str | None:
        row = await self.db.fetchone(
            "SELECT session_id FROM channel_conversations WHERE channel = ? AND conversation = ?",
            (channel, conversation),
        )
        return str(row[0]) if row is not None else None

    async def bind(self, channel: str, conversation: str, session_id: str) -> None:
        """The session that the conversation continues from now on."""
        await self.db.execute(
            "INSERT INTO channel_conversations (channel, conversation, session_id) "
            "VALUES (?, ?, ?) ON CONFLICT (channel, conversation) "
            "DO UPDATE SET session_id = excluded.session_id",
            (channel, conversation, session_id),
        )
