"""One small async interface over SQLite (embedded, the default) and PostgreSQL (shared by
replicas), so the stores write their SQL once, with `?` placeholders, and get plain tuples.

The schema lives in `MIGRATIONS`, one portable statement per version. Every opener applies the
missing ones, each in its own transaction, under a lock that serialises concurrent openers
(several workers or replicas starting at once).

Every call waits at most `timeout_s`. A database that is away, refuses connections or does not
answer in time raises `StoreUnavailable` (503 with Retry-After), never a bare driver error: a
request that needs the database then fails fast and cleanly, and one that does not (a cached
key, a usage record queued) goes on.
"""

from __future__ import annotations

import abc
import asyncio
import functools
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import aiosqlite

from noroshi.errors import StartupError, StoreUnavailable
from noroshi.files import private_file

if TYPE_CHECKING:
    import asyncpg  # loaded by `PostgresDatabase.connect` only: SQLite needs none of it

__all__ = [
    "DATABASE_FILE",
    "MIGRATIONS",
    "Database",
    "PostgresDatabase",
    "Row",
    "SQLiteDatabase",
    "open_database",
    "open_database_file",
]

log = logging.getLogger("noroshi.store")

DATABASE_FILE = "noroshi.sqlite3"
OPEN_ATTEMPTS = 5
TIMEOUT_S = 5.0  # the most any call waits for the database
RETRY_AFTER_S = 2.0  # what a client refused for an unavailable database is told
MAX_CONNECTIONS = 10

Row = tuple[Any, ...]
T = TypeVar("T")

