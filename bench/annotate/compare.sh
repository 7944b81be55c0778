#!/usr/bin/env bash
# Before/after in one run: the hot path of BASE (a commit, default origin's main before a change)
# against the working tree, alternated ROUNDS times on one database (built once, then reset), so
# both see the same machine. Prints gunicorn CPU ms per loop and loops/s per phase and round.
#
#   bench/annotate/compare.sh <base-commit> [rounds] [extra run.py args...]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=${1:?usage: compare.sh <base-commit> [rounds] [run.py args]}
ROUNDS=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
TREE=$(mktemp -d /tmp/prefloop-base.XXXXXX)
trap 'git worktree remove --force "$TREE" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$TREE" "$BASE" >/dev/null
OUT=bench/annotate/out/compare
mkdir -p "$OUT"
ARGS=(--concurrency 1 32 --rate 0 --browser 32 --duration 10 "$@")
.venv/bin/python bench/annotate/run.py "${ARGS[@]}" --tree "$TREE" --results "$OUT/before-0.json"
for r in $(seq 1 "$ROUNDS"); do
  .venv/bin/python bench/annotate/run.py "${ARGS[@]}" --reuse-database --tree . --results "$OUT/after-$r.json"
  .venv/bin/python bench/annotate/run.py "${ARGS[@]}" --reuse-database --tree "$TREE" --results "$OUT/before-$r.json"
done
.venv/bin/python - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
runs = {side: [json.loads((out / f"{side}-{r}.json").read_text()) for r in range(1, rounds + 1)] for side in ("before", "after")}
print(f"{'phase':<14} {'side':<7} {'gunicorn CPU ms/loop (per round)':<36} {'median':>7} {'loops/s median':>15} {'duplicates':>10}")
for i, phase in enumerate(p["phase"] for p in runs["after"][0]["phases"]):
    med = {}
    for side in ("before", "after"):
        cpu = [run["phases"][i]["cpu_ms_per_loop"]["gunicorn"] for run in runs[side]]
        rate = [run["phases"][i]["loops_per_s"] for run in runs[side]]
        dup = sum(run["check"]["items_over_overlap"] + run["check"]["items_twice_to_one_annotator"] for run in runs[side])
        med[side] = statistics.median(cpu)
        print(f"{phase:<14} {side:<7} {' '.join(f'{c:5.2f}' for c in cpu):<36} {med[side]:7.2f} {statistics.median(rate):15.1f} {dup:10d}")
    print(f"{phase:<14} after/before gunicorn CPU per loop: {med['after'] / med['before']:.3f}")
PY
