"""What a process that serves noroshi sets for itself when its server loads the app.

CPython collects its youngest generation of container objects every 700 new ones. With many
requests in flight that comes every few requests, and each young collection finds the objects of
the requests still running alive and promotes them: a few hundred requests later enough have
been promoted to force a full collection of the heap. At 64 concurrent streams (the bench's
load) that cost a tenth of the CPU per request. With a young generation of 10,000 most of a
request's objects are gone before a collection looks at them.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_GENERATION", "tune_collector"]

YOUNG_GENERATION = 10_000


def tune_collector() -> None:
    """The collector's young threshold for a server; the older generations keep theirs."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)
