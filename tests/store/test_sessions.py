"""Sessions and runs on both databases: ownership by key, history order, run records."""

from __future__ import annotations

from noroshi.store.database import Database
from noroshi.store.sessions import SessionStore
from noroshi.wire import openai as oa


async def test_sessions_belong_to_their_key(db: Database) -> None:
    store = SessionStore(db)
    mine = await store.create("key_a", "default", "first")
    anonymous = await store.create(None, "default", "open")
    assert await store.get("key_a", mine.id) == mine
    assert await store.get("key_b", mine.id) is None
    assert await store.get(None, mine.id) is None
    assert await store.get(None, anonymous.id) == anonymous
    assert [s.id for s in await store.list("key_a")] == [mine.id]
    assert not await store.delete("key_b", mine.id)
    assert await store.delete("key_a", mine.id)
    assert await store.get("key_a", mine.id) is None


async def test_history_keeps_its_order_and_shapes(db: Database) -> None:
    store = SessionStore(db)
    session = await store.create("k", "helper", "t" * 500)
    assert len(session.title) == 200
    run = await store.start_run("k", session, background=False)
    call = oa.ToolCall(id="c1", function=oa.ToolCallFunction("f", '{"x": 1}'))
    turn: list[oa.Message] = [
        oa.UserMessage(content="hi"),
        oa.AssistantMessage(tool_calls=[call]),
        oa.ToolMessage(content="42", tool_call_id="c1"),
        oa.AssistantMessage(content="It is 42."),
    ]
    await store.append(session.id, run.id, turn[:2])
    await store.append(session.id, run.id, turn[2:])
    assert await store.messages(session.id) == turn

    run.status, run.steps, run.prompt_tokens, run.completion_tokens = "completed", 2, 30, 7
    await store.finish_run(run)
    stored = await store.get_run("k", run.id)
    assert stored is not None and stored.status == "completed" and stored.finished_at
    assert (stored.steps, stored.prompt_tokens, stored.completion_tokens) == (2, 30, 7)
    assert await store.get_run("other", run.id) is None
    assert [r.id for r in await store.runs(session.id)] == [run.id]
