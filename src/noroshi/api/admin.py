"""The admin surface (master key only): virtual keys under `/admin/keys`, usage under
`/admin/usage`. A key's secret is in the answer to its creation and nowhere else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from noroshi.errors import BadRequest, NotFound
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.store.keys import ApiKey, KeyCreate, KeyUpdate

if TYPE_CHECKING:
    from noroshi.app import App

__all__ = ["install", "parse_time"]

GROUPS = ("key", "model", "day")
MAX_ROWS = 10_000

_decode_create = msgspec.json.Decoder(KeyCreate)
_decode_update = msgspec.json.Decoder(KeyUpdate)


def _shown(key: ApiKey) -> dict[str, Any]:
    return {"object": "api_key", **msgspec.to_builtins(key)}


def parse_time(value: str, param: str) -> float:
    """Epoch seconds, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"'{value}' is not a time: use epoch seconds or ISO 8601.", param=param
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def install(router: Router, app: App) -> None:
    async def create_key(request: Request) -> Response:
        spec = await request.json(_decode_create)
        key, secret = await app.keys.create(spec)
        return JSONResponse({**_shown(key), "key": secret}, status=201)

    async def list_keys(request: Request) -> Response:
        query = parse_qs(request.query)
        revoked = query.get("include_revoked", ["false"])[-1].lower() in ("1", "true", "yes")
        keys = await app.keys.list(include_revoked=revoked)
        return JSONResponse({"object": "list", "data": [_shown(k) for k in keys]})

    async def get_key(request: Request) -> Response:
        key = await app.keys.get(request.params["id"])
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        return JSONResponse(_shown(key))

    async def update_key(request: Request) -> Response:
        changes = await request.json(_decode_update)
        key = await app.keys.update(request.params["id"], changes)
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        await app.auth.changed(key.id)
        return JSONResponse(_shown(key))

    async def revoke_key(request: Request) -> Response:
        key = await app.keys.revoke(request.params["id"])
        if key is None:
            raise NotFound(f"No key with id '{request.params['id']}'.", param="id")
        await app.auth.changed(key.id)
        return JSONResponse(_shown(key))

    async def usage(request: Request) -> Response:
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        unknown = set(query) - {"key", "model", "since", "until", "group_by", "limit"}
        if unknown:
            name = sorted(unknown)[0]
            raise BadRequest(f"Unknown query parameter '{name}'.", param=name)
        group_by = query.get("group_by")
        if group_by is not None and group_by not in GROUPS:
            raise BadRequest(f"group_by must be one of {', '.join(GROUPS)}.", param="group_by")
        try:
            limit = int(query.get("limit", "1000"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_ROWS:
            raise BadRequest(f"limit must be a number from 1 to {MAX_ROWS}.", param="limit")
        since = parse_time(query["since"], "since") if "since" in query else None
        until = parse_time(query["until"], "until") if "until" in query else None
        await app.usage.flush()
        rows = await app.usage.query(
            key_id=query.get("key"),
            model=query.get("model"),
            since=since,
            until=until,
            group_by=group_by,
            limit=limit,
        )
        return JSONResponse({"object": "list", "group_by": group_by, "data": rows})

    router.add("POST", "/admin/keys", create_key, access="admin")
    router.add("GET", "/admin/keys", list_keys, access="admin")
    router.add("GET", "/admin/keys/{id}", get_key, access="admin")
    router.add("PATCH", "/admin/keys/{id}", update_key, access="admin")
    router.add("DELETE", "/admin/keys/{id}", revoke_key, access="admin")
    router.add("GET", "/admin/usage", usage, access="admin")
