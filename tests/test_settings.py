"""Settings come from the environment and fail loudly on bad or missing values."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT, settings_probe

PROBE = "import django; django.setup(); from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'])"


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    return settings_probe(PROBE, drop=("DATABASE_URL", "SECRET_KEY", "DEBUG"), **env)


def test_embedded_defaults_need_nothing_but_debug() -> None:
    result = _start(DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "django.db.backends.sqlite3"


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = _start(DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_the_migrations_check_needs_no_configuration(tmp_path) -> None:
    """`manage.py makemigrations --check` on a bare checkout: no SECRET_KEY, no DEBUG, no database."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "makemigrations", "--check", "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "No changes detected" in result.stdout
    serving = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "SECRET_KEY must be set" in serving.stderr  # everything else still refuses


def test_a_malformed_value_names_the_variable() -> None:
    result = _start(DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr
    result = _start(DEBUG="1", DB_CONN_MAX_AGE="soon")
    assert result.returncode != 0
    assert "soon" in result.stderr


def test_database_url_selects_postgresql_via_psycopg3() -> None:
    result = _start(DEBUG="1", DATABASE_URL="postgres://postgres@127.0.0.1:5432/x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config.postgresql"  # Django's, with a cheaper health check


def test_x_forwarded_proto_is_trusted_only_behind_declared_proxies() -> None:
    probe = (
        "import django; django.setup(); from django.test import RequestFactory; "
        "print(RequestFactory().get('/', HTTP_X_FORWARDED_PROTO='https').is_secure())"
    )
    served_directly = settings_probe(probe, drop=("NUM_PROXIES",), DEBUG="1")
    assert served_directly.returncode == 0, served_directly.stderr
    assert served_directly.stdout.strip() == "False"  # a client cannot claim HTTPS
    behind_proxy = settings_probe(probe, DEBUG="1", NUM_PROXIES="1")
    assert behind_proxy.returncode == 0, behind_proxy.stderr
    assert behind_proxy.stdout.strip() == "True"


def test_sessions_use_the_cache_only_where_every_process_shares_it() -> None:
    """With the per-process default cache, a logout in one gunicorn worker must not leave the
    session alive in another's cache: sessions are then read from the database."""
    probe = "import django; django.setup(); from django.conf import settings as s; print(s.SESSION_ENGINE)"
    local = settings_probe(probe, drop=("CACHE_URL",), DEBUG="1")
    assert local.returncode == 0, local.stderr
    assert local.stdout.strip() == "django.contrib.sessions.backends.db"
    shared = settings_probe(probe, DEBUG="1", CACHE_URL="redis://127.0.0.1:6379/9")
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.strip() == "django.contrib.sessions.backends.cached_db"


# Every typed read of config/settings.py, found in its source so that a setting added later is
# covered too: (reader, variable name).
SETTINGS_SOURCE = (ROOT / "config" / "settings.py").read_text()
TYPED_READS = re.findall(r"""\benv(?:\.(int|float|bool)|(_bool))\(\s*["']([A-Z0-9_]+)["']""", SETTINGS_SOURCE)
BAD = {"int": "abc", "float": "abc", "bool": "maybe"}
EACH_BAD_VALUE = """
import json, os, sys
from django.core.exceptions import ImproperlyConfigured
source, out = open("config/settings.py").read(), {}
for var, bad in json.loads(sys.argv[1]).items():
    os.environ[var] = bad
    # The background processes' database timeouts are read in a Celery worker (or a command).
    sys.argv = ["/venv/bin/celery", "-A", "config", "worker"] if var.startswith("DB_BACKGROUND_") else ["-c"]
    try:
        # exec, not runpy.run_path, which puts the file's path in sys.argv[0] while it runs
        exec(compile(source, "config/settings.py", "exec"), {"__file__": "config/settings.py"})
        out[var] = "started"
    except ImproperlyConfigured as exc:
        out[var] = str(exc)
    except Exception as exc:
        out[var] = f"{type(exc).__name__}: {exc}"
    del os.environ[var]
print(json.dumps(out))
"""


def _typed_variables() -> dict[str, str]:
    names: dict[str, str] = {}
    for reader, bool_helper, name in TYPED_READS:
        names[name] = BAD[reader or ("bool" if bool_helper else "")]
    return names


def test_every_malformed_typed_setting_stops_start_up_naming_the_variable_and_value() -> None:
    """SECURE_HSTS_SECONDS=abc, HEALTH_TIMEOUT_SECONDS=abc, DB_PREPARED_STATEMENTS=maybe, ...:
    each stops start-up with ImproperlyConfigured that names the variable and the value, not a
    bare ValueError traceback (nor a silent guess, as environ's bool() reading 'maybe' as false)."""
    variables = _typed_variables()
    assert {"SECURE_HSTS_SECONDS", "DB_CONN_MAX_AGE", "HEALTH_TIMEOUT_SECONDS", "DEBUG"} <= set(variables)
    assert {"DB_PREPARED_STATEMENTS", "DB_LOCK_TIMEOUT", "DB_BACKGROUND_STATEMENT_TIMEOUT"} <= set(variables)
    # PostgreSQL and Redis, so that the settings read only for them are read.
    env = {"DEBUG": "1", "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", "CELERY_BROKER_URL": "redis://h:1/0"}
    result = settings_probe(
        f"import sys; sys.argv[1:] = [{json.dumps(json.dumps(variables))}]\n" + EACH_BAD_VALUE,
        drop=tuple(variables),
        **env,
    )
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.strip().splitlines()[-1])
    wrong = {var: msg for var, msg in messages.items() if f"{var}={variables[var]!r} is not" not in msg}
    assert not wrong, wrong


def test_malformed_urls_are_named_without_their_password() -> None:
    result = _start(DEBUG="1", DATABASE_URL="postgres://u:hunter2@db:port/x")
    assert result.returncode != 0
    assert "DATABASE_URL='postgres://u:***@db:port/x' is not a database URL" in result.stderr
    assert "hunter2" not in result.stderr
    result = _start(DEBUG="1", DATABASE_URL="nonsense")  # was read as an empty configuration
    assert "DATABASE_URL='nonsense' is not a database URL" in result.stderr
    result = _start(DEBUG="1", CACHE_URL="bogus://x")
    assert "CACHE_URL='bogus://x' is not a cache URL" in result.stderr
