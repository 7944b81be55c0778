#!/usr/bin/env bash
# The whole test suite against PostgreSQL and Redis (defaults: the local services on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/prefloop}"
export CELERY_BROKER_URL="${TEST_CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}"
export SECRET_KEY="test-only-secret-key-not-for-production"
export DEBUG=0 STATIC_MANIFEST=0 VAR_DIR="${VAR_DIR:-$PWD/var/test}"
# Hundreds of test users: a fast password hash (the workers and servers the tests start inherit it).
export TEST_FAST_PASSWORD_HASHING=1
# Tests build tiny models from configs (off by default: models_srv/model_sources.py).
export ALLOW_MODEL_FROM_CONFIG=1
# The live server in browser tests speaks plain HTTP on 127.0.0.1.
export SESSION_COOKIE_SECURE=0 CSRF_COOKIE_SECURE=0
BIN=.venv/bin

# Browser tests drive Debian's Chromium (no browser download). Install it where we can.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: browser tests will be skipped"
fi

# The accessibility test runs axe-core in that Chromium: installed from npm, pinned, never vendored.
AXE=.venv/axe/node_modules/axe-core/axe.min.js
if [ ! -f "$AXE" ]; then
  if command -v npm >/dev/null; then
    echo "installing axe-core for the accessibility test..."
    npm install --no-save --no-audit --no-fund --silent --prefix .venv/axe axe-core@4.14.1 >/dev/null \
      || echo "could not install axe-core: the accessibility test will be skipped"
  else
    echo "npm is absent: the accessibility test will be skipped"
  fi
fi

$BIN/ruff check .
# Types: mypy with the Django plugin (settings in pyproject.toml), every module checked, none exempt.
$BIN/mypy accounts annotation curation models_srv config
DEBUG=1 DATABASE_URL=sqlite:///:memory: $BIN/python manage.py makemigrations --check --dry-run
$BIN/python -m pytest "$@"
