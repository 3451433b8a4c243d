"""Virtual keys: what each may use and spend. Only a key's SHA-256 is stored, with a hint
(`nrs-abcd…wxyz`) to tell keys apart; the secret is shown once, when it is made.

Limits, budget and metadata are kept as one JSON column, so a new limit needs no migration.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, Struct

from noroshi.errors import BadRequest
from noroshi.store.database import Database
from noroshi.wire.admin import ApiKey, Budget, KeyCreate, KeyUpdate, ModelLimits
from noroshi.wire.times import Timestamp

__all__ = [
    "ApiKey",
    "Budget",
    "KeyCreate",
    "KeyStore",
    "KeyUpdate",
    "ModelLimits",
    "hash_key",
]

KEY_PREFIX = "nrs-"


class _Settings(Struct, kw_only=True, omit_defaults=True):
    """The JSON column: everything about a key that is not looked up by SQL."""

    models: list[str] = []
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    model_limits: dict[str, ModelLimits] = {}
    budget: Budget | None = None
    metadata: dict[str, Any] = {}


_SETTINGS = _Settings.__struct_fields__
_encode = msgspec.json.Encoder().encode
_decode_settings = msgspec.json.Decoder(_Settings).decode

_COLUMNS = "id, name, hint, settings, created_at, expires_at, revoked_at, revision"


def hash_key(secret: str) -> str:
    """What is stored for a key: its SHA-256 (the secret is random, so no salt or stretching
    is needed, and the lookup stays one indexed read)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, spec: KeyCreate) -> tuple[ApiKey, str]:
        """A new key and its secret, which is not kept and cannot be shown again."""
        now = Timestamp.now()
        random = secrets.token_urlsafe(32)
        secret = KEY_PREFIX + random
        key = ApiKey(
            id=f"key_{secrets.token_hex(6)}",
            name=spec.name,
            hint=f"{KEY_PREFIX}{random[:4]}…{random[-4:]}",
            expires_at=_future(spec.expires_at, now),
            created_at=now,
            **{name: getattr(spec, name) for name in _SETTINGS},
        )
        await self.db.execute(
            "INSERT INTO api_keys (id, name, key_hash, hint, settings, created_at, expires_at, "
            "revoked_at, revision) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0)",
            (
                key.id,
                key.name,
                hash_key(secret),
                key.hint,
                _settings(key),
                float(now),
                _epoch(key.expires_at),
            ),
        )
        return key, secret

    async def get(self, id: str) -> ApiKey | None:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (id,))
        return None if row is None else _key(row)

    async def find(self, secret: str) -> ApiKey | None:
        """The key with this secret, revoked and expired ones too: the caller says why not."""
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = ?", (hash_key(secret),)
        )
        return None if row is None else _key(row)

    async def update(self, id: str, changes: KeyUpdate) -> ApiKey | None:
        """The key with `changes` applied, or None without such a key. Two changes at once
        both apply: the second to lose the race reads the key again."""
        values = {
            f: v for f in KeyUpdate.__struct_fields__ if (v := getattr(changes, f)) is not UNSET
        }
        if "expires_at" in values:
            values["expires_at"] = _future(values["expires_at"], Timestamp.now())
        while True:
            row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (id,))
            if row is None:
                return None
            key = msgspec.structs.replace(_key(row), **values)
            revision = row[-1]
            done = await self.db.fetchone(
                "UPDATE api_keys SET name = ?, settings = ?, expires_at = ?, revision = ? "
                "WHERE id = ? AND revision = ? RETURNING id",
                (key.name, _settings(key), _epoch(key.expires_at), revision + 1, id, revision),
            )
            if done is not None:
                return key

    async def revoke(self, id: str) -> ApiKey | None:
        """The key, revoked; revoking it again keeps the first time."""
        await self.db.execute(
            "UPDATE api_keys SET revoked_at = ?, revision = revision + 1 "
            "WHERE id = ? AND revoked_at IS NULL",
            (time.time(), id),
        )
        return await self.get(id)

    async def list(self, include_revoked: bool = False) -> builtins.list[ApiKey]:
        """Newest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at DESC, id DESC"
        )
        return [_key(row) for row in rows]


def _future(moment: datetime | None, now: float) -> Timestamp | None:
    """An expiry (UTC when it names no zone); one already past is refused (revoke a key to
    stop it now)."""
    if moment is None:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    expiry = Timestamp(moment.timestamp())
    if expiry <= now:
        raise BadRequest("expires_at must be in the future.", param="expires_at")
    return expiry


def _settings(key: ApiKey) -> str:
    return _encode(_Settings(**{name: getattr(key, name) for name in _SETTINGS})).decode()


def _epoch(moment: Timestamp | None) -> float | None:
    return None if moment is None else float(moment)


def _key(row: tuple[Any, ...]) -> ApiKey:
    id, name, hint, settings, created_at, expires_at, revoked_at, _ = row
    return ApiKey(
        id=id,
        name=name,
        hint=hint,
        created_at=Timestamp(created_at),
        expires_at=Timestamp.maybe(expires_at),
        revoked_at=Timestamp.maybe(revoked_at),
        **msgspec.structs.asdict(_decode_settings(settings)),
    )
