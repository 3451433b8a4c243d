"""Calls to a platform's API, retried the way platforms ask: on 429 and 5xx, after the wait
the platform names (Retry-After, or its own field), else with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from typing import Any

import httpx2

from noroshi.channels.base import ChannelError, RetryHint

__all__ = ["Outbound"]

log = logging.getLogger("noroshi.channels")

TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
# secrets that platforms put in the URL's path: Telegram's bot token, Discord's interaction
# token (after the application id)
_TOKEN_IN_PATH = re.compile(r"(/bot)\d+:[A-Za-z0-9_-]+|(/webhooks/\d+/)[A-Za-z0-9_.-]+")


def _hidden(text: str) -> str:
    return _TOKEN_IN_PATH.sub(lambda m: f"{m.group(1) or m.group(2)}…", text)


class _HideTokens(logging.Filter):
    """httpx2 logs each request's URL at INFO, tokens and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _TOKEN_IN_PATH.search(message):
            record.msg, record.args = _hidden(message), ()
        return True


logging.getLogger("httpx2").addFilter(_HideTokens())


class Outbound:
    """One HTTP client per channel. `call` returns a 2xx or 4xx answer for the plugin to read
    (platforms put their error in the body); it raises `ChannelError` when the platform is
    still busy or away after `retries` tries."""

    def __init__(
        self,
        retry_hint: RetryHint,
        retries: int = 5,
        backoff_base_s: float = 0.5,
        max_retry_after_s: float = 60.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry_hint = retry_hint
        self.retries = retries
        self.backoff_base_s = backoff_base_s
        self.max_retry_after_s = max_retry_after_s
        self.client = httpx2.AsyncClient(timeout=TIMEOUT, transport=transport)

    async def call(self, method: str, url: str, **kwargs: Any) -> httpx2.Response:
        """`kwargs` as httpx2 takes them: `json`, `data`, `headers`, `params`."""
        attempt = 0
        while True:
            try:
                response = await self.client.request(method, url, **kwargs)
            except httpx2.TransportError as exc:
                if attempt >= self.retries:
                    raise ChannelError(f"{method} {_path(url)}: {type(exc).__name__}") from exc
                wait = self._backoff(attempt)
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                if attempt >= self.retries:
                    raise ChannelError(
                        f"{method} {_path(url)}: {response.status_code} after {attempt + 1} tries",
                        response.status_code,
                    )
                hint = self.retry_hint(response)
                wait = self._backoff(attempt) if hint is None else hint
                wait = min(max(wait, 0.0), self.max_retry_after_s)
                log.info(
                    "%s %s: %d, trying again in %.2f s",
                    method,
                    _path(url),
                    response.status_code,
                    wait,
                )
            attempt += 1
            await asyncio.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_base_s * 2.0**attempt, self.max_retry_after_s)
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def close(self) -> None:
        await self.client.aclose()


def _path(url: str) -> str:
    """The URL without its host or query, for logs and errors."""
    return _hidden(httpx2.URL(url).path)
