"""What noroshi creates for its state is private to its user: the data directory 0700, each
SQLite database 0600, and SQLite's -wal and -shm files with it; what exists keeps its mode."""

from __future__ import annotations

import stat
from pathlib import Path

from noroshi.config import Config, ServerConfig, data_dir
from noroshi.retrieval.sqlite_store import SQLiteKnowledge
from noroshi.store.database import DATABASE_FILE, open_database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_directory_is_created_private(tmp_path: Path) -> None:
    made = data_dir(Config(server=ServerConfig(data_dir=str(tmp_path / "a" / "noroshi"))))
    assert made.is_dir() and mode(made) == 0o700


def test_an_existing_data_directory_keeps_its_mode(tmp_path: Path) -> None:
    mine = tmp_path / "shared"
    mine.mkdir()
    mine.chmod(0o750)
    assert data_dir(Config(server=ServerConfig(data_dir=str(mine)))) == mine
    assert mode(mine) == 0o750


async def test_the_database_and_its_wal_files_are_created_private(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    db = await open_database(None, directory)
    try:
        await db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("a", "1"))
        files = [directory / f"{DATABASE_FILE}{end}" for end in ("", "-wal", "-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(directory) == 0o700
    finally:
        await db.close()


async def test_the_knowledge_database_is_created_private(tmp_path: Path) -> None:
    store = SQLiteKnowledge(tmp_path / "kb" / "knowledge.sqlite3")
    await store.open()
    try:
        files = list((tmp_path / "kb").iterdir())
        assert files and {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        await store.close()


async def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    path.touch()
    path.chmod(0o640)
    db = await open_database(f"sqlite:///{path}", tmp_path)
    await db.close()
    assert mode(path) == 0o640
    assert path.stat().st_size > 0  # migrated in place
