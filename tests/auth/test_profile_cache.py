"""The in-memory profile cache behind GetCurrentUser stays bounded and keeps the recent ones."""

from __future__ import annotations

import datetime as dt

from licensing_server.auth import ProfileCache, UserProfile

_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _profile(n: int) -> UserProfile:
    return UserProfile(f"user-{n}", f"name{n}", _T0)


def test_the_cache_forgets_the_least_recently_used_profile_first() -> None:
    cache = ProfileCache(size=2)
    cache.put(_profile(1))
    cache.put(_profile(2))
    assert cache.get("user-1") == _profile(1)  # user-1 is now the most recent
    cache.put(_profile(3))
    assert cache.get("user-2") is None
    assert cache.get("user-1") == _profile(1)
    assert cache.get("user-3") == _profile(3)


def test_a_forgotten_profile_is_looked_up_again() -> None:
    cache = ProfileCache()
    cache.put(_profile(1))
    cache.forget("user-1")
    assert cache.get("user-1") is None
