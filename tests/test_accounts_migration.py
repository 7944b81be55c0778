"""ApiToken moved from the annotation app to accounts by model state only. A database migrated
before the move keeps its table and its tokens, read afterwards through the accounts model; the
move can be undone and redone; and a database built from nothing migrates through it.

The suite's own database is built without migrations (`--no-migrations`), so this runs the real
`manage.py migrate` against a scratch PostgreSQL database of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings

from accounts.models import ApiToken

ROOT = Path(__file__).resolve().parent.parent
BEFORE_THE_MOVE = "0017_project_require_ai_audit"


def _conninfo(db: dict[str, Any], name: str) -> str:
    return f"postgresql://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


@pytest.fixture
def scratch_db() -> Iterator[str]:
    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_accounts_move"[:63]
    with psycopg.connect(_conninfo(db, "postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _conninfo(db, name)
    finally:
        with psycopg.connect(_conninfo(db, "postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _manage(url: str, *args: str) -> str:
    env = {**os.environ, "DATABASE_URL": url.replace("postgresql://", "postgres://")}
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _content_types(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, app_label FROM django_content_type WHERE model = 'apitoken'").fetchall()
    return sorted(rows)


READ = (
    "from accounts.models import ApiToken; t = ApiToken.objects.select_related('user').get(name='made before'); "
    "print(t.user.username, ','.join(t.scopes), t.key_hash, t._meta.app_label)"
)


def test_a_token_made_before_the_move_is_read_after_it(scratch_db: str) -> None:
    _manage(scratch_db, "migrate", "auth")
    _manage(scratch_db, "migrate", "annotation", BEFORE_THE_MOVE)
    [(type_id, app_label)] = _content_types(scratch_db)
    assert app_label == "annotation"
    key_hash = ApiToken.hash_key("pl_made-before-the-move")
    with psycopg.connect(scratch_db) as conn:
        user_id = conn.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, "
            "is_active, date_joined) VALUES ('!', false, 'legacy', '', '', '', false, true, now()) RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO annotation_apitoken (user_id, name, key_hash, scopes, created_at) "
            """VALUES (%s, 'made before', %s, '["read", "export"]', now())""",
            [user_id, key_hash],
        )

    _manage(scratch_db, "migrate")
    assert _manage(scratch_db, "shell", "--no-imports", "-c", READ).split() == [
        "legacy",
        "read,export",
        key_hash,
        "accounts",
    ]
    assert _content_types(scratch_db) == [(type_id, "accounts")]  # renamed: permissions and admin log follow

    _manage(scratch_db, "migrate", "accounts", "zero")  # and back: the table and the row stay
    assert _content_types(scratch_db) == [(type_id, "annotation")]
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM annotation_apitoken").fetchone()[0] == 1
    _manage(scratch_db, "migrate")
    assert _manage(scratch_db, "shell", "--no-imports", "-c", READ).split()[0] == "legacy"


def test_a_fresh_database_builds_with_one_token_table(scratch_db: str) -> None:
    _manage(scratch_db, "migrate")
    with psycopg.connect(scratch_db) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert ApiToken._meta.db_table == "annotation_apitoken" and "annotation_apitoken" in tables
    assert "accounts_apitoken" not in tables
    assert [label for _, label in _content_types(scratch_db)] == ["accounts"]
