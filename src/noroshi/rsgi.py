"""`noroshi.rsgi:app`, the target `noroshi serve` hands to Granian in each worker process.

Loading it sets the worker process up for serving (`noroshi.process`).

Granian waits for open streams on SIGTERM but tells the app nothing, so the worker's signal
setup is wrapped: the app starts its drain timer at the same moment Granian stops accepting.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from granian import _signals

from noroshi.app import App
from noroshi.process import tune_collector

__all__ = ["app"]

tune_collector()
app = App()

_granian_set_loop_signals = _signals.set_loop_signals


def _set_loop_signals(loop: asyncio.AbstractEventLoop) -> Any:
    stop = _granian_set_loop_signals(loop)  # type: ignore[no-untyped-call]

    def on_signal(*_: object) -> None:
        app.begin_drain()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return stop


_signals.set_loop_signals = _set_loop_signals
