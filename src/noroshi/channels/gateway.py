"""The channel gateway: messages in from each platform, one agent run per message, answers
streamed back into the same chat.

A message's path: the plugin reads it (webhook or long poll); the allow-list admits it; the
inbox stores it under the platform's id (a repeat stops here); the replica that holds the
channel's lease queues it behind its conversation's earlier messages; a run of the channel's
agent answers it in the conversation's session; the answer is sent and edited as it grows.
The inbox row tracks every step, so a restart finishes what was begun and answers once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from noroshi.accounting import Accountant, Meter, estimate_tokens
from noroshi.agent.runs import Agent, Runner
from noroshi.channels.base import Channel, ChannelError, Inbound
from noroshi.channels.outbound import Outbound
from noroshi.channels.plugins import plugin
from noroshi.channels.reply import StreamedReply
from noroshi.channels.store import ChannelStore, Pending
from noroshi.config import ChannelConfig
from noroshi.errors import Conflict, NotFound
from noroshi.http import Request, Response
from noroshi.providers.base import Routed
from noroshi.store.sessions import Session, SessionStore
from noroshi.wire.openai import AssistantMessage

__all__ = ["ChannelGateway", "conversation_of"]

log = logging.getLogger("noroshi.channels")

MAX_OPEN = 1_000  # unanswered messages a channel holds in memory; the rest wait in the inbox
KEEP_ANSWERED_S = 7 * 86_400  # platforms redeliver within hours; ids are kept for a week
PRUNE_EVERY_S = 3_600
NEW_SESSION = ("/new", "/start", "/reset")


def conversation_of(message: Inbound) -> str:
    """The session key: the chat, and the thread within it where the platform has threads."""
    return f"{message.chat}/{message.thread}" if message.thread else message.chat


def allowed(config: ChannelConfig, message: Inbound) -> bool:
    users, chats = config.allow_users, config.allow_chats
    return "*" in users or "*" in chats or message.sender in users or message.chat in chats


class ChannelLine:
    """One configured channel at work on this replica."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self.name = config.name
        kind = plugin(config.type)
        self.channel: Channel[Any] = kind(config.name, config.settings, None)
        self.channel.http = Outbound(
            self.channel.retry_hint,
            config.retries,
            config.backoff_base_s,
            config.max_retry_after_s,
        )
        interval = config.edit_interval_s
        self.edit_interval_s = interval if interval is not None else self.channel.edit_interval_s
        self.owned = False
        self.queued: set[str] = set()  # message ids queued or being answered here
        self.conversations: dict[str, deque[Pending]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.sending: set[asyncio.Task[None]] = set()  # sends that a cancel lets finish
        self.poller: asyncio.Task[None] | None = None
        self.keeper: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    def stop_work(self) -> list[asyncio.Task[Any]]:
        """Cancel the poller and the conversations; what there was to wait for."""
        tasks = [t for t in (self.poller, *self.workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        self.poller = None
        self.workers.clear()
        self.conversations.clear()
        self.queued.clear()
        return tasks


class ChannelGateway:
    def __init__(self, configs: Sequence[ChannelConfig]) -> None:
        self.lines = {c.name: ChannelLine(c) for c in configs}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # set by `start`
        self.store: ChannelStore
        self.runner: Runner
        self.sessions: SessionStore
        self.agents: dict[str, Agent]
        self.accountant: Accountant

    async def start(
        self,
        store: ChannelStore,
        runner: Runner,
        sessions: SessionStore,
        agents: dict[str, Agent],
        accountant: Accountant,
    ) -> None:
        self.store, self.runner, self.sessions = store, runner, sessions
        self.agents, self.accountant = agents, accountant
        loop = asyncio.get_running_loop()
        for line in self.lines.values():
            if not line.config.allow_users and not line.config.allow_chats:
                log.warning(
                    'channel %s allows nobody: set allow_users or allow_chats ("*" for anyone)',
                    line.name,
                )
            try:
                await line.channel.open()
            except ChannelError as exc:  # the platform is away: polls and sends try again
                log.error("channel %s could not be set up: %s", line.name, exc)
            line.keeper = loop.create_task(self._keep(line))

    async def close(self) -> None:
        """Stop taking and answering; the lease is let go, so a restart takes over at once.
        What was being answered stays open in the inbox and is finished then."""
        tasks: list[asyncio.Task[Any]] = []
        for line in self.lines.values():
            tasks += line.stop_work()
            if line.keeper is not None:
                line.keeper.cancel()
                tasks.append(line.keeper)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for line in self.lines.values():
            await asyncio.gather(*line.sending, return_exceptions=True)
            if line.owned:
                with contextlib.suppress(Exception):
                    await self.store.release(line.name, self.owner)
            await line.channel.close()
            await line.channel.http.close()

    # --- in ----------------------------------------------------------------------------------

    async def receive(self, name: str, request: Request) -> Response:
        """A platform's call to `POST /channels/<name>`: its messages are stored before the
        platform hears back, so an unanswered call is delivered again and nothing is lost."""
        line = self.lines.get(name)
        if line is None:
            raise NotFound(f"No channel named '{name}'.")
        received = await line.channel.receive(request)
        for message in received.messages:
            await self._take(line, message)
        return received.response

    async def _take(self, line: ChannelLine, message: Inbound) -> None:
        if not allowed(line.config, message):
            log.info(
                "channel %s: ignored a message from %s in %s (not in the allow-list)",
                line.name,
                message.sender,
                message.chat,
            )
            return
        if await self.store.add(line.name, conversation_of(message), message):
            line.wake.set()

    async def _poll(self, line: ChannelLine) -> None:
        """Long polling: the offset moves on only after the messages are stored."""
        offset = await self.store.offset(line.name)
        failures = 0
        while True:
            try:
                polled = await line.channel.poll(offset)
                for message in polled.messages:
                    await self._take(line, message)
                if polled.offset != offset:
                    await self.store.save_offset(line.name, self.owner, polled.offset)
                    offset = polled.offset
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("channel %s: polling failed (%s); trying again", line.name, exc)
                await asyncio.sleep(min(0.5 * 2**failures, 30.0))

    # --- the lease, and the queue of each conversation ----------------------------------------

    async def _keep(self, line: ChannelLine) -> None:
        """Hold the channel's lease, and queue what the inbox holds while it is held."""
        pruned = 0.0
        while True:
            line.wake.clear()
            try:
                owned = await self.store.lease(line.name, self.owner, line.config.lease_s)
                if owned and line.channel.polls and (line.poller is None or line.poller.done()):
                    line.poller = asyncio.get_running_loop().create_task(self._poll(line))
                if owned:
                    await self._queue_unanswered(line)
                if owned and time.time() - pruned > PRUNE_EVERY_S:
                    pruned = time.time()
                    await self.store.forget_answered(pruned - KEEP_ANSWERED_S)
            except Exception:
                log.exception("channel %s: the inbox could not be read", line.name)
                owned = line.owned  # unknown: the lease runs out on its own
            if owned != line.owned:
                log.info("channel %s is %s", line.name, "served here" if owned else "elsewhere")
                line.owned = owned
                if not owned:  # another replica has it now
                    line.stop_work()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(line.wake.wait(), line.config.lease_s / 3)

    async def _queue_unanswered(self, line: ChannelLine) -> None:
        for pending in await self.store.unanswered(line.name, MAX_OPEN):
            if pending.message.id in line.queued:
                continue
            line.queued.add(pending.message.id)
            line.conversations.setdefault(pending.conversation, deque()).append(pending)
            worker = line.workers.get(pending.conversation)
            if worker is None or worker.done():
                line.workers[pending.conversation] = asyncio.get_running_loop().create_task(
                    self._converse(line, pending.conversation)
                )

    async def _converse(self, line: ChannelLine, conversation: str) -> None:
        """Answer a conversation's messages one at a time, in the order they came."""
        queue = line.conversations[conversation]
        while queue:
            pending = queue[0]
            try:
                await self._answer(line, pending)
            except Exception:
                log.exception("channel %s: message %s failed", line.name, pending.message.id)
                with contextlib.suppress(Exception):
                    await self.store.finish(pending, "failed")
            queue.popleft()
            line.queued.discard(pending.message.id)
        del line.conversations[conversation]
        del line.workers[conversation]

    # --- out -----------------------------------------------------------------------------------

    async def _answer(self, line: ChannelLine, pending: Pending) -> None:
        message = pending.message
        agent = self.agents[line.config.agent]
        reply = StreamedReply(
            line.channel,
            message,
            pending.handles,
            line.edit_interval_s,
            lambda: self.store.sent(pending),
            line.sending,
        )
        words = message.text.split()
        if words and words[0].lower() in NEW_SESSION:
            await self._new_session(line, pending.conversation, agent)
            await self._deliver(reply, pending, "Started a new conversation.")
            return
        if not words:  # a slash command without its prompt, a message of spaces
            await self._deliver(reply, pending, "Ask me something: the message was empty.")
            return
        if pending.run_id is not None:  # begun before a restart
            answer = await self._answer_of(pending.run_id)
            if answer is not None:
                await self._deliver(reply, pending, answer)
                return
        session = await self._session(line, pending.conversation, agent)
        meter = Meter(None, f"/channels/{line.name}", f"{line.name}:{message.id}"[:128])
        await self.accountant.admit(meter, agent.model, estimate_tokens(len(message.text)), None)
        routed = meter.routed = Routed(agent.model, meter.request_id)
        routed.attempts = 1

        def bill(outcome: str) -> None:
            self.accountant.finish(meter, 200, outcome)

        while True:
            try:
                active = await self.runner.start(
                    None, session, agent, message.text, routed, background=True, on_end=bill
                )
                break
            except Conflict:  # a run started on this session through the API
                await asyncio.sleep(0.5)
        await self.store.begin(pending, active.run.id)
        reply.start()
        text, error = "", ""
        try:
            async for event in active.log.follow(0):
                if event.type == "text.delta":
                    text += event.data["text"]
                    reply.text = text
                elif event.type == "step.started" and text.strip():
                    text = text.rstrip() + "\n\n"  # each step's words in a paragraph of its own
                elif event.type == "error":
                    error = str(event.data.get("message", ""))
        except asyncio.CancelledError:  # shutting down, or the channel went to another replica
            self.runner.cancel(active)
            raise
        finally:
            reply.stop()
        answer = text.strip()
        if error:
            answer = f"{answer}\n\n({error})" if answer else f"Sorry, I could not answer: {error}"
        await self._deliver(reply, pending, answer or "(no answer)")

    async def _deliver(self, reply: StreamedReply, pending: Pending, text: str) -> None:
        try:
            await reply.finish(text)
        except ChannelError as exc:
            log.warning(
                "channel %s: the answer to %s was refused: %s",
                pending.channel,
                pending.message.id,
                exc,
            )
            await self.store.finish(pending, "failed")
            return
        await self.store.finish(pending, "answered")

    async def _answer_of(self, run_id: str) -> str | None:
        """The answer of a run that completed before a restart cut its delivery; None when it
        did not complete (it is marked failed, and the message is answered anew)."""
        run = await self.sessions.get_run(None, run_id)
        if run is None or self.runner.get(run_id) is not None:
            return None
        if run.status == "completed":
            messages = await self.sessions.run_messages(run_id)
            texts = [
                m.content
                for m in messages
                if isinstance(m, AssistantMessage) and isinstance(m.content, str)
            ]
            return "\n\n".join(t.strip() for t in texts if t.strip()) or "(no answer)"
        if run.status == "running":  # its process died
            run.status, run.error = "failed", "The server stopped during the run."
            await self.sessions.finish_run(run)
        return None

    async def _session(self, line: ChannelLine, conversation: str, agent: Agent) -> Session:
        session_id = await self.store.session_of(line.name, conversation)
        session = await self.sessions.get(None, session_id) if session_id else None
        return session or await self._new_session(line, conversation, agent)

    async def _new_session(self, line: ChannelLine, conversation: str, agent: Agent) -> Session:
        session = await self.sessions.create(None, agent.name, f"{line.name} {conversation}")
        assert session is not None  # a fresh id is nobody's
        await self.store.bind(line.name, conversation, session.id)
        return session
