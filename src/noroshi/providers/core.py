"""A core node, as an edge sees it: an OpenAI-compatible upstream whose every request is
signed with the internal secret and carries the calling key's context.

The caller comes from a context variable the edge sets once the auth guard has run, so the
provider layer needs no new arguments; `healthy` is kept by the edge's health checks.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlsplit

from noroshi.config import ProviderConfig
from noroshi.edge.signing import Signer
from noroshi.providers.base import Call
from noroshi.providers.openai_compat import OpenAIProvider

__all__ = ["CALLER", "CoreProvider"]

CALLER: ContextVar[dict[str, Any] | None] = ContextVar("noroshi_caller", default=None)


class CoreProvider(OpenAIProvider):
    signer: Signer | None = None  # set by the app from `internal.secret`
    keeps_thinking = True  # a core's chat completions carry thinking both ways

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self.prefix = urlsplit(config.base_url).path  # "/v1": part of the signed target
        self.root = config.base_url[: -len(self.prefix)] if self.prefix else config.base_url

    async def complete(self, call: Call, model: str) -> bytes:
        self.outstanding += 1
        try:
            return await super().complete(call, model)
        finally:
            self.outstanding -= 1

    async def stream(self, call: Call, model: str) -> AsyncGenerator[bytes, None]:
        """Counted as outstanding until the stream ends, for least-outstanding balancing."""
        self.outstanding += 1
        inner = super().stream(call, model)
        try:
            async for chunk in inner:
                yield chunk
        finally:
            self.outstanding -= 1
            await inner.aclose()

    async def health(self) -> bool:
        """Whether the core answers its health check and is not draining."""
        try:
            resp = await self.transport.send("GET", self.root + "/health", {}, None, 2.0)
        except Exception:
            return False
        try:
            if resp.status != 200:
                return False
            return b'"status":"ok"' in await resp.read(64 * 1024)
        except Exception:
            return False
        finally:
            resp.release()  # read to its end, the connection serves the next check

    def request_headers(self, method: str, path: str, body: bytes | None) -> dict[str, str]:
        headers = self.headers()
        assert self.signer is not None, "a core provider needs internal.secret"
        headers.update(self.signer.sign(method, self.prefix + path, body or b"", CALLER.get()))
        return headers

    def describe(self) -> dict[str, Any]:
        return {"type": "core", "url": self.config.base_url, "healthy": self.healthy}
