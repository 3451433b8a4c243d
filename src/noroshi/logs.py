"""Logging: the level and format from `[logging]` (or `--log-level`), and the access log.

Every process writes to standard error, as text (`2026-12-07T06:00:00.123Z INFO noroshi.x:
message`) or as one JSON object a line, for a log shipper. The access log is one line a
request, written once the answer has ended (a stream included); with `access = false` no
access object exists and a request pays one `is None` test.

The access line is on the request path, so under `noroshi serve` it skips the logging
module (a record, the caller's frame, a lock and a flush each time: a sixth of a request's
instructions) and goes straight to standard error in the same format, gathered for up to
ACCESS_FLUSH_S and written at once. Where something else set up logging (an ASGI server),
it goes through the logger `noroshi.access` like any other line.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

if TYPE_CHECKING:
    from noroshi.config import LoggingConfig
    from noroshi.http import Request

__all__ = ["AccessLog", "JSONFormatter", "setup_logging"]

_ENCODE = msgspec.json.Encoder().encode
ACCESS_FLUSH_S = 0.1
_direct: tuple[str, TextIO] | None = None  # (format, stream) once setup_logging ran
# the attributes every LogRecord has: what is left on a record is its `extra`
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the record's extra fields, and
    the exception's traceback as text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODE(entry).decode()


class _TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso(record.created)


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


def setup_logging(config: LoggingConfig, level: str | None = None) -> None:
    """Point the root logger at standard error in the configured format; `level` (from the
    command line) wins over the config's."""
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or config.level).upper())
    global _direct
    _direct = (config.format, sys.stderr)


class AccessLog:
    """One line a request: method, path, status, duration, key id, model, request id, tokens."""

    def __init__(self) -> None:
        self.log = logging.getLogger("noroshi.access")
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""
        atexit.register(self.flush)

    def write(self, request: Request, status: int, duration_s: float) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        meter = request.meter
        key = model = ""
        prompt = completion = 0
        if meter is not None:
            key = meter.key.id if meter.key is not None else ""
            model = meter.model
            usage = meter.routed.usage if meter.routed is not None else None
            if usage is not None:
                prompt, completion = usage.prompt_tokens, usage.completion_tokens
        ms = round(duration_s * 1000, 1)
        if _direct is None:
            self.log.info(
                "%s %s %d %.1fms key=%s model=%s id=%s tokens=%d+%d",
                request.method,
                request.path,
                status,
                ms,
                key or "-",
                model or "-",
                request.id,
                prompt,
                completion,
                extra=_fields(request, status, ms, key, model, prompt, completion),
            )
            return
        now = time.time()
        if _direct[0] == "json":
            entry = {
                "time": self._time(now),
                "level": "info",
                "logger": "noroshi.access",
                "message": f"{request.method} {request.path} {status}",
                **_fields(request, status, ms, key, model, prompt, completion),
            }
            line = _ENCODE(entry).decode()
        else:
            line = (
                f"{self._time(now)} INFO noroshi.access: {request.method} {request.path} "
                f"{status} {ms:.1f}ms key={key or '-'} model={model or '-'} id={request.id} "
                f"tokens={prompt}+{completion}"
            )
        self._pending.append(line)
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_later(ACCESS_FLUSH_S, self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(now % 1 * 1000):03d}Z"

    def flush(self) -> None:
        if self._pending and _direct is not None:
            lines, self._pending = self._pending, []
            stream = _direct[1]
            stream.write("\n".join(lines) + "\n")
            stream.flush()


def _fields(
    request: Request, status: int, ms: float, key: str, model: str, prompt: int, completion: int
) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": ms,
        "key_id": key or None,
        "model": model or None,
        "request_id": request.id,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }
