"""Storage: virtual keys and usage records, in SQLite (embedded) or PostgreSQL."""

from noroshi.store.database import Database, open_database, open_database_file
from noroshi.store.keys import ApiKey, Budget, KeyCreate, KeyStore, KeyUpdate, ModelLimits, hash_key
from noroshi.store.usage import UsageLog, UsageRecord

__all__ = [
    "ApiKey",
    "Budget",
    "Database",
    "KeyCreate",
    "KeyStore",
    "KeyUpdate",
    "ModelLimits",
    "UsageLog",
    "UsageRecord",
    "hash_key",
    "open_database",
    "open_database_file",
]
