#!/usr/bin/env bash
# Time to train the default reward model through the app's own command, on the 1,600 shared
# HH-RLHF harmless pairs: a fresh embedded database (SQLite, in a temporary VAR_DIR), the pairs
# imported as a user would, then `train_reward_model --foreground` with no options (the default
# TrainConfig; 20 % of items held out, so about 1,280 training pairs). Prints wall and CPU time.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${1:-../shared/data/hh_harmless_pairs.jsonl.gz}"
export DEBUG=1 VAR_DIR="$(mktemp -d)" HF_HUB_OFFLINE=1
trap 'rm -rf "$VAR_DIR"' EXIT
PY=.venv/bin/python
$PY manage.py migrate -v0
DJANGO_SUPERUSER_PASSWORD=bench-pass-123 $PY manage.py createsuperuser --noinput --username bench --email b@example.org
cat > "$VAR_DIR/spec.yaml" <<'YAML'
slug: hh
name: HH harmless
schema: {pairwise: {strengths: [better], allow_tie: true}}
YAML
$PY manage.py create_project "$VAR_DIR/spec.yaml" --owner bench
$PY manage.py import_items --project hh "$DATA"
/usr/bin/time -f "train_reward_model: wall %e s, user %U s, system %S s, peak RSS %M KB" \
  $PY manage.py train_reward_model --project hh --foreground "${@:2}"
