"""The admin surface (master key only): virtual keys under `/admin/keys`, usage under
`/admin/usage`. A key's secret is in the answer to its creation and nowhere else."""

from __future__ import annotations

from typing import Protocol, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from noroshi.auth import Authenticator
from noroshi.errors import NotFound
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.store.keys import KeyStore
from noroshi.store.usage import UsageLog
from noroshi.wire import endpoints as api
from noroshi.wire.admin import (
    ApiKey,
    CreatedKey,
    KeyCreate,
    KeyList,
    KeyListQuery,
    KeyUpdate,
    UsageList,
    UsageQuery,
    UsageTotals,
)

__all__ = ["install"]

T = TypeVar("T")

_decode_create: msgspec.json.Decoder[KeyCreate] = api.KEY_CREATE.decoder
_decode_update: msgspec.json.Decoder[KeyUpdate] = api.KEY_UPDATE.decoder


def _given(value: T | UnsetType) -> T | None:
    return None if isinstance(value, UnsetType) else value


class Services(Protocol):
    """What these routes use of the application."""

    auth: Authenticator
    keys: KeyStore
    usage: UsageLog


def install(router: Router, app: Services) -> None:
    async def create_key(request: Request) -> Response:
        spec = await request.json(_decode_create)
        key, secret = await app.keys.create(spec)
        fields = {f: getattr(key, f) for f in ApiKey.__struct_fields__}
        return JSONResponse(CreatedKey(**fields, key=secret), status=201)

    async def list_keys(request: Request) -> Response:
        query = request.query_as(KeyListQuery)
        return JSONResponse(KeyList(data=await app.keys.list(query.include_revoked)))

    async def get_key(request: Request) -> Response:
        key = await app.keys.get(request.params["id"])
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        return JSONResponse(key)

    async def update_key(request: Request) -> Response:
        changes = await request.json(_decode_update)
        key = await app.keys.update(request.params["id"], changes)
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        await app.auth.changed(key.id)
        return JSONResponse(key)

    async def revoke_key(request: Request) -> Response:
        key = await app.keys.revoke(request.params["id"])
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        await app.auth.changed(key.id)
        return JSONResponse(key)

    async def usage(request: Request) -> Response:
        query = request.query_as(UsageQuery)
        group_by = None if query.group_by is UNSET else query.group_by
        await app.usage.flush()
        rows = await app.usage.query(
            key_id=_given(query.key),
            model=_given(query.model),
            since=_given(query.since),
            until=_given(query.until),
            group_by=group_by,
            limit=query.limit,
        )
        if group_by == "key":  # an id alone says little in a report: the key's name too
            names = {k.id: k.name for k in await app.keys.list(include_revoked=True)}
            for row in rows:
                if isinstance(row, UsageTotals) and row.key_id is not None:
                    row.key_name = names.get(row.key_id)
        return JSONResponse(UsageList(group_by=group_by, data=list(rows)))

    router.serve(api.KEY_CREATE, create_key)
    router.serve(api.KEYS, list_keys)
    router.serve(api.KEY, get_key)
    router.serve(api.KEY_UPDATE, update_key)
    router.serve(api.KEY_REVOKE, revoke_key)
    router.serve(api.USAGE, usage)
