"""Settings, read from the environment (and an optional `.env` file) by one reader.

Unset values fall back to embedded defaults so the app starts with nothing else running:
SQLite in `var/` and a filesystem Celery broker in `var/broker/`. Tests, docker-compose and
production set DATABASE_URL (PostgreSQL via psycopg 3) and CELERY_BROKER_URL (Redis).
A malformed value (say DEBUG=maybe) stops start-up with an error naming the variable.
"""

import math
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from kombu import Exchange, Queue

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("VAR_DIR", default=str(BASE_DIR / "var")))

VAR_DIR.mkdir(parents=True, exist_ok=True)

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(raw)


def _parse_float(raw: str) -> float:
    value = float(raw.strip())
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _redacted(url: str) -> str:
    """A URL as an error message may show it: without its password."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


class StrictEnv(environ.Env):
    """django-environ's reader, strict: a value that does not parse as its type stops start-up
    with ImproperlyConfigured naming the variable and the value (a URL without its password),
    instead of a bare ValueError traceback or a guess (environ's own float() drops any character
    that is not a digit, its bool() reads an unknown word as false, an unknown database URL
    scheme became an empty configuration)."""

    def _typed(self, var: str, default: Any, parse: Callable[[str], Any], what: str) -> Any:
        raw = self.get_value(var, cast=str, default=default)  # cast: no "smart" cast from the default
        if not isinstance(raw, str):  # unset: the default, as given
            return raw
        try:
            return parse(raw)
        except (ValueError, TypeError):
            raise ImproperlyConfigured(f"{var}={raw!r} is not {what}") from None

    def int(self, var: str, default: Any = environ.Env.NOTSET) -> int:
        return self._typed(var, default, lambda raw: int(raw.strip()), "an integer")

    def float(self, var: str, default: Any = environ.Env.NOTSET) -> float:
        return self._typed(var, default, _parse_float, "a number")

    def bool(self, var: str, default: Any = environ.Env.NOTSET) -> bool:
        return self._typed(var, default, _parse_bool, "a boolean (use 1/0, true/false, yes/no, on/off)")

    def db_url(self, var: str = "DATABASE_URL", default: Any = environ.Env.NOTSET, engine: Any = None) -> dict:
        raw = self.get_value(var, cast=str, default=default)
        try:
            if urlsplit(raw).scheme not in self.DB_SCHEMES:
                raise ValueError("use e.g. postgres://user:password@host:5432/name or sqlite:///path")
            return self.db_url_config(raw, engine=engine)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{var}={_redacted(raw)!r} is not a database URL: {exc}") from None

    db = db_url

    def cache_url(self, var: str = "CACHE_URL", default: Any = environ.Env.NOTSET, backend: Any = None) -> dict:
        raw = self.get_value(var, cast=str, default=default)
        try:
            return self.cache_url_config(raw, backend=backend)
        except (ValueError, ImproperlyConfigured) as exc:
            raise ImproperlyConfigured(f"{var}={_redacted(raw)!r} is not a cache URL: {exc}") from None

    cache = cache_url


env = StrictEnv()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable; anything but a clear yes or no stops start-up."""
    return env.bool(name, default=default)


DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
_DEV_SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
# Keys that are published (our dev default, .env.example's placeholder, Django's template prefix).
_PUBLISHED_KEYS = {_DEV_SECRET_KEY, "change-me-to-a-long-random-string", "changeme", "secret"}
# Commands that only read the models and never sign anything run without configuration, so that
# `manage.py makemigrations --check` works on a bare checkout (with a throwaway key).
_KEYLESS_COMMANDS = {"makemigrations", "showmigrations", "sqlmigrate", "help", "version"}
_command = sys.argv[1] if len(sys.argv) > 1 and Path(sys.argv[0]).name == "manage.py" else ""
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = _DEV_SECRET_KEY
    elif _command in _KEYLESS_COMMANDS:
        SECRET_KEY = secrets.token_urlsafe(50)
    else:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
