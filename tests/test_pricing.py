"""Costs by token kind, and where a model's price comes from."""

from __future__ import annotations

import pytest

from noroshi.config import Price
from noroshi.pricing import PriceBook, cost, shipped_prices
from noroshi.wire.conversation import Usage

FULL = Price(input=3.0, cached_input=0.3, cache_write=3.75, output=15.0, reasoning=20.0)


def test_each_kind_is_billed_at_its_own_price() -> None:
    usage = Usage(
        prompt_tokens=1_000_000 + 2_000_000 + 100_000,  # plain, cache read, cache write
        completion_tokens=500_000,
        cache_read_tokens=2_000_000,
        cache_write_tokens=100_000,
        reasoning_tokens=200_000,
    )
    # 1M plain input at 3, 2M cache reads at 0.3, 0.1M writes at 3.75,
    # 0.3M plain output at 15, 0.2M reasoning at 20
    assert cost(usage, FULL) == pytest.approx(3.0 + 0.6 + 0.375 + 4.5 + 4.0)


def test_a_kind_without_a_price_costs_what_it_is_part_of() -> None:
    price = Price(input=2.0, output=8.0)
    usage = Usage(
        prompt_tokens=1_000_000,
        completion_tokens=1_000_000,
        cache_read_tokens=400_000,
        cache_write_tokens=100_000,
        reasoning_tokens=600_000,
    )
    assert cost(usage, price) == pytest.approx(2.0 + 8.0)


def test_cached_input_is_cheaper_than_plain_input() -> None:
    plain = Usage(prompt_tokens=1000, completion_tokens=10)
    cached = Usage(prompt_tokens=1000, completion_tokens=10, cache_read_tokens=900)
    assert cost(cached, FULL) < cost(plain, FULL)


def test_the_shipped_table_has_its_source_and_prices_widely_used_models() -> None:
    table = shipped_prices()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-5", "claude-sonnet-4-5", "claude-haiku-4-5"):
        assert table[model].input > 0 and table[model].output >= table[model].input
    sonnet = table["claude-sonnet-4-5"]
    assert (sonnet.cached_input, sonnet.cache_write) == (0.3, 3.75)


def test_configured_prices_win_then_the_deployment_then_the_table() -> None:
    mine = Price(input=1.0, output=1.0)
    by_deployment = Price(input=2.0, output=2.0)
    book = PriceBook({"smart": mine, "claude/claude-x": by_deployment})
    assert book.price("smart", "claude/claude-sonnet-4-5") is mine
    assert book.price("other", "claude/claude-x") is by_deployment
    # not configured: the upstream model id in the shipped table, a dated id by its family
    assert (
        book.price("other", "claude/claude-sonnet-4-5-20250929")
        == shipped_prices()["claude-sonnet-4-5"]
    )
    assert book.price("gpt-4o-2024-08-06") == shipped_prices()["gpt-4o"]
    assert book.price("unknown", "up/unknown") is None
    assert book.cost(Usage(prompt_tokens=10), "unknown", "up/unknown") == 0.0
