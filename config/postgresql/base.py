"""Django's PostgreSQL backend with a health check that costs no round trip while the connection
is quiet.

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
"""

from __future__ import annotations

import select

from django.db.backends.postgresql import base
from psycopg import pq


class DatabaseWrapper(base.DatabaseWrapper):
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
