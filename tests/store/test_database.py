from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from noroshi.store import open_database_file
from noroshi.store.database import (
    DATABASE_FILE,
    MIGRATIONS,
    Database,
    SQLiteDatabase,
    numbered,
    open_database,
)

VERSIONS = list(range(1, len(MIGRATIONS) + 1))


async def applied(db: Database) -> list[tuple[int, float]]:
    rows = await db.fetch("SELECT version, applied_at FROM noroshi_migrations ORDER BY version")
    return [(int(v), float(t)) for v, t in rows]


async def test_migrated_on_open(db: Database) -> None:
    assert [v for v, _ in await applied(db)] == VERSIONS
    for table in ("meta", "api_keys", "usage"):
        assert await db.fetch(f"SELECT * FROM {table}") == []


async def test_statements_and_plain_tuples(db: Database) -> None:
    await db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("a", "1"))
    await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("b", "2"), ("c", "3")])
    await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [])
    rows = await db.fetch("SELECT key, value FROM meta WHERE key <> ? ORDER BY key", ("b",))
    assert rows == [("a", "1"), ("c", "3")]
    assert all(type(row) is tuple for row in rows)
    assert await db.fetchone("SELECT value FROM meta WHERE key = ?", ("c",)) == ("3",)
    assert await db.fetchone("SELECT value FROM meta WHERE key = ?", ("z",)) is None
    # a `?` inside quotes is text, not a placeholder
    row = await db.fetchone("SELECT 'what?', value FROM meta WHERE key = ?", ("a",))
    assert row == ("what?", "1")


async def test_executemany_is_one_transaction(db: Database) -> None:
    await db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("taken", "x"))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await db.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)", [("new", "1"), ("taken", "2")]
        )
    assert await db.fetch("SELECT key FROM meta") == [("taken",)]
    # the connection is usable afterwards, not left inside the failed transaction
    await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [("new", "1")])
    assert len(await db.fetch("SELECT key FROM meta")) == 2


async def test_executemany_of_many_rows_keeps_each_row_once(db: Database) -> None:
    """SQLite sends a plain INSERT as statements of many rows: every row lands, once, in
    order, whatever the count; an INSERT with more than placeholders goes row by row."""
    rows = [(f"k{i:04}", str(i)) for i in range(1000)]
    await db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
    await db.executemany("insert into meta (key, value)\n values ( ? , ? )", [("lower", "x")])
    await db.executemany("INSERT INTO meta (key, value) VALUES (?, 'same')", [("s1",), ("s2",)])
    stored = await db.fetch("SELECT key, value FROM meta")
    assert len(stored) == 1003
    assert sorted(stored) == sorted([*rows, ("lower", "x"), ("s1", "same"), ("s2", "same")])
    if db.dialect == "sqlite":
        ordered = await db.fetch("SELECT key FROM meta WHERE key LIKE 'k%' ORDER BY rowid")
        assert [k for (k,) in ordered] == [k for k, _ in rows]


async def test_refuses_tells_bad_data_from_other_failures(db: Database) -> None:
    sql = (
        "INSERT INTO usage (request_id, key_id, model, deployment, route, prompt_tokens, "
        "completion_tokens, cost, ttft_ms, duration_ms, status, outcome, created_at, day) "
        "VALUES (?, NULL, 'm', '', '/', ?, 0, 0.0, NULL, 0.0, 200, 'ok', 0.0, '1970-01-01')"
    )
    with pytest.raises(Exception) as too_big:
        await db.execute(sql, ("r", 2**70))
    assert db.refuses(too_big.value)
    with pytest.raises(Exception) as missing:
        await db.execute("SELECT * FROM no_such_table")
    assert not db.refuses(missing.value)


async def test_reopening_applies_nothing_again(target: str, tmp_path: Path) -> None:
    first = await open_database(target, tmp_path)
    try:
        before = await applied(first)
    finally:
        await first.close()
    second = await open_database(target, tmp_path)
    try:
        assert await applied(second) == before
    finally:
        await second.close()


async def test_concurrent_openers_apply_each_migration_once(target: str, tmp_path: Path) -> None:
    opened = await asyncio.gather(*(open_database(target, tmp_path) for _ in range(6)))
    try:
        for db in opened:
            assert [v for v, _ in await applied(db)] == VERSIONS
    finally:
        for db in opened:
            await db.close()


async def test_default_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    db = await open_database(None, tmp_path / "data")
    try:
        assert db.dialect == "sqlite"
        assert isinstance(db, SQLiteDatabase) and db.path == tmp_path / "data" / DATABASE_FILE
        assert await db.fetchone("PRAGMA journal_mode") == ("wal",)
        assert await db.fetchone("PRAGMA busy_timeout") == (5000,)
    finally:
        await db.close()
    db = await open_database("", tmp_path / "data")
    await db.close()


async def test_sqlite_url_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "x.db"
    db = await open_database(f"SQLite:///{path}", tmp_path)
    await db.close()
    assert path.exists() and not (tmp_path / DATABASE_FILE).exists()


async def test_postgres_scheme_is_accepted(postgres_url: str, tmp_path: Path) -> None:
    db = await open_database(postgres_url.replace("postgresql://", "postgres://", 1), tmp_path)
    try:
        assert db.dialect == "postgresql"
        assert await db.fetchone("SELECT 1 + ?", (1,)) == (2,)
    finally:
        await db.close()


@pytest.mark.parametrize(
    "url", ["mysql://root:secret@db/x", "sqlite://relative.db", "sqlite:///", "redis://x"]
)
async def test_unknown_url_is_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"storage\.url") as error:
        await open_database(url, tmp_path)
    assert "secret" not in str(error.value)


async def test_file_from_the_first_opener_is_upgraded(tmp_path: Path) -> None:
    """The first release made `meta` and counted versions in PRAGMA user_version."""
    with sqlite3.connect(tmp_path / DATABASE_FILE) as old:
        old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        old.execute("INSERT INTO meta VALUES ('kept', 'yes')")
        old.execute("PRAGMA user_version = 1")
    old.close()
    db = await open_database(None, tmp_path)
    try:
        assert [v for v, _ in await applied(db)] == VERSIONS
        assert await db.fetch("SELECT key, value FROM meta") == [("kept", "yes")]
    finally:
        await db.close()


def test_open_database_file_blocks_and_migrates(tmp_path: Path) -> None:
    path = open_database_file(tmp_path)
    assert path == tmp_path / DATABASE_FILE
    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM noroshi_migrations")]
    db.close()
    assert versions == VERSIONS
    assert open_database_file(tmp_path) == path  # and again, with nothing left to do


def test_placeholders_numbered_for_postgresql() -> None:
    assert numbered("SELECT ? , ?") == "SELECT $1 , $2"
    assert numbered("SELECT 'a?b', ? WHERE x = 'it''s?' AND y = ?") == (
        "SELECT 'a?b', $1 WHERE x = 'it''s?' AND y = $2"
    )
    assert numbered("SELECT 1") == "SELECT 1"
