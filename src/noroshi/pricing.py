"""What a request cost: its tokens of each kind times the price of that kind.

Prices come from `[prices]` in the configuration, then from the table noroshi ships
(`data/prices.toml`, with its source and date), so budgets and cost reports are right for
widely used models without anyone typing prices in. A model is looked up by its public name,
then by its deployment ("provider/model"), then by the upstream model id; a dated id
("gpt-4o-2024-08-06") falls back to its family's entry.
"""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import resources

import msgspec

from noroshi.config import Price
from noroshi.wire.conversation import Usage

__all__ = ["PriceBook", "cost", "shipped_prices"]

_DATED = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)$")


class _Table(msgspec.Struct, forbid_unknown_fields=True):
    source: str
    date: str
    models: dict[str, Price]


@functools.cache
def shipped_prices() -> dict[str, Price]:
    """The packaged price table, read once."""
    raw = resources.files("noroshi").joinpath("data/prices.toml").read_text(encoding="utf-8")
    return msgspec.convert(tomllib.loads(raw), _Table).models


def cost(usage: Usage, price: Price) -> float:
    """Each kind at its own price; a kind without one at the price of what it is part of."""
    cached = price.input if price.cached_input is None else price.cached_input
    written = price.input if price.cache_write is None else price.cache_write
    reasoning = price.output if price.reasoning is None else price.reasoning
    plain_output = max(0, usage.completion_tokens - usage.reasoning_tokens)
    return (
        usage.uncached_tokens * price.input
        + usage.cache_read_tokens * cached
        + usage.cache_write_tokens * written
        + plain_output * price.output
        + usage.reasoning_tokens * reasoning
    ) / 1_000_000


class PriceBook:
    """The configured prices over the shipped ones."""

    def __init__(self, configured: dict[str, Price], table: dict[str, Price] | None = None):
        self.configured = configured
        self.table = shipped_prices() if table is None else table

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one book per app, a few names each
    def price(self, model: str, deployment: str = "") -> Price | None:
        """The price of a public model served by `deployment`, or None when nobody knows it."""
        for name in (model, deployment):
            if name and name in self.configured:
                return self.configured[name]
        upstream = deployment.partition("/")[2]
        for name in (upstream, model):
            if not name:
                continue
            found = self.table.get(name) or self.table.get(_DATED.sub("", name))
            if found is not None:
                return found
        return None

    def cost(self, usage: Usage, model: str, deployment: str = "") -> float:
        price = self.price(model, deployment)
        return 0.0 if price is None else cost(usage, price)
