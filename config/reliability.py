"""A database outage answers 503 Service Unavailable with `Retry-After`, not a 500 error page.

A PostgreSQL restart or failover takes seconds. Requests during it fail with OperationalError or
InterfaceError (the connection is refused, or a persistent one died; `CONN_HEALTH_CHECKS` replaces
a dead connection at the start of the next request). A 503 with `Retry-After` tells every client
to try again: the annotation page resubmits by itself (its submit is idempotent, keyed by the
assignment, so a retry never stores a second judgment), API scripts and load balancers read the
status. The error is logged as a warning, without the traceback page.

A request stuck behind a held lock, or a statement that runs away, ends the same way: the web
processes' connections carry `lock_timeout` and `statement_timeout` (DB_LOCK_TIMEOUT,
DB_STATEMENT_TIMEOUT in config/settings.py), and PostgreSQL's cancellation arrives as an
OperationalError, so the client is told to retry instead of a web thread hanging for the wait.

`DatabaseUnavailableMiddleware` catches what views raise; `server_error` (the `handler500`)
catches what a middleware raised, for example a session saved while the database is down.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

log = logging.getLogger(__name__)

DATABASE_ERRORS = (OperationalError, InterfaceError)
MESSAGE = "The database is unavailable for a moment (restarting, or busy). Please retry shortly."


def unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: JSON for the API and JSON clients, plain text otherwise."""
    if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
        response: HttpResponse = JsonResponse({"detail": MESSAGE}, status=503)
    else:
        response = HttpResponse(MESSAGE, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = str(settings.DB_UNAVAILABLE_RETRY_AFTER)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware:
    """Turn a database connection error raised by a view into a 503 with Retry-After."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, DATABASE_ERRORS):
            return None
        log.warning("database unavailable on %s %s: %s", request.method, request.path, exception)
        return unavailable_response(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """The 500 handler: a database error raised outside a view is still a 503, anything else a 500."""
    if isinstance(sys.exc_info()[1], DATABASE_ERRORS):
        return unavailable_response(request)
    return defaults.server_error(request)
