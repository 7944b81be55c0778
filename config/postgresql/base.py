"""Django's PostgreSQL backend with a health check that costs no round trip while the connection
is quiet, and timestamps read by psycopg's C loader.

Django checks a persistent connection at the start of each request (`CONN_HEALTH_CHECKS`) by
running `SELECT 1`: one round trip per request, which on the annotation hot path was 2 of the 11
a next + submit loop made. A server that goes away (restart, failover, a terminated backend, a
proxy closing the link) sends something first, an error message or the end of the stream, so an
idle connection whose socket has nothing to read has not been closed by the other side. The check
here polls the socket without waiting and runs Django's `SELECT 1` only when something did arrive.
A link that dies silently (a cable pulled, no reset ever sent) is not caught by this, nor was it by
`SELECT 1` without a long timeout: the first query fails, the request answers 503
(config/reliability.py), and Django drops the connection at the end of that request.
After an error inside a request, Django's own full check still decides whether to keep the
connection (`close_if_unusable_or_obsolete` calls `is_usable`, which is unchanged).

Django reads `timestamptz` values through its own loader, a Python subclass of psycopg's Python
loader that parses the text and then sets the time zone: 3.6 us a value here, against 0.2 us for
the C loader psycopg registers by default. Where the connection's time zone and Django's are both
UTC (`USE_TZ` with the default database `TIME_ZONE`), the two give the same value (an aware
datetime in `datetime.timezone.utc`), so each cursor gets psycopg's default loader back. That matters
on the annotation loop, whose rows carry five timestamps or more.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg import pq

_TIMESTAMPTZ = psycopg.adapters.types["timestamptz"].oid
# psycopg's default: its C implementation where psycopg[binary] or [c] is installed.
_FAST_TZ_LOADER = psycopg.adapters.get_loader(_TIMESTAMPTZ, pq.Format.TEXT)


class DatabaseWrapper(base.DatabaseWrapper):
    _kept: psycopg.Cursor[Any] | None = None
    # Django's, missing from django-stubs: set by BaseDatabaseWrapper, and `pool` (the connection
    # pool or None) a property of the PostgreSQL wrapper. Annotations only: nothing is assigned.
    health_check_enabled: bool
    health_check_done: bool
    pool: object

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = super().create_cursor(name)
        self._fast_timestamps(cursor)
        return cursor

    def _fast_timestamps(self, cursor: Any) -> None:
        if self.timezone_name == "UTC" and self.connection.info.parameter_status("TimeZone") == "UTC":
            cursor.adapters.register_loader(_TIMESTAMPTZ, _FAST_TZ_LOADER)

    def kept_cursor(self) -> psycopg.Cursor[Any]:
        """A server-binding psycopg cursor kept open on the connection, for statements run often
        (`annotation.rows`). Each call still does what matters of making a Django cursor: the
        per-request health check, the connection opened on demand, the check that it is used by its
        own thread, and the refusal to run inside a broken transaction. The caller wraps the
        execute in `wrap_database_errors`. Queries run on it are not logged."""
        self.validate_thread_sharing()
        self.close_if_health_check_failed()
        self.ensure_connection()
        self.validate_no_broken_transaction()
        raw = self.connection
        kept = self._kept
        if kept is None or kept.closed or kept.connection is not raw:
            # psycopg 3's server-binding cursor, which django-stubs' module does not list.
            kept = self._kept = base.ServerBindingCursor(raw)  # type: ignore[attr-defined]
            self._fast_timestamps(kept)
        return kept

    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and self._quiet()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _quiet(self) -> bool:
        """True when the connection is open, idle and its socket has nothing to read."""
        conn = self.connection
        if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False
