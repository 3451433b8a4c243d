"""OpenAI's Responses API (Open Responses): `/v1/responses` and its stored responses, in front
of every provider, with the same keys, limits, budgets, usage and fallbacks as every other
model route.

Stored responses live in the database, per key, so `previous_response_id`, reads, deletes and
cancels work on any replica. A background response runs on the replica that took it, billed
when it ends; a cancel from another replica marks it cancelled in the database, which the
running replica looks at every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

import msgspec

from noroshi.accounting import Accountant, Meter
from noroshi.api import openai
from noroshi.api.openai import chunk_stream
from noroshi.errors import BadRequest, ModelNotFound, NoroshiError, NotFound, where
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.http.websocket import WebSocket
from noroshi.providers.base import Call
from noroshi.store.database import Database
from noroshi.store.responses import RUNNING, ResponseStore
from noroshi.wire import endpoints as api
from noroshi.wire import responses as wire
from noroshi.wire.conversation import Conversation, Text, Turn
from noroshi.wire.responses import new_id

__all__ = ["install"]

log = logging.getLogger("noroshi.responses")
_decode_any = msgspec.json.Decoder()
_encode = msgspec.json.encode
_decode: msgspec.json.Decoder[wire.ResponsesRequest] = api.RESPONSES.decoder
_decode_compact: msgspec.json.Decoder[wire.CompactRequest] = api.RESPONSES_COMPACT.decoder
CANCEL_POLL_S = 1.0  # how often a background response looks for a cancel made elsewhere


def _owner(request: Request) -> str:
    """Whose responses these are: the key's id; "" for the master key (or auth off)."""
    principal = request.principal
    return (principal.key_id or "") if principal is not None else ""


Cache = dict[str, list[dict[str, Any]]]  # a WebSocket's responses: id -> conversation items


class _Reported(Exception):
    """A turn's failure, already told on the socket as its stream's error events."""


