"""A FastAPI app that answers through noroshi with the typed client.

    NOROSHI_URL=http://127.0.0.1:8080 NOROSHI_API_KEY=nrs-... uvicorn examples.fastapi_app:app

`POST /ask {"question": "..."}` answers in one JSON body; `POST /ask/stream` relays the answer
as plain text while it is written; `POST /agent {"question": "..."}` runs noroshi's default
agent and returns its answer with the tools it used.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from noroshi.client import APIStatusError, AsyncClient
from noroshi.wire.agent import ErrorEvent, ToolCalled


class Question(BaseModel):
    question: str
    model: str | None = None


class Answer(BaseModel):
    answer: str
    tokens: int


class AgentAnswer(BaseModel):
    answer: str
    tools: list[str]
    run_id: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("NOROSHI_URL", "http://127.0.0.1:8080")
    async with AsyncClient(url, api_key=os.environ.get("NOROSHI_API_KEY")) as client:
        app.state.noroshi = client
        yield


app = FastAPI(lifespan=lifespan)


def noroshi() -> AsyncClient:
    client: AsyncClient = app.state.noroshi
    return client


@app.post("/ask")
async def ask(q: Question) -> Answer:
    try:
        reply = await noroshi().simple.chat(prompt=q.question, model=q.model)
    except APIStatusError as exc:  # noroshi's status and message, passed on
        raise HTTPException(exc.status, exc.message) from exc
    return Answer(answer=reply.message, tokens=reply.usage.total_tokens)


@app.post("/ask/stream")
async def ask_stream(q: Question) -> StreamingResponse:
    messages = [{"role": "user", "content": q.question}]
    events = noroshi().simple.chat_stream(messages=messages, model=q.model)

    async def text() -> AsyncIterator[str]:
        async with events:  # a client that leaves closes noroshi's stream too
            async for chunk in events:
                yield chunk.text

    return StreamingResponse(text(), media_type="text/plain")


@app.post("/agent")
async def agent(q: Question) -> AgentAnswer:
    text, tools, run_id = [], [], ""
    async with noroshi().agent.stream(prompt=q.question) as events:
        async for event in events:
            run_id = getattr(event, "run_id", run_id)
            if isinstance(event, ToolCalled):
                tools.append(event.name)
            elif isinstance(event, ErrorEvent):
                raise HTTPException(502, event.message)
            text.append(event.text)
    return AgentAnswer(answer="".join(text), tools=tools, run_id=run_id)
