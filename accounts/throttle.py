"""Failure counters for the login and API-token throttles, kept where every web process sees them.

The store is the `throttle` cache alias (config/settings.py): the shared cache when CACHE_URL
names one (Redis, as in docker-compose, where INCR is atomic), else the database table
`prefloop_throttle` (created by migration annotation 0013). Never one process's memory: with
the per-process default each gunicorn worker counted on its own, and a limit of 5 fired at the
9th attempt with two workers.

The database cache reads and writes a count in two statements, so there an increment holds the
row's lock for both (PostgreSQL: SELECT ... FOR UPDATE; SQLite: the write lock its IMMEDIATE
transactions take at BEGIN) and failures sent in parallel are all counted.

Windows are fixed: a key's first failure starts its window, and the key expires with it.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.db import BaseDatabaseCache
from django.db import connections, router, transaction
from django.http import HttpRequest

from config.security import client_ip


def store() -> BaseCache:
    return caches["throttle"]


def count(key: str) -> int:
    return store().get(key) or 0


def reset(key: str) -> None:
    store().delete(key)


def hit(key: str, window: int) -> int:
    """Count one failure under `key` and return the count in its window."""
    cache = store()
    if not isinstance(cache, BaseDatabaseCache):
        return _hit(cache, key, window)
    db = router.db_for_write(cache.cache_model_class)
    with transaction.atomic(using=db):
        cache.add(key, 0, timeout=window)
        connection = connections[db]
        if connection.features.has_select_for_update:
            table = connection.ops.quote_name(cache._table)  # type: ignore[attr-defined]  # set in its __init__
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT 1 FROM {table} WHERE cache_key = %s FOR UPDATE",  # noqa: S608 (a quoted table name)
                    [cache.make_and_validate_key(key)],
                )
        return _hit(cache, key, window)


def _hit(cache: BaseCache, key: str, window: int) -> int:
    cache.add(key, 0, timeout=window)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        return 1


# ---------------------------------------------------------------------------------------------
# Bad API tokens: per client address, refused before the token is looked up.


class TooManyBadTokensError(Exception):
    """This address sent too many bad API tokens; answered 429 with Retry-After (config.api)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many bad API tokens from this address; try again in {retry_after} s")
        self.retry_after = retry_after


def token_window() -> int:
    return max(1, settings.LOGIN_RATE_LIMIT_WINDOW)


def _token_key(request: HttpRequest) -> str | None:
    ip = client_ip(request)
    return f"token-fail:ip:{ip}" if ip and settings.API_TOKEN_RATE_LIMIT_PER_IP > 0 else None


def check_token_throttle(request: HttpRequest) -> None:
    """Raise TooManyBadTokensError while this address is over its limit."""
    key = _token_key(request)
    if key and count(key) >= settings.API_TOKEN_RATE_LIMIT_PER_IP:
        raise TooManyBadTokensError(token_window())


def bad_token(request: HttpRequest) -> None:
    key = _token_key(request)
    if key:
        hit(key, token_window())
