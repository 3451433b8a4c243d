"""Storage: the embedded SQLite database in the data directory."""

from noroshi.store.sqlite import open_database

__all__ = ["open_database"]
