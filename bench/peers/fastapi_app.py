"""A FastAPI relay written the usual way: one shared httpx.AsyncClient, the upstream's SSE bytes
passed through a StreamingResponse. A peer in the noroshi bench, not part of noroshi.

    UPSTREAM_URL=http://127.0.0.1:9100 uvicorn --app-dir bench/peers fastapi_app:app --port 8080
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9100").rstrip("/")
API_KEY = os.environ.get("UPSTREAM_API_KEY", "x")
HEADERS = {"authorization": f"Bearer {API_KEY}"}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=UPSTREAM, timeout=60.0, limits=limits) as client:
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    body: dict[str, Any] = await request.json()
    client: httpx.AsyncClient = request.app.state.client
    if body.get("stream"):
        req = client.build_request("POST", "/v1/chat/completions", json=body, headers=HEADERS)
        r = await client.send(req, stream=True)
        return StreamingResponse(
            r.aiter_raw(),
            status_code=r.status_code,
            media_type="text/event-stream",
            background=BackgroundTask(r.aclose),
        )
    r = await client.post("/v1/chat/completions", json=body, headers=HEADERS)
    return JSONResponse(r.json(), status_code=r.status_code)