elif not DEBUG and (SECRET_KEY.strip().lower() in _PUBLISHED_KEYS or SECRET_KEY.startswith("django-insecure-")):
    raise ImproperlyConfigured("SECRET_KEY is a published placeholder; set a long random value when DEBUG is off.")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "template_partials",
    "ninja",  # the API docs from its bundled static files, not a CDN (see config.security)
    "accounts",
    "annotation",
    "curation",
    "models_srv",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # A database outage (restart, failover) answers 503 with Retry-After, not a 500 error page.
    "config.reliability.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
# A persistent connection is checked before its first use in each request, so one that died with
# a database restart is replaced instead of failing the request.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # The same backend, with a per-request health check that needs no round trip while the
    # connection is quiet (config/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Fail fast (then answer 503, config/reliability.py) when the server is unreachable, e.g. mid-failover.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
    )
    if env.bool("DB_PREPARED_STATEMENTS", default=True):
        # The annotation queue's hand-written statements (annotation/rows.py) run on cursors that
        # bind parameters on the server, and psycopg prepares one after 5 runs on a connection, so
        # PostgreSQL stops parsing and planning them each time (bench/annotate measures it).
        # The ORM keeps client-side binding (and prepares nothing).
        # Django leaves prepare_threshold off unless it is given. DB_PREPARED_STATEMENTS=0 behind a
        # pooler in transaction mode that cannot keep prepared statements (PgBouncer before 1.21).
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 5
    # Lock and statement timeouts, seconds (0: none). A web request that waits behind a held lock
    # (a migration, a long transaction) or runs away fails fast and answers 503 with Retry-After
    # (config/reliability.py), as when the database is away, instead of holding a web thread for
    # the whole wait. Background processes (Celery workers and beat, management commands such as
    # migrate and import_items) run long statements by design (an import's batches, an export's
    # pages, a training run's reads, a migration's backfill) and are bounded by the tasks' time
    # limits instead: their pair is off by default. Sent as the connection's startup options;
    # behind a pooler that refuses those (PgBouncer), set both to 0 and ALTER ROLE ... SET them.
    _background = (_command not in ("", "runserver")) or "celery" in (
        Path(sys.argv[0]).name,
        Path(sys.argv[0]).parent.name,  # python -m celery
    )
    _timeouts = (  # variable: seconds
        {
            "DB_BACKGROUND_LOCK_TIMEOUT": env.float("DB_BACKGROUND_LOCK_TIMEOUT", default=0),
            "DB_BACKGROUND_STATEMENT_TIMEOUT": env.float("DB_BACKGROUND_STATEMENT_TIMEOUT", default=0),
        }
        if _background
        else {
            "DB_LOCK_TIMEOUT": env.float("DB_LOCK_TIMEOUT", default=5),
            "DB_STATEMENT_TIMEOUT": env.float("DB_STATEMENT_TIMEOUT", default=30),
        }
    )
    for _name, _seconds in _timeouts.items():
        if _seconds < 0:
            raise ImproperlyConfigured(f"{_name}={_seconds:g}: seconds, 0 (no limit) or more")
    _pg_options = " ".join(  # lock_timeout, statement_timeout, in milliseconds
        f"-c {_name.removeprefix('DB_').removeprefix('BACKGROUND_').lower()}={max(1, round(_seconds * 1000))}"
        for _name, _seconds in _timeouts.items()
        if _seconds
    )
    if _pg_options:  # before any options of DATABASE_URL's, which win
        _given = DATABASES["default"]["OPTIONS"].get("options", "")
        DATABASES["default"]["OPTIONS"]["options"] = f"{_pg_options} {_given}".strip()
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The embedded default: web and worker processes share one file; wait for locks, write eagerly.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 30, "transaction_mode": "IMMEDIATE"})
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Per-process memory by default; point CACHE_URL at Redis (redis://host:6379/1) to share it.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The test suite creates hundreds of users; a fast hash keeps that cheap there. Only
# scripts/test.sh sets this; never set it in production.
if env_bool("TEST_FAST_PASSWORD_HASHING", default=False):
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Sessions are read from the cache and written through to the database, one query less per
# request, where the cache is shared by every process (Redis, as in docker-compose). With the
# per-process default a logout in one gunicorn worker would leave the session alive in the other
# workers' caches, so sessions are then read from the database.
SESSION_ENGINE = (
    "django.contrib.sessions.backends.db"
    if CACHES["default"]["BACKEND"].endswith(".LocMemCache")
    else "django.contrib.sessions.backends.cached_db"
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotation:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if not env_bool("STATIC_MANIFEST", default=not DEBUG)
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"

# Uploads: anything over 2.5 MB streams to a temporary file; the import cap is separate.
IMPORT_MAX_UPLOAD_BYTES = env.int("IMPORT_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
# A compressed upload is refused once it decompresses past this (a gzip bomb stops here).
IMPORT_MAX_DECOMPRESSED_BYTES = env.int("IMPORT_MAX_DECOMPRESSED_BYTES", default=4 * 1024 * 1024 * 1024)
# The longest line (JSONL line, CSV physical line) and CSV field an import reads, in characters.
IMPORT_MAX_LINE_CHARS = env.int("IMPORT_MAX_LINE_CHARS", default=32 * 1024 * 1024)
IMPORT_MAX_FIELD_CHARS = env.int("IMPORT_MAX_FIELD_CHARS", default=4_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
IMPORT_BATCH_SIZE = env.int("IMPORT_BATCH_SIZE", default=2000)
# A batch also closes once its rows hold this many characters of text (memory stays bounded).
IMPORT_BATCH_CHARS = env.int("IMPORT_BATCH_CHARS", default=16 * 1024 * 1024)

# Security. Production hardening follows DEBUG unless set explicitly.
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SESSION_COOKIE_HTTPONLY = True
# No script reads the CSRF cookie: htmx sends the token from hx-headers on <body>, forms carry it.
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=False)
# Health probes (a container's own check, a load balancer's) come over plain HTTP from inside.
SECURE_REDIRECT_EXEMPT = [r"^healthz(/workers)?$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy and Permissions-Policy: config.security.SecurityHeadersMiddleware.
# Reverse proxies in front of the app whose X-Forwarded-For is trusted (client address for the
# login rate limit and the audit log).
NUM_PROXIES = env.int("NUM_PROXIES", default=0)
# The client's scheme from X-Forwarded-Proto, but only behind those proxies: one we run sets the
# header and drops what the client sent. Served directly, a client could claim HTTPS with it and
# pass for a secure request (CSRF's referer rules, SECURE_SSL_REDIRECT).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if NUM_PROXIES > 0 else None
# Failed logins allowed per username / per client address within the window (0 = no limit).
LOGIN_RATE_LIMIT = env.int("LOGIN_RATE_LIMIT", default=5)
LOGIN_RATE_LIMIT_PER_IP = env.int("LOGIN_RATE_LIMIT_PER_IP", default=20)
LOGIN_RATE_LIMIT_WINDOW = env.int("LOGIN_RATE_LIMIT_WINDOW", default=15 * 60)
# Bad API tokens allowed per client address within the same window; past it 429 (0 = no limit).
API_TOKEN_RATE_LIMIT_PER_IP = env.int("API_TOKEN_RATE_LIMIT_PER_IP", default=20)
# Those counters (config/throttle.py) live where every web process sees them: the shared cache when
# CACHE_URL names one, else a database table (annotation migration 0013), never one process's memory.
CACHES["throttle"] = (
    {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "prefloop_throttle",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
    if CACHES["default"]["BACKEND"].endswith(".LocMemCache")
    else CACHES["default"]
)
AUTHENTICATION_BACKENDS = ["accounts.login.RateLimitedModelBackend"]
# AI labelers (models_srv/judges.py): an LLM judge's api_key_env may name only variables starting
# with PREFLOOP_LLM_KEY_ or listed here, and its base_url only these hosts (matched like
# ALLOWED_HOSTS; empty = any host, so local vLLM / Ollama servers work without setup).
AI_LABELER_KEY_ENVS = env.list("AI_LABELER_KEY_ENVS", default=[])
AI_LABELER_ALLOWED_HOSTS = env.list("AI_LABELER_ALLOWED_HOSTS", default=[])
# A judge audit (models_srv/judge_audit.py) builds its probes from up to AI_AUDIT_ITEMS items and
# passes when the judge prefers a content-free answer (or ties it) at most AI_AUDIT_MAX_FALSE_ACCEPT
# of the time, a truncated copy at most AI_AUDIT_MAX_TRUNCATED_ACCEPT, and gives the same verdict
# for a pair and the pair swapped at least AI_AUDIT_MIN_CONSISTENCY of the time.
AI_AUDIT_ITEMS = env.int("AI_AUDIT_ITEMS", default=20)
AI_AUDIT_MAX_FALSE_ACCEPT = env.float("AI_AUDIT_MAX_FALSE_ACCEPT", default=0.1)
AI_AUDIT_MAX_TRUNCATED_ACCEPT = env.float("AI_AUDIT_MAX_TRUNCATED_ACCEPT", default=0.2)
AI_AUDIT_MIN_CONSISTENCY = env.float("AI_AUDIT_MIN_CONSISTENCY", default=0.8)
if not 1 <= AI_AUDIT_ITEMS <= 500:
    raise ImproperlyConfigured(f"AI_AUDIT_ITEMS={AI_AUDIT_ITEMS}: items per audit, 1 to 500")
for _name in ("AI_AUDIT_MAX_FALSE_ACCEPT", "AI_AUDIT_MAX_TRUNCATED_ACCEPT", "AI_AUDIT_MIN_CONSISTENCY"):
    if not 0 <= globals()[_name] <= 1:
        raise ImproperlyConfigured(f"{_name}={globals()[_name]:g}: a share, 0 to 1")
# Models a config may load (models_srv/model_sources.py): 'default', Hugging Face ids from the
# workers' local cache, and folders under MODEL_DIRS (colon- or comma-separated; empty = no local
# paths). ALLOW_MODEL_FROM_CONFIG lets configs build small untrained models (tests, smoke runs).
MODEL_DIRS = [d.strip() for d in re.split(r"[:,]", env.str("MODEL_DIRS", default="")) if d.strip()]
ALLOW_MODEL_FROM_CONFIG = env_bool("ALLOW_MODEL_FROM_CONFIG", default=False)

# Celery. The embedded default is a filesystem broker: web and worker processes on one machine
# share a folder, so `make run` needs neither Redis nor RabbitMQ. Job state lives in our own tables,
# so no result backend is required.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # remote control (ping, inspect) replies
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # An unacknowledged task (its worker died) is handed out again after this many seconds.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)}
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=None)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUES = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ("default", "ai", "gpu")
)
CELERY_TASK_ROUTES = {
    "models_srv.tasks.train_*": {"queue": "gpu"},
    "models_srv.tasks.gpu_*": {"queue": "gpu"},
    "models_srv.tasks.ai_*": {"queue": "ai"},
}
CELERY_BEAT_SCHEDULE = {
    "reap-expired-leases": {"task": "annotation.tasks.reap_expired_leases", "schedule": 60.0},
    "autotrain": {"task": "models_srv.tasks.autotrain", "schedule": 60.0},
    # Jobs whose heartbeat went stale (a killed worker) are re-queued or failed, whatever the broker.
    "recover-stale-runs": {"task": "models_srv.tasks.recover_stale_runs", "schedule": 60.0},
    "reroute-due": {"task": "models_srv.tasks.reroute_due", "schedule": 300.0},
    "recover-stale-exports": {"task": "curation.tasks.recover_stale_exports", "schedule": 60.0},
    "recover-stale-imports": {"task": "annotation.tasks.recover_stale_imports", "schedule": 60.0},
    "recover-stale-label-runs": {"task": "models_srv.tasks.recover_stale_label_runs", "schedule": 60.0},
    "recover-stale-crossfits": {"task": "models_srv.tasks.recover_stale_crossfits", "schedule": 60.0},
    "recover-stale-audits": {"task": "models_srv.tasks.recover_stale_audits", "schedule": 60.0},
}
# A learned router retrains once this many new items have been labeled by both humans and AI.
ROUTER_RETRAIN_EVERY = env.int("ROUTER_RETRAIN_EVERY", default=20)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=6 * 3600)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=6 * 3600 - 60)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True

# A running job's heartbeat is written every JOB_HEARTBEAT_SECONDS by a thread of its own (config/jobs.py),
# whatever the job is doing; a job silent for *_HEARTBEAT_STALE_SECONDS is re-queued (or failed).
JOB_HEARTBEAT_SECONDS = env.float("JOB_HEARTBEAT_SECONDS", default=15.0)
JOB_HEARTBEAT_STALE_SECONDS = env.int("JOB_HEARTBEAT_STALE_SECONDS", default=90)
# Top-mode reward-model training keeps the frozen lower layers' output for every text in memory
# (fp16) up to this many MB; beyond it each step runs the whole backbone (slower, same model).
RM_ACTIVATION_CACHE_MB = env.int("RM_ACTIVATION_CACHE_MB", default=4096)
# A new reward-model version becomes current by itself only when a one-sided paired sign test on
# the held-out items both were never trained on gives p below this (0 = never by itself).
RM_PROMOTION_ALPHA = env.float("RM_PROMOTION_ALPHA", default=0.05)
RM_HEARTBEAT_STALE_SECONDS = env.int("RM_HEARTBEAT_STALE_SECONDS", default=JOB_HEARTBEAT_STALE_SECONDS)
EXPORT_HEARTBEAT_STALE_SECONDS = env.int("EXPORT_HEARTBEAT_STALE_SECONDS", default=RM_HEARTBEAT_STALE_SECONDS)
# Items an export reads per page: memory against round trips.
EXPORT_CHUNK_ITEMS = env.int("EXPORT_CHUNK_ITEMS", default=1000)

# Health endpoints (config/health.py). /healthz/workers asks the workers with one broadcast and
# waits this long for answers; the answer is cached so a polling load balancer costs one broadcast
# per HEALTH_WORKERS_CACHE_SECONDS. It answers 503 while one of HEALTH_REQUIRED_QUEUES has no worker.
HEALTH_TIMEOUT_SECONDS = env.float("HEALTH_TIMEOUT_SECONDS", default=2.0)
HEALTH_WORKERS_TIMEOUT_SECONDS = env.float("HEALTH_WORKERS_TIMEOUT_SECONDS", default=1.0)
HEALTH_WORKERS_CACHE_SECONDS = env.int("HEALTH_WORKERS_CACHE_SECONDS", default=10)
HEALTH_REQUIRED_QUEUES = env.list("HEALTH_REQUIRED_QUEUES", default=["default", "ai", "gpu"])
if set(HEALTH_REQUIRED_QUEUES) - {q.name for q in CELERY_TASK_QUEUES}:
    raise ImproperlyConfigured(f"HEALTH_REQUIRED_QUEUES={HEALTH_REQUIRED_QUEUES}: the queues are default, ai, gpu")
# Seconds a client is told to wait (Retry-After) when the database is unreachable.
DB_UNAVAILABLE_RETRY_AFTER = env.int("DB_UNAVAILABLE_RETRY_AFTER", default=2)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}
