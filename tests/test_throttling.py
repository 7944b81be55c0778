"""Login and API-token throttles count where every web process sees them (config/throttle.py):
two separate processes, each with its own memory, share one counter; and bad API tokens from one
address are answered 429 with Retry-After, before any token is looked up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.test import Client

from tests.conftest import ROOT, _database_url
from tests.test_api import token_for

# One web process: a Django test client in a fresh interpreter, sending the requests it is given
# (method, path, data, headers, REMOTE_ADDR) and printing each answer's status and Retry-After.
PROCESS = """
import json, sys, django
django.setup()
from django.test import Client
out = []
for method, path, data, headers, addr in json.loads(sys.argv[1]):
    r = getattr(Client(headers=headers), method)(path, data, REMOTE_ADDR=addr)
    out.append([r.status_code, r.headers.get("Retry-After")])
print(json.dumps(out))
"""


def _process(requests: list[list[Any]], **env: str | None) -> list[list[Any]]:
    base = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DATABASE_URL": _database_url()}
    for name, value in env.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, json.dumps(requests)],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stores() -> list[Any]:
    broker = os.environ.get("CELERY_BROKER_URL", "")
    redis = pytest.param(
        {"CACHE_URL": broker},
        id="redis",
        marks=pytest.mark.skipif(not broker.startswith("redis://"), reason="no Redis broker to share a cache in"),
    )
    return [pytest.param({"CACHE_URL": None}, id="database"), redis]


@pytest.fixture
def separate_processes(transactional_db: None) -> Any:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("separate processes need the PostgreSQL test database")
    yield
    caches["throttle"].clear()  # the database store (the flush leaves the cache table alone)


@pytest.mark.parametrize("store", _stores())
def test_two_processes_share_the_login_counter(separate_processes: None, store: dict[str, str | None]) -> None:
    # Unique names and address: a shared Redis store keeps them for the window, after the test.
    name, addr = f"u{uuid.uuid4().hex[:10]}", f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.9"
    get_user_model().objects.create_user(username=name, password="right-pw-123")

    def login(password: str) -> list[Any]:
        return ["post", "/accounts/login/", {"username": name, "password": password}, {}, addr]

    env = {"LOGIN_RATE_LIMIT": "5", "LOGIN_RATE_LIMIT_WINDOW": "900", **store}
    first = _process([login("wrong")] * 3, **env)
    second = _process([login("wrong")] * 2 + [login("right-pw-123")], **env)
    assert [s for s, _ in first + second[:2]] == [200] * 5
    assert second[2] == [429, "900"]  # the sixth attempt, in another process: refused unread
    assert _process([login("right-pw-123")], **env)[0][0] == 429


@pytest.mark.parametrize("store", _stores())
def test_two_processes_share_the_bad_token_counter(
    separate_processes: None, store: dict[str, str | None], make_user: Any
) -> None:
    good = token_for(make_user(f"t{uuid.uuid4().hex[:8]}"))
    addr = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"

    def call(token: str, address: str = addr) -> list[Any]:
        return ["get", "/api/v1/projects", {}, {"Authorization": f"Bearer {token}"}, address]

    env = {"API_TOKEN_RATE_LIMIT_PER_IP": "4", "LOGIN_RATE_LIMIT_WINDOW": "600", **store}
    first = _process([call("pl_wrong-1"), call("pl_wrong-2")], **env)
    second = _process([call("pl_wrong-3"), call("not-even-ours"), call(good), call(good, "10.250.250.250")], **env)
    assert [s for s, _ in first + second[:2]] == [401] * 4
    assert second[2] == [429, "600"]  # over the limit: even a good token is not looked at
    assert second[3][0] == 200  # another address is not affected


def test_bad_api_tokens_are_answered_429_with_retry_after(db: None, make_user: Any, settings: Any) -> None:
    settings.API_TOKEN_RATE_LIMIT_PER_IP = 3
    good = token_for(make_user("tess"))

    def get(token: str, addr: str = "10.0.0.5") -> Any:
        return Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/projects", REMOTE_ADDR=addr)

    assert get(good).status_code == 200
    for bad in ("pl_guess-1", "pl_guess-2", "garbage"):
        assert get(bad).status_code == 401
    blocked = get("pl_guess-4")
    assert blocked.status_code == 429
    assert int(blocked["Retry-After"]) == settings.LOGIN_RATE_LIMIT_WINDOW
    assert "too many bad API tokens" in blocked.json()["detail"]
    assert get(good).status_code == 429  # refused unread, so guessing learns nothing more
    assert get(good, "10.0.0.6").status_code == 200
    # A browser session (no Authorization header) is not a token and is not refused.
    browser = Client()
    browser.force_login(get_user_model().objects.get(username="tess"))
    assert browser.get("/api/v1/projects", REMOTE_ADDR="10.0.0.5").status_code == 200
    caches["throttle"].clear()  # the window has passed
    assert get(good).status_code == 200


def test_no_limit_when_set_to_zero(db: None, settings: Any) -> None:
    settings.API_TOKEN_RATE_LIMIT_PER_IP = 0
    for _ in range(30):
        response = Client(headers={"Authorization": "Bearer pl_x"}).get("/api/v1/projects", REMOTE_ADDR="10.0.0.9")
        assert response.status_code == 401
