"""OpenAPI 3.1 from the endpoint table: the schemas are msgspec's JSON Schema of the very
types the server decodes and encodes, so the description cannot drift from the code.

Streams are described as `text/event-stream` whose schema is that of one event's `data`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec

from noroshi.errors import ErrorBody
from noroshi.wire import times
from noroshi.wire.endpoints import Endpoint
from noroshi.wire.simple import StreamError

__all__ = ["openapi"]

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "A virtual or master key."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
}
_STREAM_NOTE = (
    "Server-Sent Events: each event's `data` is one JSON value. OpenAI-style streams end with "
    "`data: [DONE]`, which only a complete stream earns; an error after the first event is "
    "sent as an event (OpenAI's envelope, or `event: error` with `{message}` on the simple "
    "streams). Agent streams carry an `id:` per event and end with `run.finished` on success "
    "or `error` otherwise."
)


def openapi(endpoints: Iterable[Endpoint], version: str) -> dict[str, Any]:
    endpoints = list(endpoints)
    kinds: list[Any] = [ErrorBody, StreamError]
    for e in endpoints:
        kinds += [t for t in (e.body, e.answer, e.query, e.error) if t is not None]
        kinds += _formats(e)
    schemas, components = msgspec.json.schema_components(
        kinds, ref_template=_REF, schema_hook=times.schema_hook
    )
    of = dict(zip(map(id, kinds), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = _operation(e, of, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "noroshi",
            "version": version,
            "description": "A streaming-first AI gateway and agent server.",
        },
        "tags": [
            {"name": tag, "x-displayName": title, "description": about}
            for tag, (title, about) in _TAGS.items()
            if any(e.tag == tag for e in endpoints)
        ],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": _SECURITY},
    }


# each tag's heading (`x-displayName`, as reference renderers read it) and what it covers
_TAGS = {
    "openai": ("OpenAI-compatible API", "Any OpenAI client works unchanged against these."),
    "simple": ("Simple endpoints", "The `/api/chat`-style endpoints, streamed as SSE."),
    "agents": ("Agents", "Server-side tool loops, their runs, sessions and event streams."),
    "knowledge": ("Knowledge bases", "Documents, their chunks, and hybrid search."),
    "admin": ("Admin", "Keys and usage; the master key only."),
    "service": ("Service", "Health, metrics, this reference."),
}


def _operation(
    e: Endpoint, of: dict[int, dict[str, Any]], components: dict[str, Any]
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": e.name, "summary": e.summary, "tags": [e.tag]}
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in _PARAM.findall(e.path)
    ]
    if e.query is not None:
        params += _query_params(of[id(e.query)], components)
    params += [
        {"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
        for h in e.headers
    ]
    if params:
        op["parameters"] = params
    if e.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": of[id(e.body)]}},
        }
    op["responses"] = _responses(e, of)
    op["security"] = [] if e.access == "public" else [{"bearer": []}, {"apiKey": []}]
    if e.access == "admin":
        op["description"] = "Master key only."
    return op


def _responses(e: Endpoint, of: dict[int, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if e.answer is not None:
        content = {"application/json": {"schema": of[id(e.answer)]}}
    elif e.media != "application/json":
        content = {e.media: {"schema": {"type": "string"}}}
    else:
        content = {}
    if content or e.events is None:
        responses[str(e.status)] = {"description": "Success.", "content": content}
    if e.events is not None:
        ok = responses.setdefault("200", {"description": "Success.", "content": {}})
        ok["description"] += " " + _STREAM_NOTE
        errors = [of[id(e.error or ErrorBody)], of[id(StreamError)]]
        formats = [of[id(t)] for t in _formats(e)]
        ok["content"]["text/event-stream"] = {"schema": _event(formats, errors)}
    responses["default"] = {
        "description": "An error, in OpenAI's envelope." if e.error is None else "An error.",
        "content": {"application/json": {"schema": of[id(e.error or ErrorBody)]}},
    }
    return responses


def _formats(e: Endpoint) -> list[Any]:
    """The event types of an endpoint's stream, one per format it can send."""
    if e.events is None:
        return []
    return list(e.events) if isinstance(e.events, tuple) else [e.events]


def _event(formats: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """One SSE event, as OpenAPI 3.2's `itemSchema` (and 3.1 by convention) describes it: its
    `data` is JSON of the event type (or an error), or the `[DONE]` terminator."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [*formats, *errors]},
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"anyOf": [{"const": "[DONE]"}, json_data]},
            "event": {"type": "string"},
            "id": {"type": "string"},
        },
    }


def _query_params(ref: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    """A query Struct's fields as parameters, each with its field's schema."""
    schema = components[ref["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _sent(prop)}
        for name, prop in schema["properties"].items()
    ]


def _sent(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without `null`: a parameter left out is the null."""
    options = [o for o in prop.get("anyOf", ()) if o != {"type": "null"}]
    if len(options) == 1:
        prop = {**options[0], **{k: v for k, v in prop.items() if k not in ("anyOf", "default")}}
    return prop
