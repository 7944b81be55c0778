#!/usr/bin/env bash
# Start Prefloop on the embedded defaults (SQLite in var/, filesystem Celery broker in var/broker/)
# unless DATABASE_URL / CELERY_BROKER_URL say otherwise: migrate, load the demo, start a worker
# for all queues and the web server.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-1}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
PY=.venv/bin/python
mkdir -p var

$PY manage.py migrate --noinput -v 0
$PY manage.py load_demo

.venv/bin/celery -A config worker -Q default,ai,gpu --concurrency 2 --loglevel INFO \
  --without-gossip --without-mingle --logfile var/worker.log &
WORKER=$!
trap 'kill "$WORKER" 2>/dev/null || true; wait "$WORKER" 2>/dev/null || true' EXIT INT TERM

cat <<MSG

  Prefloop is running at  http://$HOST:$PORT/
  Log in as curator / demo-curator-pass (or alice / bob, passwords above).
  Worker log: var/worker.log. Stop with Ctrl-C.

MSG
$PY manage.py runserver "$HOST:$PORT" --noreload
