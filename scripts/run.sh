#!/usr/bin/env bash
# Start Prefloop on the embedded defaults (SQLite in var/, filesystem Celery broker in var/broker/)
# unless DATABASE_URL / CELERY_BROKER_URL say otherwise: migrate, load the demo, start a worker
# for all queues with beat embedded (the periodic tasks: lease reaping, autotrain, router
# retraining, the stale-job sweeps) and the web server.
#
# Ctrl-C or SIGTERM stops everything: the web server and the worker get SIGTERM, and whatever
# still runs after STOP_GRACE seconds (a worker in the middle of a training run) gets SIGKILL. A job killed that
# way is re-queued by the stale-job sweep once the app runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG="${DEBUG:-1}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
STOP_GRACE="${STOP_GRACE:-6}"
VAR="${VAR_DIR:-var}"
PY=.venv/bin/python
mkdir -p "$VAR"

$PY manage.py migrate --noinput -v 0
$PY manage.py load_demo

# Job control: each background process leads its own process group, so one signal reaches a
# process and all its children (the worker's pool and beat), and a terminal's Ctrl-C reaches
# only this script, which stops them in order.
set -m
GROUPS_STARTED=()

stop_all() {
  trap - EXIT INT TERM
  local pgid waited=0
  # SIGTERM to each leader (the worker stops its own pool and beat), SIGKILL to what is left.
  for pgid in "${GROUPS_STARTED[@]}"; do kill -TERM "$pgid" 2>/dev/null || true; done
  while [ "$waited" -lt $((STOP_GRACE * 10)) ]; do
    local alive=0
    for pgid in "${GROUPS_STARTED[@]}"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
    waited=$((waited + 1))
  done
  for pgid in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

.venv/bin/celery -A config worker -Q default,ai,gpu --concurrency 2 --loglevel INFO \
  --without-gossip --without-mingle --logfile "$VAR/worker.log" \
  -B --schedule "$VAR/celerybeat-schedule" &
GROUPS_STARTED+=("$!")

$PY manage.py runserver "$HOST:$PORT" --noreload &
GROUPS_STARTED+=("$!")

cat <<MSG

  Prefloop is running at  http://$HOST:$PORT/
  Log in as curator / demo-curator-pass (or alice / bob, passwords above).
  Worker and beat log: $VAR/worker.log. Stop with Ctrl-C.

MSG
# Until a signal comes, or the web server or the worker exits (then the other is stopped too).
wait -n || true
