"""Agent sessions (a conversation's history) and runs (one turn of the agent loop each).

A session belongs to the key that made it: every read takes the caller's key id, and a
session of another key is as absent as one that never existed.

A session runs one turn at a time, on whichever replica: a run claims its session in the
database (the run's id and a time until which the claim holds, renewed while the run goes on),
so a replica that dies frees its sessions within the claim's life.
"""

from __future__ import annotations

import builtins
import secrets
import time
from typing import Any, NamedTuple

import msgspec

from noroshi.store.database import Database
from noroshi.wire.agent import Run, Session
from noroshi.wire.openai import Message
from noroshi.wire.times import Timestamp

__all__ = ["Kept", "Run", "Session", "SessionStore", "new_run_id"]

_encode = msgspec.json.encode
_decode_message: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


_SESSION = "id, agent, title, created_at, updated_at"
_RUN = (
    "id, session_id, agent, status, background, prompt_tokens, completion_tokens, steps, "
    "error, created_at, finished_at"
)


def _session(row: tuple[Any, ...]) -> Session:
    return Session(
        id=row[0],
        agent=row[1],
        title=row[2],
        created_at=Timestamp(row[3]),
        updated_at=Timestamp(row[4]),
    )


def _run(row: tuple[Any, ...]) -> Run:
    return Run(
        id=row[0],
        session_id=row[1],
        agent=row[2],
        status=row[3],
        background=bool(row[4]),
        prompt_tokens=row[5],
        completion_tokens=row[6],
        steps=row[7],
        error=row[8],
        created_at=Timestamp(row[9]),
        finished_at=Timestamp.maybe(row[10]),
    )


class Kept(NamedTuple):
    """A run as stored, with what resuming it takes: whose it is and what was asked."""

    run: Run
    key_id: str | None
    prompt: str | None
    resumes: int


def new_run_id() -> str:
    return f"run_{secrets.token_hex(8)}"