def _create_message(raw: str | bytes) -> wire.ResponsesRequest:
    """A WebSocket `response.create` message as a request; anything else is a 400."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadRequest("A WebSocket message must be JSON.", code="invalid_json") from None
    if not isinstance(data, dict) or data.get("type") != "response.create":
        raise BadRequest("Send `response.create` messages.", param="type", code="invalid_value")
    for field in ("stream", "stream_options", "background"):
        if field in data:
            raise BadRequest(
                f"`{field}` is not sent in WebSocket mode.", param=field, code="invalid_value"
            )
    del data["type"]
    try:
        return msgspec.convert(data, wire.ResponsesRequest)
    except msgspec.ValidationError as exc:
        message, param = where(exc)
        raise BadRequest(message, param=param, code="invalid_value") from None


async def _send_events(ws: WebSocket, chunk: bytes) -> None:
    """SSE-framed events as one JSON text frame each."""
    for block in chunk.split(b"\n\n"):
        at = block.find(b"data: ")
        if at >= 0:
            await ws.send_text(block[at + 6 :].decode())


class Services(openai.Services, Protocol):
    """What these routes use of the application."""

    accountant: Accountant
    db: Database

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None: ...


def install(router: Router, app: Services) -> None:
    limit = app.config.server.max_stream_bytes
    running: dict[str, asyncio.Task[None]] = {}  # background responses of this replica

    def store() -> ResponseStore:
        return ResponseStore(app.db)

    async def history(
        request: Request, req: wire.ResponsesRequest, cache: Cache | None = None
    ) -> list[dict[str, Any]]:
        """The items of the conversation `previous_response_id` ends: from a WebSocket's own
        `cache` of responses, else from the stored ones."""
        previous = req.previous_response_id
        if previous is None:
            return []
        found = cache.get(previous) if cache is not None else None
        if found is None:
            found = await store().history(previous, _owner(request))
        if found is None:
            raise NotFound(
                f"No response with id '{previous}'.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return found

    async def conversation(
        request: Request,
        req: wire.ResponsesRequest,
        items: list[dict[str, Any]],
        before: list[dict[str, Any]],
    ) -> Conversation:
        """The request's conversation: the items `before` it (its previous responses'), then
        its own; a tool output must answer a call made in them."""
        if req.model not in app.models:
            raise ModelNotFound(req.model)
        calls, outputs = wire.function_call_ids([*before, *items])
        for n, call_id in outputs:
            if call_id not in calls:
                raise BadRequest(
                    f"No tool call found for the function call output with call_id '{call_id}'.",
                    param=f"input.{n - len(before)}.call_id",
                    code="invalid_value",
                )
        conv = wire.decode_request(req, before, items)
        if not conv.turns:
            raise BadRequest(
                "The input has no message to answer.", param="input", code="invalid_value"
            )
        return conv

    async def compact(request: Request) -> Response:
        req = (await request.json(_decode_compact)).as_request()
        conv = await conversation(request, req, wire.input_items(req), await history(request, req))
        conv.turns.append(Turn("user", [Text(wire.COMPACT_PROMPT)]))
        responses = wire.ResponsesWire(req)
        call = Call(conv, {}, request.id, wire=responses)
        await app.guards.admit(request, call, None)
        await app.models.complete(call)
        assert call.answer is not None
        summary = "".join(p.text for p in call.answer.parts if isinstance(p, Text))
        return JSONResponse(
            {
                "id": new_id("resp"),
                "object": "response.compaction",
                "created_at": responses.created_at,
                "output": [wire.compaction_item(summary)],
                "usage": wire.usage_out(call.answer.usage),
            }
        )

    async def create(request: Request) -> Response:
        req = await request.json(_decode)
        if req.background and not req.store:
            raise BadRequest(
                "A background response must be stored: `store` cannot be false.",
                param="background",
                code="invalid_value",
            )
        if req.background and req.stream:
            raise BadRequest(
                "Streaming a background response is not supported; poll "
                "GET /v1/responses/{id} instead.",
                param="stream",
                code="unsupported_value",
            )
        owner = _owner(request)
        items = wire.input_items(req)
        conv = await conversation(request, req, items, await history(request, req))
        responses = wire.ResponsesWire(req)
        call = Call(conv, _decode_any.decode(await request.body()), request.id, wire=responses)
        await app.guards.admit(request, call, req.max_output_tokens)
        if req.background:
            return await start_background(request, call, responses, owner, items)
        if req.stream:
            first, rest = await app.models.open_stream(call)
            if req.store:
                if call.finished:  # the whole answer came at once
                    await store().create(owner, answer_of(responses), items)
                else:
                    rest = stored(call, rest, responses, owner, items)
            return chunk_stream(call, first, rest, limit)
        body = await app.models.complete(call)
        if req.store:
            await store().create(owner, answer_of(responses), items)
        return Response(body)

    def answer_of(responses: wire.ResponsesWire) -> dict[str, Any]:
        assert responses.response is not None
        return responses.response

    async def stored(
        call: Call,
        rest: AsyncGenerator[bytes, None],
        responses: wire.ResponsesWire,
        owner: str,
        items: list[dict[str, Any]],
    ) -> AsyncGenerator[bytes, None]:
        """The stream, with the response stored before its last event (`response.completed`)
        goes out: a client that continues from it at once finds it. A fault stores it
        failed, with what was answered until then."""
        try:
            async for chunk in rest:
                if call.finished:
                    await store().create(owner, answer_of(responses), items)
                yield chunk
        except NoroshiError as exc:
            if responses.current is not None and not call.finished:
                with contextlib.suppress(NoroshiError):
                    await store().create(owner, responses.current.failed(exc), items)
            raise
        finally:
            await rest.aclose()

    async def start_background(
        request: Request,
        call: Call,
        responses: wire.ResponsesWire,
        owner: str,
        items: list[dict[str, Any]],
    ) -> Response:
        queued = responses.resource("queued", [])
        await store().create(owner, queued, items, background=True)
        meter, request.meter = request.meter, None  # billed when the run ends, not now
        task = asyncio.create_task(run_background(call, responses, meter))
        running[responses.id] = task
        task.add_done_callback(lambda _: running.pop(responses.id, None))
        return JSONResponse(queued)

    async def run_background(
        call: Call, responses: wire.ResponsesWire, meter: Meter | None
    ) -> None:
        status, outcome = 200, "ok"
        watcher = asyncio.create_task(watch_cancel(responses.id, asyncio.current_task()))
        try:
            await store().update(responses.resource("in_progress", []))
            try:
                await app.models.complete(call)
                final = answer_of(responses)
            except NoroshiError as exc:
                status, outcome = exc.status, "error"
                final = responses.resource("failed", [], None, wire.error_of(exc))
            await store().update(final)
        except asyncio.CancelledError:
            status, outcome = 499, "cut"  # cancelled, or the server shutting down
            with contextlib.suppress(Exception):
                await store().update(responses.resource("cancelled", []))
        except Exception:
            log.exception("background response %s failed", responses.id)
            status, outcome = 500, "error"
        finally:
            watcher.cancel()
            if meter is not None:
                app.accountant.finish(meter, status, outcome)

    async def watch_cancel(response_id: str, task: asyncio.Task[Any] | None) -> None:
        """Cancel the run once the database says it was cancelled (on another replica)."""
        while task is not None:
            await asyncio.sleep(CANCEL_POLL_S)
            with contextlib.suppress(NoroshiError):
                if await store().status(response_id) == "cancelled":
                    task.cancel()
                    return

    async def close() -> None:
        for task in list(running.values()):
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)

    app.on_close(close)

    async def found(request: Request) -> Any:
        stored_response = await store().get(request.params["id"], _owner(request))
        if stored_response is None:
            raise NotFound(f"No response with id '{request.params['id']}'.", param="id")
        return stored_response

    async def get(request: Request) -> Response:
        return JSONResponse((await found(request)).response)

    async def input_items(request: Request) -> Response:
        query = request.query_as(wire.InputItemsQuery)
        items = (await found(request)).input
        if query.order == "desc":
            items = items[::-1]
        if query.after is not None:
            ids = [item.get("id") for item in items]
            items = items[ids.index(query.after) + 1 :] if query.after in ids else []
        page = items[: query.limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > len(page),
            }
        )

    async def delete(request: Request) -> Response:
        response_id = request.params["id"]
        if not await store().delete(response_id, _owner(request)):
            raise NotFound(f"No response with id '{response_id}'.", param="id")
        if (task := running.get(response_id)) is not None:
            task.cancel()
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def cancel(request: Request) -> Response:
        stored_response = await found(request)
        if not stored_response.background:
            raise BadRequest(
                "Only a background response can be cancelled.", param="id", code="invalid_value"
            )
        if stored_response.status not in RUNNING:
            return JSONResponse(stored_response.response)
        cancelled = {**stored_response.response, "status": "cancelled"}
        await store().update(cancelled)
        if (task := running.get(stored_response.id)) is not None:
            task.cancel()
        return JSONResponse(cancelled)

    async def over_websocket(request: Request, ws: WebSocket) -> None:
        """WebSocket mode: each `response.create` message is a response whose events come back
        as JSON frames, one turn at a time. A `store: false` response can be continued on the
        same connection (it is kept there, not in the database); a turn that fails forgets the
        one it continued."""
        await ws.accept()
        cache: Cache = {}
        while True:
            raw = await ws.receive()
            req: wire.ResponsesRequest | None = None
            try:
                req = _create_message(raw)
                await ws_turn(request, ws, req, cache)
            except NoroshiError as exc:
                if req is not None and req.previous_response_id is not None:
                    cache.pop(req.previous_response_id, None)
                error = wire.error_payload(exc)["error"]
                frame = {"type": "error", "status": exc.status, "error": error}
                await ws.send_text(_encode(frame).decode())

    async def ws_turn(
        request: Request, ws: WebSocket, req: wire.ResponsesRequest, cache: Cache
    ) -> None:
        before = await history(request, req, cache)
        items = wire.input_items(req)
        conv = await conversation(request, req, items, before)
        responses = wire.ResponsesWire(req)
        call = Call(conv, {}, request.id, wire=responses)
        meter = request.meter = Meter(request.principal, api.RESPONSES.path, request.id)
        status, outcome = 499, "cut"
        try:
            await app.guards.admit(request, call, req.max_output_tokens)
            first, rest = await app.models.open_stream(call)
            try:
                chunk: bytes | None = first
                while chunk is not None:
                    if call.finished and req.store:  # before `response.completed` leaves
                        await store().create(_owner(request), answer_of(responses), items)
                    await _send_events(ws, chunk)
                    chunk = None if call.finished else await anext(rest, None)
                status, outcome = 200, "ok"
            except NoroshiError as exc:
                status, outcome = 200, "error"
                await _send_events(ws, responses.error(exc))
                raise _Reported from None
            finally:
                await rest.aclose()
        except _Reported:
            if req.previous_response_id is not None:
                cache.pop(req.previous_response_id, None)
            return
        except NoroshiError as exc:
            status, outcome = exc.status, "error"
            raise
        finally:
            request.meter = None
            app.accountant.finish(meter, status, outcome)
        final = answer_of(responses)
        cache[responses.id] = [*before, *items, *final["output"]]

    router.serve(api.RESPONSES, create)
    router.add_websocket(api.RESPONSES.path, over_websocket, access="model")
    router.serve(api.RESPONSES_COMPACT, compact)
    router.serve(api.RESPONSE, get)
    router.serve(api.RESPONSE_INPUT_ITEMS, input_items)
    router.serve(api.RESPONSE_DELETE, delete)
    router.serve(api.RESPONSE_CANCEL, cancel)
