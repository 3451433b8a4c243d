"""The behaviour every limiter shares, run against `LocalLimiter` and `RedisLimiter`."""

from __future__ import annotations

import asyncio
import time

import pytest

from noroshi.limits import Decision, Limiter, LocalLimiter, Rule
from tests.limits.conftest import Make, add_spend, settle

KEY = "key:k1"
MODEL = "key:k1:model:m1"


async def admit_all(limiter: Limiter, rules: list[Rule], n: int, tokens: int = 1) -> list[Decision]:
    return [await limiter.admit(rules, f"lease-{i}", tokens) for i in range(n)]


async def test_rpm_admits_exactly_the_limit(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, rpm=5)]
    decisions = await admit_all(limiter, rules, 6)
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining_requests for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert (refused.reason, refused.scope, refused.limit_requests) == ("rpm", KEY, 5)
    assert 0 < refused.retry_after_s <= 60
    assert refused.reset_requests_s == pytest.approx(refused.retry_after_s, abs=0.5)
    assert decisions[0].limit_tokens is None and decisions[0].remaining_tokens is None


async def test_unlimited_rules_always_admit(make: Make) -> None:
    limiter = make()
    decisions = await admit_all(limiter, [Rule(KEY)], 3, tokens=10**9)
    assert all(d.allowed for d in decisions)
    assert decisions[0].limit_requests is None and decisions[0].limit_tokens is None


async def test_a_refusal_records_nothing_in_any_scope(make: Make) -> None:
    limiter = make()
    key = Rule(KEY, rpm=10, tpm=1_000, concurrency=5)
    both = [key, Rule(MODEL, rpm=1, tpm=100)]
    assert (await limiter.admit(both, "first", 10)).allowed
    for i in range(3):
        refused = await limiter.admit(both, f"refused-{i}", 10)
        assert (refused.allowed, refused.reason, refused.scope) == (False, "rpm", MODEL)
    refused = await limiter.admit([key, Rule(MODEL, tpm=100)], "too-big", 200)
    assert (refused.allowed, refused.reason, refused.scope) == (False, "tpm", MODEL)
    # the key scope holds the first request only
    after = await limiter.admit([key], "key-only", 10)
    assert after.allowed
    assert (after.remaining_requests, after.remaining_tokens) == (8, 980)
    for i in range(3):
        assert (await limiter.admit([key], f"slot-{i}", 0)).allowed
    assert (await limiter.admit([key], "sixth", 0)).reason == "concurrency"


async def test_the_rule_closest_to_refusing_fills_the_headers(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, rpm=100, tpm=10_000), Rule(MODEL, rpm=3, tpm=50)]
    decision = await limiter.admit(rules, "a", 20)
    assert (decision.limit_requests, decision.remaining_requests) == (3, 2)
    assert (decision.limit_tokens, decision.remaining_tokens) == (50, 30)
    assert 0 < decision.reset_requests_s <= 60 and 0 < decision.reset_tokens_s <= 60


async def test_settle_replaces_the_reservation_with_the_real_usage(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, tpm=100)]
    first = await limiter.admit(rules, "a", 80)
    assert (first.allowed, first.remaining_tokens) == (True, 20)
    refused = await limiter.admit(rules, "b", 30)
    assert (refused.allowed, refused.reason, refused.remaining_tokens) == (False, "tpm", 20)
    await settle(limiter, rules, "a", 10)
    await settle(limiter, rules, "a", 10)  # idempotent
    second = await limiter.admit(rules, "b", 30)
    assert (second.allowed, second.remaining_tokens) == (True, 60)
    # the settled usage stays in the window at its original time
    third = await limiter.admit(rules, "c", 60)
    assert (third.allowed, third.remaining_tokens) == (True, 0)
    assert not (await limiter.admit(rules, "d", 1)).allowed


async def test_settle_of_an_unknown_lease_changes_nothing(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, tpm=100, concurrency=1)]
    await settle(limiter, rules, "never-admitted", 50)
    decision = await limiter.admit(rules, "a", 10)
    assert (decision.allowed, decision.remaining_tokens) == (True, 90)


async def test_more_tokens_than_the_limit_are_refused(make: Make) -> None:
    limiter = make()
    refused = await limiter.admit([Rule(KEY, tpm=100)], "a", 101)
    assert (refused.allowed, refused.reason, refused.scope) == (False, "tpm", KEY)
    assert refused.retry_after_s > 0
    assert (await limiter.admit([Rule(KEY, tpm=100)], "b", 100)).allowed


async def test_retry_after_is_when_the_oldest_request_leaves(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, rpm=2)]
    began = time.monotonic()
    assert (await limiter.admit(rules, "a", 0)).allowed
    await asyncio.sleep(0.3)
    assert (await limiter.admit(rules, "b", 0)).allowed
    refused = await limiter.admit(rules, "c", 0)
    elapsed = time.monotonic() - began
    assert refused.reason == "rpm"
    # when "a" leaves, not "b": at least 0.3 s sooner than a full window
    assert 60 - elapsed - 0.05 <= refused.retry_after_s <= 60 - 0.3


async def test_token_retry_after_waits_for_enough_tokens_to_leave(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, tpm=100)]
    assert (await limiter.admit(rules, "a", 60)).allowed
    await asyncio.sleep(0.3)
    assert (await limiter.admit(rules, "b", 40)).allowed
    once_a_leaves = await limiter.admit(rules, "c", 50)
    once_both_leave = await limiter.admit(rules, "d", 70)
    assert once_a_leaves.reason == once_both_leave.reason == "tpm"
    assert once_a_leaves.retry_after_s <= 60 - 0.3
    assert once_both_leave.retry_after_s >= once_a_leaves.retry_after_s + 0.25


