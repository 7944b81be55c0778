"""Lock and statement timeouts (config/settings.py): a web request stuck behind a held lock fails
fast and answers 503 with Retry-After, as when the database is away, and the page's resend of
the same answer stores one judgment. Background processes (Celery workers, management commands)
keep running long statements.

The server is the production one (gunicorn, tests.test_reliability) with the timeouts set small
from its environment; the lock is held from a second connection until the answer came back, so
the test waits on the server's answer, never on a clock."""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row, settings_probe
from tests.test_reliability import database_url_via, gunicorn_server

pytestmark = pytest.mark.django_db(transaction=True)

PAIRWISE = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}
SHOW = (
    "import django; django.setup(); from django.db import connection as c; cur = c.cursor(); "
    "cur.execute('SELECT current_setting(%s), current_setting(%s)', ['lock_timeout', 'statement_timeout']); "
    "print(*cur.fetchone())"
)


@contextlib.contextmanager
def table_locked(table: str) -> Iterator[None]:
    """`LOCK TABLE ... IN ACCESS EXCLUSIVE MODE` held by a second connection until the block ends."""
    with psycopg.connect(database_url_via(), autocommit=False) as holder:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            holder.rollback()


def post(url: str, data: dict[str, str], cookies: dict[str, str], **headers: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(data).encode(),
        headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()), **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_each_process_connects_with_its_timeouts() -> None:
    """Web processes: 5 s to wait for a lock, 30 s a statement; Celery workers and management
    commands: no limit; each pair from its own variables."""
    url = database_url_via()

    def shown(argv0: str, **env: str) -> str:
        probe = f"import sys; sys.argv = [{argv0!r}, 'x']; " + SHOW
        result = settings_probe(probe, drop=("DB_LOCK_TIMEOUT", "DB_STATEMENT_TIMEOUT"), **{"DATABASE_URL": url, **env})
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert shown("gunicorn") == "5s 30s"
    assert shown("gunicorn", DB_LOCK_TIMEOUT="0.25", DB_STATEMENT_TIMEOUT="0") == "250ms 0"
    assert shown("/venv/bin/celery") == "0 0"  # celery -A config worker
    assert shown("/venv/lib/python3.11/site-packages/celery/__main__.py") == "0 0"  # python -m celery
    assert shown("/venv/bin/celery", DB_BACKGROUND_STATEMENT_TIMEOUT="3600") == "0 1h"
    assert shown("manage.py") == "0 0"  # a management command (here `x`)
    # DATABASE_URL's own options come after ours, so they win.
    assert shown("gunicorn", DATABASE_URL=f"{url}?options=-c%20lock_timeout%3D7s") == "7s 30s"
    refused = settings_probe(SHOW, DATABASE_URL=url, DB_LOCK_TIMEOUT="-1")
    assert refused.returncode != 0 and "DB_LOCK_TIMEOUT=-1: seconds" in refused.stderr


@pytest.mark.parametrize(
    "timeouts",
    [{"DB_LOCK_TIMEOUT": "0.05"}, {"DB_LOCK_TIMEOUT": "0", "DB_STATEMENT_TIMEOUT": "0.2"}],
    ids=["lock_timeout", "statement_timeout"],
)
def test_a_submit_behind_a_held_lock_answers_503_and_the_resend_stores_one_judgment(
    timeouts: dict[str, str], make_project: Any, make_user: Any, tmp_path: Path
) -> None:
    annotator = make_user("ann")
    project = make_project("locked", schema=PAIRWISE)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(0)]))
    assignment = queue.next_assignment(project=project, user=annotator)
    assert assignment is not None
    browser = Client()
    browser.force_login(annotator)  # a session in the database, which the server reads too
    csrf = secrets.token_hex(16)  # 32 characters: a CSRF secret the cookie may carry
    cookies = {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value, "csrftoken": csrf}
    answer = {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 2}}), "time_ms": "1200"}

    env = {"SECRET_KEY": settings.SECRET_KEY, **timeouts}  # the test's key: its session is valid there
    with gunicorn_server(tmp_path, database_url=database_url_via(), **env) as server:
        url = f"{server.url}/a/{assignment.uuid}/submit"

        def submit() -> tuple[int, dict[str, str]]:
            return post(url, answer, cookies, **{"X-CSRFToken": csrf, "HX-Request": "true"})

        with table_locked("annotation_judgment"):  # say, a migration waiting on it
            status, headers = submit()
        assert status == 503, status
        assert headers["Retry-After"] == str(settings.DB_UNAVAILABLE_RETRY_AFTER)
        assert Judgment.objects.count() == 0
        assert Assignment.objects.get(id=assignment.id).state == Assignment.State.LEASED  # nothing half-done

        assert submit()[0] == 200  # the page's resend, the lock gone
        assert submit()[0] == 200  # and once more: the same judgment
    judgment = Judgment.objects.get()  # exactly one
    assert judgment.payload["pairwise"]["strength"] == 2
    assert Assignment.objects.get(id=assignment.id).state == Assignment.State.SUBMITTED
    assert connection.vendor == "postgresql"