def _key_is(key_id: str | None) -> tuple[str, list[Any]]:
    """`key_id = ?`, or `key_id IS NULL` when auth is off (SQL's NULL never equals NULL)."""
    return ("key_id IS NULL", []) if key_id is None else ("key_id = ?", [key_id])


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, key_id: str | None, agent: str, title: str, session_id: str | None = None
    ) -> Session | None:
        """A new session, named `session_id` when the client names its chats itself; None
        when another key has a session by that id (a race for one id makes one session)."""
        now = Timestamp.now()
        session = Session(
            id=session_id or f"ses_{secrets.token_hex(8)}",
            agent=agent,
            title=title[:200],
            created_at=now,
            updated_at=now,
        )
        made = await self.db.fetchone(
            f"INSERT INTO sessions (key_id, {_SESSION}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING RETURNING id",
            (key_id, session.id, agent, session.title, now, now),
        )
        if made is None:  # taken: this key's own (made by a request at the same moment), or not
            return await self.get(key_id, session.id)
        return session

    async def get(self, key_id: str | None, session_id: str) -> Session | None:
        where, args = _key_is(key_id)
        row = await self.db.fetchone(
            f"SELECT {_SESSION} FROM sessions WHERE id = ? AND {where}", (session_id, *args)
        )
        return _session(row) if row is not None else None

    async def list(self, key_id: str | None, limit: int = 100) -> builtins.list[Session]:
        where, args = _key_is(key_id)
        rows = await self.db.fetch(
            f"SELECT {_SESSION} FROM sessions WHERE {where} ORDER BY updated_at DESC LIMIT ?",
            (*args, limit),
        )
        return [_session(r) for r in rows]

    async def delete(self, key_id: str | None, session_id: str) -> bool:
        if await self.get(key_id, session_id) is None:
            return False
        for table, column in (
            ("session_messages", "session_id"),
            ("runs", "session_id"),
            ("sessions", "id"),
        ):
            await self.db.execute(f"DELETE FROM {table} WHERE {column} = ?", (session_id,))
        return True

    async def messages(self, session_id: str) -> builtins.list[Message]:
        rows = await self.db.fetch(
            "SELECT message FROM session_messages WHERE session_id = ? ORDER BY seq",
            (session_id,),
        )
        return [_decode_message.decode(r[0]) for r in rows]

    async def run_messages(self, run_id: str) -> builtins.list[Message]:
        """What one run added to its session: the prompt, tool calls and answers."""
        rows = await self.db.fetch(
            "SELECT message FROM session_messages WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [_decode_message.decode(r[0]) for r in rows]

    async def append(self, session_id: str, run_id: str, messages: builtins.list[Message]) -> None:
        """Add a turn's messages after the history; one run at a time per session makes the
        sequence numbers safe to take from the count."""
        row = await self.db.fetchone(
            "SELECT COALESCE(MAX(seq), 0) FROM session_messages WHERE session_id = ?",
            (session_id,),
        )
        start = int(row[0]) if row is not None else 0
        now = time.time()
        await self.db.executemany(
            "INSERT INTO session_messages (session_id, seq, run_id, message, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (session_id, start + i + 1, run_id, _encode(m).decode(), now)
                for i, m in enumerate(messages)
            ],
        )
        await self.db.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (now, session_id))

    async def claim(self, session_id: str, run_id: str, hold_s: float) -> str | None:
        """Take the session for `run_id` for `hold_s`; None when taken, else the run that
        holds it."""
        now = time.time()
        taken = await self.db.fetchone(
            "UPDATE sessions SET run_id = ?, run_until = ? "
            "WHERE id = ? AND (run_id IS NULL OR run_until < ?) RETURNING id",
            (run_id, now + hold_s, session_id, now),
        )
        if taken is not None:
            return None
        row = await self.db.fetchone("SELECT run_id FROM sessions WHERE id = ?", (session_id,))
        return str(row[0]) if row is not None and row[0] is not None else ""

    async def hold(self, run_ids: builtins.list[str], hold_s: float) -> None:
        """Renew the claims of these runs on their sessions, and their leases."""
        if run_ids:
            marks = ", ".join("?" * len(run_ids))
            until = time.time() + hold_s
            await self.db.execute(
                f"UPDATE sessions SET run_until = ? WHERE run_id IN ({marks})", (until, *run_ids)
            )
            await self.db.execute(
                f"UPDATE runs SET lease_until = ? WHERE id IN ({marks}) AND status = 'running'",
                (until, *run_ids),
            )

    async def orphans(self, limit: int = 20) -> builtins.list[str]:
        """Runs said to be running whose process stopped renewing their lease."""
        rows = await self.db.fetch(
            "SELECT id FROM runs WHERE status = 'running' "
            "AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT ?",
            (time.time(), limit),
        )
        return [str(r[0]) for r in rows]

    async def take(self, run_id: str, hold_s: float) -> bool:
        """Take over the lease of a run whose process stopped renewing it; only one taker
        wins."""
        now = time.time()
        taken = await self.db.fetchone(
            "UPDATE runs SET lease_until = ?, resumes = resumes + 1 WHERE id = ? "
            "AND status = 'running' AND (lease_until IS NULL OR lease_until < ?) RETURNING id",
            (now + hold_s, run_id, now),
        )
        return taken is not None

    async def wake(self, run_id: str, hold_s: float) -> bool:
        """Take a waiting run to run it on; only one taker wins."""
        taken = await self.db.fetchone(
            "UPDATE runs SET status = 'running', lease_until = ? WHERE id = ? "
            "AND status = 'waiting' RETURNING id",
            (time.time() + hold_s, run_id),
        )
        return taken is not None

    async def release(self, run: Run) -> None:
        """Give up a run's lease for another process to take it over at once, with what it
        used so far. Its session stays claimed for it until the claim runs out, so no other
        turn slips in meanwhile."""
        await self.db.execute(
            "UPDATE runs SET lease_until = 0, prompt_tokens = ?, completion_tokens = ?, "
            "steps = ? WHERE id = ?",
            (run.prompt_tokens, run.completion_tokens, run.steps, run.id),
        )

    async def reclaim(self, session_id: str, run_id: str, hold_s: float) -> bool:
        """Claim the session again for a run taken over: it still holds it, or nobody does."""
        now = time.time()
        taken = await self.db.fetchone(
            "UPDATE sessions SET run_id = ?, run_until = ? WHERE id = ? "
            "AND (run_id = ? OR run_id IS NULL OR run_until < ?) RETURNING id",
            (run_id, now + hold_s, session_id, run_id, now),
        )
        return taken is not None

    async def park(self, run: Run, until: float) -> None:
        """A run waits, in no process: its session stays claimed until `until`."""
        await self.db.execute(
            "UPDATE runs SET status = 'waiting', lease_until = NULL, prompt_tokens = ?, "
            "completion_tokens = ?, steps = ? WHERE id = ?",
            (run.prompt_tokens, run.completion_tokens, run.steps, run.id),
        )
        await self.db.execute(
            "UPDATE sessions SET run_until = ? WHERE id = ? AND run_id = ?",
            (until, run.session_id, run.id),
        )

    async def cancel_waiting(self, run_id: str) -> bool:
        """Take a waiting run to end it; only one taker wins."""
        taken = await self.db.fetchone(
            "UPDATE runs SET status = 'cancelled' WHERE id = ? AND status = 'waiting' RETURNING id",
            (run_id,),
        )
        return taken is not None

    async def unclaim(self, session_id: str, run_id: str) -> None:
        await self.db.execute(
            "UPDATE sessions SET run_id = NULL, run_until = NULL WHERE id = ? AND run_id = ?",
            (session_id, run_id),
        )

    async def busy(self, session_id: str) -> str | None:
        """The run that holds the session now, if any."""
        row = await self.db.fetchone(
            "SELECT run_id FROM sessions WHERE id = ? AND run_until >= ?", (session_id, time.time())
        )
        return str(row[0]) if row is not None and row[0] is not None else None

    async def start_run(
        self,
        key_id: str | None,
        session: Session,
        background: bool,
        run_id: str = "",
        prompt: str = "",
        hold_s: float = 0.0,
    ) -> Run:
        run = Run(
            id=run_id or new_run_id(),
            session_id=session.id,
            agent=session.agent,
            status="running",
            background=background,
            created_at=Timestamp.now(),
        )
        await self.db.execute(
            f"INSERT INTO runs (key_id, prompt, lease_until, {_RUN}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                prompt,
                run.created_at + hold_s,
                run.id,
                run.session_id,
                run.agent,
                run.status,
                int(background),
                0,
                0,
                0,
                None,
                run.created_at,
                None,
            ),
        )
        return run

    async def kept(self, run_id: str) -> Kept | None:
        """A run with whose it is and what it was asked, for any key: the runner's own view."""
        row = await self.db.fetchone(
            f"SELECT {_RUN}, key_id, prompt, resumes FROM runs WHERE id = ?", (run_id,)
        )
        if row is None:
            return None
        return Kept(_run(row), row[11], row[12], int(row[13] or 0))

    async def finish_run(self, run: Run) -> None:
        run.finished_at = run.finished_at or Timestamp.now()
        await self.db.execute(
            "UPDATE runs SET status = ?, prompt_tokens = ?, completion_tokens = ?, steps = ?, "
            "error = ?, finished_at = ? WHERE id = ?",
            (
                run.status,
                run.prompt_tokens,
                run.completion_tokens,
                run.steps,
                run.error,
                run.finished_at,
                run.id,
            ),
        )

    async def get_run(self, key_id: str | None, run_id: str) -> Run | None:
        where, args = _key_is(key_id)
        row = await self.db.fetchone(
            f"SELECT {_RUN} FROM runs WHERE id = ? AND {where}", (run_id, *args)
        )
        return _run(row) if row is not None else None

    async def runs(self, session_id: str) -> builtins.list[Run]:
        rows = await self.db.fetch(
            f"SELECT {_RUN} FROM runs WHERE session_id = ? ORDER BY created_at", (session_id,)
        )
        return [_run(r) for r in rows]