# Version n is MIGRATIONS[n - 1]. Append only: an applied version is never run again.
# Portable SQL: TEXT ids made in Python, BIGINT counts, DOUBLE PRECISION epoch seconds.
MIGRATIONS: list[str] = [
    # IF NOT EXISTS: files made by the first opener (PRAGMA user_version) already have it
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        settings TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        revision BIGINT NOT NULL
    )""",
    """CREATE TABLE usage (
        request_id TEXT NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        route TEXT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cost DOUBLE PRECISION NOT NULL,
        ttft_ms DOUBLE PRECISION,
        duration_ms DOUBLE PRECISION NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        day TEXT NOT NULL
    )""",
    "CREATE INDEX usage_created_at ON usage (created_at)",
    "CREATE INDEX usage_key_created_at ON usage (key_id, created_at)",
    "CREATE INDEX usage_model_created_at ON usage (model, created_at)",
    """CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        key_id TEXT,
        agent TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX sessions_key_updated ON sessions (key_id, updated_at)",
    """CREATE TABLE session_messages (
        session_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        run_id TEXT NOT NULL,
        message TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (session_id, seq)
    )""",
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        key_id TEXT,
        agent TEXT NOT NULL,
        status TEXT NOT NULL,
        background INTEGER NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        steps INTEGER NOT NULL,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION
    )""",
    "CREATE INDEX runs_session ON runs (session_id, created_at)",
    """CREATE TABLE run_events (
        run_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    # channels: each message a platform delivered, kept before it is acknowledged
    """CREATE TABLE channel_inbox (
        channel TEXT NOT NULL,
        message_id TEXT NOT NULL,
        conversation TEXT NOT NULL,
        message TEXT NOT NULL,
        state TEXT NOT NULL,
        run_id TEXT,
        reply TEXT NOT NULL,
        received_ns BIGINT NOT NULL,
        answered_at DOUBLE PRECISION,
        PRIMARY KEY (channel, message_id)
    )""",
    "CREATE INDEX channel_inbox_open ON channel_inbox (channel, state, received_ns)",
    """CREATE TABLE channel_state (
        channel TEXT PRIMARY KEY,
        poll_offset TEXT NOT NULL,
        owner TEXT NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE channel_conversations (
        channel TEXT NOT NULL,
        conversation TEXT NOT NULL,
        session_id TEXT NOT NULL,
        PRIMARY KEY (channel, conversation)
    )""",
    # one run at a time per session, on whichever replica: the run holding it, until when
    "ALTER TABLE sessions ADD COLUMN run_id TEXT",
    "ALTER TABLE sessions ADD COLUMN run_until DOUBLE PRECISION",
    # durable runs: what was asked (to resume from), the lease of the process running it, and
    # how often another process took it over after its own died
    "ALTER TABLE runs ADD COLUMN prompt TEXT",
    "ALTER TABLE runs ADD COLUMN lease_until DOUBLE PRECISION",
    "ALTER TABLE runs ADD COLUMN resumes INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX runs_status_lease ON runs (status, lease_until)",
    # tool calls that wait for a person's approval, and the answers
    """CREATE TABLE run_approvals (
        run_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        tool_call_id TEXT NOT NULL,
        name TEXT NOT NULL,
        arguments TEXT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        approved INTEGER,
        reason TEXT,
        decided_at DOUBLE PRECISION,
        PRIMARY KEY (run_id, step, tool_call_id)
    )""",
    "CREATE INDEX run_approvals_open ON run_approvals (approved, expires_at)",
    # triggers: each schedule occurrence and each webhook delivery, taken by one replica once
    """CREATE TABLE trigger_fires (
        trigger TEXT NOT NULL,
        key TEXT NOT NULL,
        due DOUBLE PRECISION NOT NULL,
        run_id TEXT,
        fired_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (trigger, key)
    )""",
    # usage by token kind, each priced apart: cache reads and writes, reasoning
    "ALTER TABLE usage ADD COLUMN cache_read_tokens BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN reasoning_tokens BIGINT NOT NULL DEFAULT 0",
    # Responses API: each stored response, its own input, and the one it continues
    """CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        previous_id TEXT,
        background INTEGER NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    )""",
]

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS noroshi_migrations (
    version INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
)"""

# pg_advisory_xact_lock key for migrations: any constant that other software is unlikely to use
_MIGRATION_LOCK = 0x6E6F726F736869  # "noroshi"


class _Executor(Protocol):
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...


class Database(abc.ABC):
    """SQL with `?` placeholders in, plain tuples out, on either dialect."""

    dialect: str  # "sqlite" | "postgresql"

    @abc.abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """All rows or none: one transaction."""

    @abc.abstractmethod
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """The first row; the statement runs to its end (so `UPDATE … RETURNING` is done)."""
        rows = await self.fetch(sql, args)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def refuses(self, exc: BaseException) -> bool:
        """Whether `exc` says the data itself can never be written (a value out of range, a
        NUL in text), as opposed to the database being away or busy, which may pass."""

    @abc.abstractmethod
    def _migration_transaction(self) -> AbstractAsyncContextManager[_Executor]:
        """A transaction that only one opener at a time is in."""

    async def migrate(self) -> None:
        """Apply the missing migrations, one transaction each; safe with concurrent openers."""
        while True:
            async with self._migration_transaction() as tx:
                await tx.execute(_MIGRATIONS_TABLE)
                applied = {v for (v,) in await tx.fetch("SELECT version FROM noroshi_migrations")}
                missing = [n for n in range(1, len(MIGRATIONS) + 1) if n not in applied]
                if not missing:
                    return
                version = missing[0]
                await tx.execute(MIGRATIONS[version - 1])
                await tx.execute(
                    "INSERT INTO noroshi_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )


class _SQLiteConnection:
    """Statements on the one aiosqlite connection, for whoever holds its lock."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self.conn.execute_fetchall(sql, args)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return [tuple(row) for row in await self.conn.execute_fetchall(sql, args)]


