"""The embedded database: one SQLite file in the data directory, migrated on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["MIGRATIONS", "open_database"]

DATABASE_FILE = "noroshi.sqlite3"

# Each entry moves the schema one version up; applied in order, each in its own transaction.
MIGRATIONS: list[str] = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


def open_database(directory: Path) -> Path:
    """Create or upgrade the database; its path. Blocking: call it off the event loop."""
    path = directory / DATABASE_FILE
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, statement in enumerate(MIGRATIONS[version:], start=version + 1):
            with db:
                db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
    finally:
        db.close()
    return path
