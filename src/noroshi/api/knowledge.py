"""Knowledge bases under `/api/v1/kb`: bases, their documents, and search."""

from __future__ import annotations

from typing import Protocol

import msgspec

from noroshi.errors import NotFound
from noroshi.guards import Guards
from noroshi.http import JSONResponse, Request, Response, Router
from noroshi.providers.base import Routed
from noroshi.retrieval.service import Knowledge
from noroshi.wire import endpoints as api
from noroshi.wire.agent import Deleted
from noroshi.wire.knowledge import (
    DocumentAdded,
    DocumentList,
    DocumentQuery,
    DocumentUpload,
    KnowledgeBaseCreate,
    KnowledgeBaseList,
    SearchAnswer,
    SearchBody,
)

__all__ = ["install"]

_decode_create: msgspec.json.Decoder[KnowledgeBaseCreate] = api.KB_CREATE.decoder
_decode_upload: msgspec.json.Decoder[DocumentUpload] = api.KB_ADD.decoder
_decode_search: msgspec.json.Decoder[SearchBody] = api.KB_SEARCH.decoder


class Services(Protocol):
    """What these routes use of the application."""

    knowledge: Knowledge
    guards: Guards


def install(router: Router, app: Services) -> None:
    def kb() -> Knowledge:  # opened with the database, after the routes are installed
        return app.knowledge

    async def create(request: Request) -> Response:
        spec = await request.json(_decode_create)
        return JSONResponse(await kb().create(spec), status=201)

    async def list_bases(request: Request) -> Response:
        return JSONResponse(KnowledgeBaseList(data=await kb().store.list()))

    async def get_base(request: Request) -> Response:
        return JSONResponse(await kb().base(request.params["name"]))

    async def delete_base(request: Request) -> Response:
        name = request.params["name"]
        if not await kb().store.delete(name):
            raise NotFound(f"No knowledge base named '{name}'.", param="name")
        return JSONResponse(Deleted(id=name))

    async def add_document(request: Request) -> Response:
        upload = await request.json(_decode_upload)
        doc, changed = await kb().add(request.params["name"], upload)
        return JSONResponse(DocumentAdded(document=doc, changed=changed))

    async def list_documents(request: Request) -> Response:
        base = await kb().base(request.params["name"])
        query = request.query_as(DocumentQuery)
        docs = await kb().store.list_documents(base.name, query.limit, query.offset)
        return JSONResponse(DocumentList(data=docs))

    async def get_document(request: Request) -> Response:
        name, doc_id = request.params["name"], request.params["id"]
        doc = await kb().store.get_document(name, doc_id)
        if doc is None:
            raise NotFound(f"No document '{doc_id}' in '{name}'.", param="id")
        return JSONResponse(doc)

    async def delete_document(request: Request) -> Response:
        name, doc_id = request.params["name"], request.params["id"]
        if not await kb().store.delete_document(name, doc_id):
            raise NotFound(f"No document '{doc_id}' in '{name}'.", param="id")
        return JSONResponse(Deleted(id=doc_id))

    async def search(request: Request) -> Response:
        body = await request.json(_decode_search)
        base = await kb().base(request.params["name"])
        routed = Routed(base.embedding_model, request.id)
        if body.mode != "text":  # the query's embedding is billed to the caller's key
            await app.guards.admit(request, routed, 0)
        hits = await kb().search(base, body.query, body.k, body.mode, body.filter, routed)
        return JSONResponse(SearchAnswer(results=hits))

    router.serve(api.KB_CREATE, create)
    router.serve(api.KBS, list_bases)
    router.serve(api.KB, get_base)
    router.serve(api.KB_DELETE, delete_base)
    router.serve(api.KB_ADD, add_document)
    router.serve(api.KB_DOCUMENTS, list_documents)
    router.serve(api.KB_DOCUMENT, get_document)
    router.serve(api.KB_DOCUMENT_DELETE, delete_document)
    router.serve(api.KB_SEARCH, search)