class SQLiteDatabase(Database):
    """One aiosqlite connection (its own thread), in WAL mode. Statements take turns on it, so
    a transaction never takes in another caller's statement."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path, timeout_s: float = TIMEOUT_S):
        self.path = path
        self.timeout_s = timeout_s
        self._conn = _SQLiteConnection(conn)
        self._lock = asyncio.Lock()
        self._breaker = _Breaker(f"SQLite at {path}")

    @classmethod
    async def connect(cls, path: Path, timeout_s: float = TIMEOUT_S) -> SQLiteDatabase:
        """Open, in WAL mode."""
        db = await _until_unlocked(lambda: cls._connect(path))
        db.timeout_s = timeout_s
        return db

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[_SQLiteConnection]:
        """The connection, for at most `timeout_s` (waiting for it included)."""
        self._breaker.check()
        try:
            async with asyncio.timeout(self.timeout_s), self._lock:
                yield self._conn
        except TimeoutError:
            raise self._breaker.failed(f"no answer within {self.timeout_s:g} s") from None
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise self._breaker.failed(str(exc)) from None
        self._breaker.passed()

    @classmethod
    async def _connect(cls, path: Path) -> SQLiteDatabase:
        await asyncio.to_thread(private_file, path)
        conn = await aiosqlite.connect(path, isolation_level=None)  # we BEGIN and COMMIT
        try:
            # the busy timeout first: switching to WAL waits for other openers
            await conn.execute_fetchall("PRAGMA busy_timeout = 5000")
            await conn.execute_fetchall("PRAGMA journal_mode = WAL")
            await conn.execute_fetchall("PRAGMA synchronous = NORMAL")  # durable enough in WAL
        except BaseException:
            await conn.close()
            raise
        return cls(conn, path)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._turn() as conn:
            await conn.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """A plain `INSERT … VALUES (?, …)` goes as a few statements of many rows each: the
        sqlite3 module lets go of the GIL and takes it back around every statement it runs, and
        once per row that was a tug of war with the event loop for every usage record."""
        if not rows:
            return
        async with self._transaction() as tx:
            match = _MANY_ROWS.match(sql)
            if match is None:
                await tx.conn.executemany(sql, rows)
                return
            group = match.group(1)
            most = max(1, MAX_VARIABLES // group.count("?"))
            start = 0
            while start < len(rows):
                # powers of two: a handful of statement shapes, each compiled once and cached
                count = min(most, 1 << (len(rows) - start).bit_length() - 1)
                args = [value for row in rows[start : start + count] for value in row]
                await tx.execute(_many_rows(sql, group, count), args)
                start += count

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._turn() as conn:
            return await conn.fetch(sql, args)

    async def close(self) -> None:
        async with self._lock:
            await self._conn.conn.close()

    def refuses(self, exc: BaseException) -> bool:
        # OverflowError: an int past 64 bits; ValueError: text that is not UTF-8 (surrogates);
        # IntegrityError: NULL (or NaN, stored as NULL) in a NOT NULL column
        return isinstance(exc, ValueError | TypeError | OverflowError | sqlite3.IntegrityError)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_SQLiteConnection]:
        """A write transaction: IMMEDIATE takes the file's write lock at once (waiting up to
        the busy timeout), so two writers never deadlock upgrading a read."""
        async with self._turn() as conn:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                if conn.conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise

    def _migration_transaction(self) -> AbstractAsyncContextManager[_Executor]:
        return self._transaction()


# an INSERT whose one row of placeholders ends the statement: it can take more rows
_MANY_ROWS = re.compile(r"(?is)^\s*INSERT\s.*\sVALUES\s*(\(\s*\?(?:\s*,\s*\?)*\s*\))\s*$")
MAX_VARIABLES = 999  # the fewest placeholders a statement may have, in SQLite before 3.32


@functools.lru_cache(maxsize=64)
def _many_rows(sql: str, group: str, count: int) -> str:
    """`sql`, whose row of placeholders is `group`, taking `count` rows."""
    return sql + (", " + group) * (count - 1)


@functools.lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2…`, leaving quoted text alone."""
    parts = sql.split("'")
    count = 0
    for i in range(0, len(parts), 2):  # the even parts are outside quotes
        pieces = parts[i].split("?")
        out = [pieces[0]]
        for piece in pieces[1:]:
            count += 1
            out.append(f"${count}{piece}")
        parts[i] = "".join(out)
    return "'".join(parts)


