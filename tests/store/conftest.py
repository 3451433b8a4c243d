"""Every store test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from noroshi.store.database import Database, open_database


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A `storage.url`: a SQLite file of the test's own, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def db(target: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(target, tmp_path)
    yield database
    await database.close()
