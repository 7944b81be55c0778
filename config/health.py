"""Health endpoints, for load balancers, docker health checks and people.

- `GET /healthz` (web): the database (`SELECT 1`), the cache (a set and a get of its own key) and the Celery broker
  (a Redis PING, or a kombu connection for other brokers) are each checked, the broker with a
  timeout (HEALTH_TIMEOUT_SECONDS; the database's is DB_CONNECT_TIMEOUT); the JSON has every check
  with its latency. 200 when all pass, 503 otherwise; `?checks=database` runs only the named ones.
  Error details go to the log; the answer names only the exception's class.
- `GET /healthz/workers`: which queues (default, ai, gpu) have a live worker. One broadcast
  (`inspect().active_queues()`) is answered by each worker's main process, also while its pool is
  busy with a six-hour training run, which a heartbeat task queued behind that run could not do.
  The web request waits HEALTH_WORKERS_TIMEOUT_SECONDS (1 s) for the answers, so the report is
  cached HEALTH_WORKERS_CACHE_SECONDS (10 s): "alive" means a worker consuming the queue answered
  within the last 10 s. 503 while a queue in HEALTH_REQUIRED_QUEUES has no worker. Needs a broker
  with broadcast (Redis, RabbitMQ); the embedded filesystem broker has none.

`manage.py check_worker --queue gpu [--node celery@HOST]` asks the same question from the command
line and exits 0 or 1: the workers' docker health check.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)

QUEUES = ("default", "ai", "gpu")
WORKERS_CACHE_KEY = "health:workers"


def _timed(name: str, check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        log.warning("health check %s failed: %s: %s", name, type(exc).__name__, exc)
        result: dict[str, Any] = {"ok": False, "error": type(exc).__name__}
    else:
        result = {"ok": True}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def check_database() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        if cursor.fetchone() != (1,):
            raise RuntimeError("SELECT 1 did not return 1")


def check_cache() -> None:
    """A set and a get under a key of this check's own: checks that overlap (two load balancers,
    several gunicorn threads) never read each other's value, as they did under one fixed key."""
    token = secrets.token_hex(16)
    key = f"health:cache:{token}"
    cache.set(key, token, 30)
    try:
        if cache.get(key) != token:
            raise RuntimeError("the cache did not return what was just stored")
    finally:
        cache.delete(key)


def check_broker() -> None:
    url = settings.CELERY_BROKER_URL
    timeout = settings.HEALTH_TIMEOUT_SECONDS
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


CHECKS: dict[str, Callable[[], None]] = {"database": check_database, "cache": check_cache, "broker": check_broker}


def web_report(names: Iterable[str] = tuple(CHECKS)) -> dict[str, Any]:
    checks = {name: _timed(name, CHECKS[name]) for name in names}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "fail", "checks": checks}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """All checks, or those named in `?checks=database,cache` (a load balancer that should keep
    serving pages while the broker is away asks for the database alone)."""
    names = [n.strip() for n in request.GET.get("checks", "").split(",") if n.strip()] or list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        return JsonResponse({"error": f"unknown check(s) {', '.join(unknown)}; use {', '.join(CHECKS)}"}, status=400)
    report = web_report(names)
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


# ---------------------------------------------------------------------------------------------
# Workers


def worker_queues(*, timeout: float, nodes: Iterable[str] | None = None) -> dict[str, list[str]]:
    """{worker node name: the queues it consumes} for the workers that answered within `timeout`.

    With `nodes`, only those workers are asked (and the answer comes as soon as they all replied)."""
    from config.celery import app

    destination = list(nodes) if nodes else None
    replies = app.control.inspect(timeout=timeout, destination=destination).active_queues() or {}
    return {node: sorted({q["name"] for q in queues or []}) for node, queues in replies.items()}


def workers_report(*, timeout: float | None = None, nodes: Iterable[str] | None = None) -> dict[str, Any]:
    """Each queue: alive (some worker consuming it answered) and which workers; `status` is ok when
    every queue in HEALTH_REQUIRED_QUEUES is alive."""
    timeout = settings.HEALTH_WORKERS_TIMEOUT_SECONDS if timeout is None else timeout
    started = time.perf_counter()
    error = ""
    try:
        answered = worker_queues(timeout=timeout, nodes=nodes)
    except Exception as exc:  # the broker is down: no worker can be reached either
        log.warning("asking the workers failed: %s: %s", type(exc).__name__, exc)
        answered, error = {}, type(exc).__name__
    queues = {
        name: {"alive": bool(workers), "workers": workers}
        for name in QUEUES
        for workers in [sorted(node for node, consumed in answered.items() if name in consumed)]
    }
    required = settings.HEALTH_REQUIRED_QUEUES
    report: dict[str, Any] = {
        "status": "ok" if all(queues[q]["alive"] for q in required) else "fail",
        "queues": queues,
        "required": list(required),
        "workers": len(answered),
        "checked_at": timezone.now().isoformat(),
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if error:
        report["error"] = error
    return report


def cached_workers_report() -> dict[str, Any]:
    """The workers report, asked at most once per HEALTH_WORKERS_CACHE_SECONDS (per cache)."""
    try:
        report = cache.get(WORKERS_CACHE_KEY)
    except Exception:  # the cache is down: ask anyway
        report = None
    if report is None:
        report = workers_report()
        try:
            cache.set(WORKERS_CACHE_KEY, report, settings.HEALTH_WORKERS_CACHE_SECONDS)
        except Exception:
            log.warning("could not cache the workers report", exc_info=True)
    return report


@never_cache
@require_GET
def healthz_workers(request: HttpRequest) -> JsonResponse:
    report = cached_workers_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
