"""Health endpoints: /healthz (database, cache, broker) and /healthz/workers (a live worker per
queue, through a real worker process), and `manage.py check_worker`, the workers' docker check."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client

from config.health import WORKERS_CACHE_KEY
from tests.conftest import stop_worker
from tests.test_reliability import database_url_via, free_port, gunicorn_server


def test_web_health_checks_database_cache_and_broker(db: None) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    report = response.json()
    assert report["status"] == "ok"
    assert set(report["checks"]) == {"database", "cache", "broker"}
    for check in report["checks"].values():
        assert check["ok"] is True and 0 <= check["ms"] < 5000


def test_an_unreachable_broker_is_a_503_naming_the_check(db: None, settings: Any) -> None:
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    response = Client().get("/healthz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"] == {"ok": False, "error": "ConnectionError", "ms": checks["broker"]["ms"]}
    assert checks["database"]["ok"] and checks["cache"]["ok"]
    # A load balancer that keeps pages up without the broker asks for the database alone.
    response = Client().get("/healthz?checks=database")
    assert response.status_code == 200 and list(response.json()["checks"]) == ["database"]
    assert Client().get("/healthz?checks=database,disk").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_database_that_is_down_is_a_503_from_the_real_server(tmp_path: Path) -> None:
    with gunicorn_server(tmp_path, database_url=database_url_via(port=free_port())) as server:
        status, headers, body = server.get("/healthz")
        assert status == 503 and headers["Content-Type"] == "application/json"
        checks = json.loads(body)["checks"]
        assert checks["database"]["ok"] is False and checks["database"]["error"] == "OperationalError"
        assert checks["cache"]["ok"] and checks["broker"]["ok"]
        # Any other page: a 503 telling the client when to retry, not a 500 error page.
        status, headers, body = server.get("/api/v1/projects", Authorization="Bearer pl_not-a-real-token")
        assert (status, headers["Retry-After"]) == (503, "2")
        assert "unavailable" in json.loads(body)["detail"]


@pytest.mark.worker
def test_workers_health_reports_each_queue(celery_worker_process: Any, capsys: Any) -> None:
    cache.delete(WORKERS_CACHE_KEY)
    response = Client().get("/healthz/workers")
    assert response.status_code == 200, response.json()
    report = response.json()
    assert report["status"] == "ok" and report["workers"] == 1
    for name in ("default", "ai", "gpu"):
        queue = report["queues"][name]
        assert queue["alive"] is True and len(queue["workers"]) == 1 and queue["workers"][0].startswith("test-")
    node = report["queues"]["gpu"]["workers"][0]

    call_command("check_worker", "--queue", "gpu", "--node", node, "--timeout", "5")
    assert capsys.readouterr().out == f"gpu: {node}\n"
    with pytest.raises(CommandError, match="no live worker for queue"):
        call_command("check_worker", "--queue", "gpu", "--node", "celery@elsewhere", "--timeout", "1")

    stop_worker(celery_worker_process)
    # The report is cached for HEALTH_WORKERS_CACHE_SECONDS: a load balancer costs one broadcast per 10 s.
    assert Client().get("/healthz/workers").json()["checked_at"] == report["checked_at"]
    cache.delete(WORKERS_CACHE_KEY)
    started = time.monotonic()
    response = Client().get("/healthz/workers")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    report = response.json()
    assert report["status"] == "fail" and report["workers"] == 0
    assert all(q == {"alive": False, "workers": []} for q in report["queues"].values())
    with pytest.raises(CommandError, match=r"no live worker for queue\(s\) gpu"):
        call_command("check_worker", "--queue", "gpu", "--timeout", "1")


@pytest.mark.worker
def test_only_the_required_queues_decide_the_status(worker_env: None, settings: Any) -> None:
    settings.HEALTH_REQUIRED_QUEUES = []  # e.g. a deployment that runs no worker at all
    cache.delete(WORKERS_CACHE_KEY)
    response = Client().get("/healthz/workers")
    assert response.status_code == 200
    assert response.json()["queues"]["gpu"] == {"alive": False, "workers": []}
    cache.delete(WORKERS_CACHE_KEY)


@pytest.mark.django_db
def test_health_probes_are_not_redirected_to_https(settings) -> None:
    """With SECURE_SSL_REDIRECT on, a probe over plain HTTP from inside still gets its answer; pages
    redirect."""
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/accounts/login/").status_code == 301
    assert Client().get("/healthz?checks=database").status_code == 200


def test_overlapping_cache_checks_do_not_read_each_others_value(rf: Any, monkeypatch: Any) -> None:
    """Two /healthz requests at once: each stores its token, then each reads. The cache is the real
    one; a wrapper holds both reads until both writes are done, which is the interleaving that gave
    false 503s when every check used one key."""
    import threading

    from config import health

    both_stored = threading.Barrier(2, timeout=30)

    class Interleaved:
        def __getattr__(self, name: str) -> Any:
            return getattr(cache, name)

        def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            both_stored.wait()  # the other check has stored its token too
            return cache.get(key, *args, **kwargs)

    monkeypatch.setattr(health, "cache", Interleaved())
    answers: list[int] = []

    def check() -> None:
        answers.append(health.healthz(rf.get("/healthz?checks=cache")).status_code)

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200, 200]
    assert not [key for key in getattr(cache, "_cache", {}) if "health:cache" in str(key)]  # none left behind
