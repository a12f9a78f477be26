"""TransactionCache: TTL expiry, size-limit eviction and replacement, all handed back."""

from __future__ import annotations

import pytest

from coraza_spoa_py.cache import TransactionCache
from tests.unit.waf_fakes import FakeClock


def make(ttl_s: float = 10.0, limit: int = 3) -> tuple[TransactionCache[str], FakeClock]:
    clock = FakeClock()
    return TransactionCache(ttl_s, limit, clock=clock), clock


def test_put_then_pop_returns_the_transaction_once():
    cache, _ = make()
    assert cache.put("a", "tx-a") == []
    assert "a" in cache and len(cache) == 1
    assert cache.pop("a") == "tx-a"
    assert cache.pop("a") is None
    assert len(cache) == 0


def test_pop_of_unknown_id_is_none():
    cache, _ = make()
    assert cache.pop("nope") is None


def test_expire_returns_entries_past_their_ttl_only():
    """1. put a at t0, b at t0+6  2. advance to t0+10  3. expire → [a]; at t0+16 → [b]."""
    cache, clock = make(ttl_s=10.0)
    cache.put("a", "tx-a")
    clock.advance(6)
    cache.put("b", "tx-b")
    clock.advance(3.999)
    assert cache.expire() == []
    clock.advance(0.001)
    assert cache.expire() == [("a", "tx-a")]
    assert len(cache) == 1
    clock.advance(6)
    assert cache.expire() == [("b", "tx-b")]
    assert len(cache) == 0


def test_pop_after_expiry_is_none_and_the_entry_is_handed_to_expire():
    cache, clock = make(ttl_s=1.0)
    cache.put("a", "tx-a")
    clock.advance(1.5)
    assert cache.pop("a") is None
    assert "a" not in cache
    # not lost: still counted, and the next expire() returns it for closing
    assert len(cache) == 1
    assert cache.expire() == [("a", "tx-a")]
    assert len(cache) == 0


def test_size_limit_evicts_the_oldest_and_returns_it():
    cache, clock = make(limit=2)
    cache.put("a", "tx-a")
    clock.advance(1)
    cache.put("b", "tx-b")
    assert cache.put("c", "tx-c") == [("a", "tx-a")]
    assert cache.put("d", "tx-d") == [("b", "tx-b")]
    assert cache.pop("c") == "tx-c" and cache.pop("d") == "tx-d"


def test_same_id_replaces_and_returns_the_old_transaction():
    cache, _ = make()
    cache.put("a", "old")
    assert cache.put("a", "new") == [("a", "old")]
    assert cache.pop("a") == "new"
    assert len(cache) == 0


def test_entries_expired_while_putting_are_not_lost():
    """An entry that expired before a put is not handed back by the put but by expire(), so
    the sweeper closes it (the put path hands back only what it evicts or replaces)."""
    cache, clock = make(ttl_s=1.0, limit=10)
    cache.put("a", "tx-a")
    clock.advance(2)
    assert cache.put("b", "tx-b") == []
    assert len(cache) == 2  # b live + a waiting to be collected
    assert cache.expire() == [("a", "tx-a")]


def test_replacing_an_expired_entry_hands_the_old_one_to_expire():
    cache, clock = make(ttl_s=1.0)
    cache.put("a", "old")
    clock.advance(2)
    assert cache.put("a", "new") == []
    assert cache.expire() == [("a", "old")]
    assert cache.pop("a") == "new"


def test_drain_returns_everything_live_and_expired():
    cache, clock = make(ttl_s=5.0, limit=5)
    cache.put("a", "tx-a")
    clock.advance(10)
    cache.put("b", "tx-b")
    cache.put("c", "tx-c")
    drained = cache.drain()
    assert sorted(drained) == [("a", "tx-a"), ("b", "tx-b"), ("c", "tx-c")]
    assert len(cache) == 0
    assert cache.expire() == [] and cache.drain() == []


def test_limit_of_one_and_many_puts_never_lose_an_entry():
    cache, clock = make(ttl_s=3.0, limit=1)
    handed_back = []
    for n in range(50):
        handed_back += cache.put(str(n), f"tx{n}")
        clock.advance(0.5)
        if n % 7 == 0:
            handed_back += cache.expire()
    handed_back += cache.drain()
    assert sorted(int(v[2:]) for _, v in handed_back) == list(range(50))


@pytest.mark.parametrize(("ttl", "limit"), [(0, 1), (-1, 1), (1, 0)])
def test_rejects_nonsense_limits(ttl, limit):
    with pytest.raises(ValueError):
        TransactionCache(ttl, limit)