async def test_token_retry_after_over_many_small_reservations(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, tpm=300)]
    await asyncio.gather(*(limiter.admit(rules, f"l{i}", 1) for i in range(300)))
    few = await limiter.admit(rules, "few", 50)
    many = await limiter.admit(rules, "many", 250)
    assert few.reason == many.reason == "tpm"
    assert 0 < few.retry_after_s <= many.retry_after_s <= 60


async def test_the_window_slides_instead_of_resetting(make: Make) -> None:
    limiter = make(window_s=3.0)
    rules = [Rule(KEY, rpm=2)]
    assert (await limiter.admit(rules, "a", 0)).allowed
    await asyncio.sleep(1.5)
    assert (await limiter.admit(rules, "b", 0)).allowed
    refused = await limiter.admit(rules, "c", 0)
    assert not refused.allowed and refused.retry_after_s <= 1.5
    await asyncio.sleep(refused.retry_after_s + 0.2)
    # "a" has left; "b" still counts, where a fixed window would have reset both
    assert (await limiter.admit(rules, "c", 0)).allowed
    assert not (await limiter.admit(rules, "d", 0)).allowed


async def test_entries_leave_the_window_with_their_tokens(make: Make) -> None:
    limiter = make(window_s=0.5)
    rules = [Rule(KEY, rpm=5_000, tpm=10_000)]
    await asyncio.gather(*(limiter.admit(rules, f"l{i}", 3) for i in range(2_500)))
    await asyncio.sleep(1.0)
    decision = await limiter.admit(rules, "fresh", 7)
    assert decision.allowed
    assert (decision.remaining_requests, decision.remaining_tokens) == (4_999, 9_993)


async def test_concurrency_slots_free_on_settle(make: Make) -> None:
    limiter = make()
    rules = [Rule(KEY, concurrency=2)]
    assert (await limiter.admit(rules, "a", 0)).allowed
    assert (await limiter.admit(rules, "b", 0)).allowed
    refused = await limiter.admit(rules, "c", 0)
    assert (refused.allowed, refused.reason, refused.scope) == (False, "concurrency", KEY)
    assert 0 < refused.retry_after_s <= 1
    await settle(limiter, rules, "a", 0)
    await settle(limiter, rules, "a", 0)  # idempotent: frees one slot, not two
    assert (await limiter.admit(rules, "c", 0)).allowed
    assert not (await limiter.admit(rules, "d", 0)).allowed


async def test_concurrency_leases_expire_unless_settled(make: Make) -> None:
    owner = make(lease_ttl_s=0.3)
    rules = [Rule(KEY, concurrency=1)]
    assert (await owner.admit(rules, "lost", 0)).allowed
    assert not (await owner.admit(rules, "b", 0)).allowed
    if isinstance(owner, LocalLimiter):
        limiter = owner
    else:  # the replica that admitted it is gone: nothing renews its lease
        await owner.close()
        limiter = make(lease_ttl_s=0.3)
    await asyncio.sleep(1.0)
    assert (await limiter.admit(rules, "b", 0)).allowed


async def test_budget_counters(make: Make) -> None:
    limiter = make()
    periods = ["day:2026-11-21", "month:2026-11"]
    assert await limiter.spend("k1", periods) == [(0, 0.0), (0, 0.0)]
    await add_spend(limiter, "k1", periods, 100, 0.25)
    await add_spend(limiter, "k1", periods, 50, 0.125)
    await add_spend(limiter, "k2", periods[:1], 7, 1e-05)
    assert await limiter.spend("k1", periods) == [(150, 0.375), (150, 0.375)]
    assert await limiter.spend("k2", periods) == [(7, pytest.approx(1e-05)), (0, 0.0)]
    await limiter.seed_spend("k1", "day:2026-11-21", 9_999, 99.0)  # exists: kept
    await limiter.seed_spend("k1", "month:2026-10", 1_000, 2.5)  # new: set
    spent = await limiter.spend("k1", ["day:2026-11-21", "month:2026-10"])
    assert spent == [(150, 0.375), (1_000, 2.5)]
    await add_spend(limiter, "k1", ["month:2026-10"], 1, 0.5)
    assert await limiter.spend("k1", ["month:2026-10"]) == [(1_001, 3.0)]


async def test_hit_counts_events_in_a_sliding_window(make: Make) -> None:
    limiter = make()
    assert [await limiter.hit("authfail:1.2.3.4", 0.5) for _ in range(3)] == [1, 2, 3]
    assert await limiter.hit("authfail:5.6.7.8", 0.5) == 1
    await asyncio.sleep(1.0)
    assert await limiter.hit("authfail:1.2.3.4", 0.5) == 1


async def test_an_empty_lease_is_refused(make: Make) -> None:
    with pytest.raises(ValueError, match="lease"):
        await make().admit([Rule(KEY, rpm=1)], "", 0)


async def test_a_request_admitted_now_leaves_in_exactly_one_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # at this clock reading, adding the window first and subtracting after rounds up
    monkeypatch.setattr("noroshi.limits.local.time.monotonic", lambda: 2027.5755678185303)
    decision = await LocalLimiter().admit([Rule(KEY, rpm=3, tpm=50)], "a", 20)
    assert decision.reset_requests_s == 60.0 and decision.reset_tokens_s == 60.0