class _PostgresConnection:
    """One pooled connection; each statement waits at most `timeout_s`."""

    def __init__(self, conn: asyncpg.Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self.conn.execute(numbered(sql), *args, timeout=self.timeout_s)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        rows = await self.conn.fetch(numbered(sql), *args, timeout=self.timeout_s)
        return [tuple(row) for row in rows]

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.conn.executemany(numbered(sql), rows, timeout=self.timeout_s)


class PostgresDatabase(Database):
    """An asyncpg pool. Query parameters of the URL that libpq does not know become server
    settings (`?search_path=tenant` picks the schema). A connection whose statement timed out
    or broke is closed, not given back: the pool opens a fresh one when the server is back."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, where: str, timeout_s: float = TIMEOUT_S) -> None:
        import asyncpg

        self._pool = pool
        self.where = where  # host:port/database, for messages; never the password
        self.timeout_s = timeout_s
        self._breaker = _Breaker(f"PostgreSQL at {where}")
        self._down = (
            OSError,
            TimeoutError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
            asyncpg.exceptions.InsufficientResourcesError,  # too many connections
        )

    @classmethod
    async def connect(cls, url: str, timeout_s: float = TIMEOUT_S) -> PostgresDatabase:
        import asyncpg

        where = _where(url)
        try:
            # no floor of idle connections: keeping one up would retry, noisily, in an outage
            pool = await asyncpg.create_pool(
                url, min_size=0, max_size=MAX_CONNECTIONS, timeout=timeout_s
            )
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError) as exc:
            raise _unavailable(f"PostgreSQL at {where}", _reason(exc)) from None
        try:
            async with asyncio.timeout(timeout_s):
                await pool.fetchval("SELECT 1", timeout=timeout_s)  # it opens nothing until asked
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError) as exc:
            pool.terminate()
            raise _unavailable(f"PostgreSQL at {where}", _reason(exc)) from None
        return cls(pool, where, timeout_s)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._connection() as conn:
            await conn.execute(sql, args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._connection() as conn:
            return await conn.fetch(sql, args)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    def refuses(self, exc: BaseException) -> bool:
        # DataError: a value out of range, text with NUL or surrogates (asyncpg raises it for
        # arguments it cannot encode, too); integrity: NULL in a NOT NULL column, and the like
        import asyncpg  # loaded already: this database is on it

        return isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_PostgresConnection]:
        """A pooled connection, acquired within `timeout_s`; whatever says the server is away
        becomes `StoreUnavailable`."""
        self._breaker.check()
        try:
            conn = await self._pool.acquire(timeout=self.timeout_s)
        except self._down as exc:
            raise self._breaker.failed(_reason(exc)) from None
        try:
            yield _PostgresConnection(conn, self.timeout_s)
        except self._down as exc:
            conn.terminate()  # it may be mid-statement on a server that does not answer
            raise self._breaker.failed(_reason(exc)) from None
        finally:
            try:
                await self._pool.release(conn, timeout=self.timeout_s)
            except self._down:
                conn.terminate()
        self._breaker.passed()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresConnection]:
        """Statements on one pooled connection that commit together, or not at all."""
        async with self._connection() as conn:
            tx = conn.conn.transaction()
            await _within(tx.start(), self.timeout_s)
            try:
                yield conn
            except BaseException:
                if not conn.conn.is_closed():
                    await _within(tx.rollback(), self.timeout_s)
                raise
            await _within(tx.commit(), self.timeout_s)

    @asynccontextmanager
    async def _migration_transaction(self) -> AsyncIterator[_PostgresConnection]:
        async with self.transaction() as tx:
            # held to the end of the transaction; CREATE … IF NOT EXISTS alone races
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            yield tx


async def _within(step: Awaitable[T], timeout_s: float) -> T:
    async with asyncio.timeout(timeout_s):
        return await step


def _where(url: str) -> str:
    """host:port/database of a PostgreSQL URL, without user or password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _unavailable(what: str, reason: str) -> StoreUnavailable:
    return StoreUnavailable(f"{what}: {reason}", retry_after=RETRY_AFTER_S)


class _Breaker:
    """Once the database has failed, calls fail at once for `retry_s` instead of each waiting
    out its timeout; then one call at a time tries it again."""

    def __init__(self, what: str, retry_s: float = RETRY_AFTER_S) -> None:
        self.what = what
        self.retry_s = retry_s
        self._retry_at = 0.0
        self._reason = ""

    def check(self) -> None:
        if not self._retry_at:
            return
        now = time.monotonic()
        if now < self._retry_at:
            raise _unavailable(self.what, self._reason)
        self._retry_at = now + self.retry_s  # this call probes; the others still fail fast

    def failed(self, reason: str) -> StoreUnavailable:
        if not self._retry_at:
            log.warning(
                "%s is unavailable (%s); failing fast, trying again every %g s",
                self.what,
                reason,
                self.retry_s,
            )
        self._retry_at = time.monotonic() + self.retry_s
        self._reason = reason
        return _unavailable(self.what, reason)

    def passed(self) -> None:
        if self._retry_at:
            log.info("%s is reachable again", self.what)
            self._retry_at = 0.0


async def open_database(
    url: str | None,
    directory: Path,
    timeout_s: float = TIMEOUT_S,
    connect_timeout_s: float = TIMEOUT_S,
) -> Database:
    """The database that `storage.url` names, migrated: empty for SQLite in `directory`,
    `sqlite:///absolute/path`, or `postgresql://…` (`postgres://` too). A database that cannot
    be reached is tried again, logged, for `connect_timeout_s`; then `StartupError`."""
    db: Database
    scheme, _, rest = (url or "").partition(":")
    scheme = scheme.lower()
    if not url:
        db = await SQLiteDatabase.connect(directory / DATABASE_FILE, timeout_s)
    elif scheme == "sqlite" and rest.startswith("///") and len(rest) > 3:
        db = await SQLiteDatabase.connect(Path(rest[2:]), timeout_s)
    elif scheme in ("postgresql", "postgres"):
        db = await _reach(
            lambda: PostgresDatabase.connect(url, timeout_s),
            connect_timeout_s,
            f"PostgreSQL at {_where(url)}",
        )
    else:
        # not the URL itself: it may hold a password
        raise ValueError(
            "storage.url must be empty (SQLite in the data directory), sqlite:///absolute/path "
            f"or postgresql://user@host/database; got a URL of scheme '{scheme}'"
        )
    try:
        await _until_unlocked(db.migrate)
    except StoreUnavailable as exc:
        await db.close()
        raise StartupError(f"storage.url: {exc.reason}") from None
    except BaseException:
        await db.close()
        raise
    return db


async def _reach(connect: Callable[[], Awaitable[T]], within_s: float, what: str) -> T:
    """`connect()`, tried again once a second while the database is unavailable."""
    deadline = time.monotonic() + within_s
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                return await connect()
        except (StoreUnavailable, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, StoreUnavailable) else f"{what}: no answer"
            if time.monotonic() + 1.0 >= deadline:
                raise StartupError(
                    f"storage.url: {reason} (tried {attempt} times in {within_s:g} s)"
                ) from None
            log.warning("storage.url: the database is not reachable yet (%s); retrying", reason)
            await asyncio.sleep(1.0)


async def _until_unlocked(action: Callable[[], Awaitable[T]]) -> T:
    """`action`, tried again a few times while SQLite says the file is locked: processes that
    start together on one file can find it so past the busy handler (one of them switching it
    to WAL). Other errors, and other databases', pass at once."""
    for attempt in range(OPEN_ATTEMPTS):
        try:
            return await action()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == OPEN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def open_database_file(directory: Path) -> Path:
    """Create or upgrade the embedded database in `directory`; its path. Blocking (it runs its
    own event loop): for the command line, before the server starts."""

    async def migrate() -> None:
        db = await open_database(None, directory)
        await db.close()

    asyncio.run(migrate())
    return directory / DATABASE_FILE
