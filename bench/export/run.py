"""Dataset export throughput and peak memory on PostgreSQL, for projects of growing size.

    .venv/bin/python bench/export/run.py                       # 100k, 300k and 1M judgments
    .venv/bin/python bench/export/run.py --sizes 10000 50000   # a quick look

For each size a pairwise project is generated straight into PostgreSQL with COPY (the importer's
`fast_insert`): N judgments on N/4 items (4 imported annotators per item out of 20, about 70 %
agreeing with the item's majority), prompts of 8-60 words, responses of 20-200 words, a tenth of
the items in the eval split. Then a fresh process exports it exactly as the Celery task does
(`curation.services.export_run`: the streaming pass, JSONL + Parquet for `pairs` and `raw`, the
dataset card, the checksums, the zip bundle) and reports judgments/s and its peak RSS
(`ru_maxrss`, before and after). Database: BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/prefloop_bench_export (dropped and created again).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import WORDS, bench_env, fresh_database  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
PER_ITEM = 4
LABELERS = 20


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def generate(n_judgments: int, seed: int = 0, batch: int = 5_000) -> str:
    """A project with `n_judgments` judgments, written with COPY; returns its slug."""
    _setup()
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from annotation.importing import fast_insert
    from annotation.models import Item, Judgment, Labeler
    from annotation.services import ProjectSpec, project_create

    call_command("migrate", verbosity=0)
    rng = random.Random(seed)
    slug = f"bench-{n_judgments}"
    spec = {"slug": slug, "name": slug, "schema": {"pairwise": {"strengths": ["better", "much better"]}}}
    project = project_create(spec=ProjectSpec.parse(spec), created_by=None)
    labelers = [
        Labeler.objects.create(project=project, kind=Labeler.Kind.IMPORTED, name=f"annotator-{i}").id
        for i in range(LABELERS)
    ]
    n_items = n_judgments // PER_ITEM
    now = timezone.now()
    start = time.perf_counter()
    for lo in range(0, n_items, batch):
        items = []
        for i in range(lo, min(n_items, lo + batch)):
            items.append(
                {
                    "uuid": uuid.uuid4(),
                    "project_id": project.id,
                    "external_id": f"bench-{i}",
                    "prompt": " ".join(rng.choices(WORDS, k=rng.randint(8, 60))) + "?",
                    "prompt_messages": None,
                    "responses": [
                        {
                            "text": " ".join(rng.choices(WORDS, k=rng.randint(20, 200))),
                            "model": rng.choice(["m-s", "m-l"]),
                        }
                        for _ in range(2)
                    ],
                    "num_responses": 2,
                    "metadata": {"category": rng.choice(["chat", "code", "safety", "math"])},
                    "split": "eval" if rng.random() < 0.1 else "train",
                    "status": "done",
                    "is_gold": False,
                    "gold_answer": None,
                    "human_count": PER_ITEM,
                    "leased_count": 0,
                    "priority": 0.0,
                    "route": "human",
                    "route_info": {},
                    "import_job_id": None,
                    "created_at": now,
                }
            )
        with transaction.atomic():
            fast_insert(Item, items)
            ids = Item.objects.filter(project=project, external_id__in=[i["external_id"] for i in items]).values_list(
                "id", flat=True
            )
            judgments = []
            for item_id in ids:
                majority = rng.choice("AB")
                for labeler in rng.sample(labelers, PER_ITEM):
                    choice = majority if rng.random() < 0.7 else rng.choice(["A", "B", "tie"])
                    strength = 0 if choice == "tie" else rng.randint(1, 2)
                    judgments.append(
                        {
                            "uuid": uuid.uuid4(),
                            "item_id": item_id,
                            "labeler_id": labeler,
                            "payload": {
                                "pairwise": {"choice": choice, "strength": strength},
                                "spans": [],
                                "justification": "",
                            },
                            "schema_version": 1,
                            "guidelines_version": 1,
                            "response_order": None,
                            "time_spent_ms": rng.randint(2_000, 60_000),
                            "raw_output": "",
                            "created_at": now,
                        }
                    )
            fast_insert(Judgment, judgments)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_item; ANALYZE annotation_judgment")
    n = Judgment.objects.filter(item__project=project).count()
    print(
        json.dumps({"slug": slug, "judgments": n, "items": n_items, "seconds": round(time.perf_counter() - start, 1)})
    )
    return slug


def export(slug: str, formats: list[str]) -> None:
    _setup()
    from annotation.models import Project
    from curation import services

    project = Project.objects.get(slug=slug)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    samples: list[float] = []  # current RSS (MB), once a second, to show it stays level within a run
    stop = threading.Event()

    def sample() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not stop.wait(1.0):
            with open("/proc/self/statm") as fh:
                samples.append(int(fh.read().split()[1]) * page / 2**20)

    threading.Thread(target=sample, daemon=True).start()
    timing = {}
    bundle = services.bundle_export

    def timed_bundle(*args, **kwargs):  # type: ignore[no-untyped-def]
        timing["pass"] = time.perf_counter() - start
        return bundle(*args, **kwargs)

    services.bundle_export = timed_bundle
    # The generated annotators are imported labelers: the default filter (`human`) would take none.
    filters = {"label_source": "imported"}
    snapshot = services.export_create(project=project, user=None, filters=filters, formats=formats, enqueue=False)
    start = time.perf_counter()
    cpu = time.process_time()
    snapshot = services.export_run(snapshot_id=snapshot.id)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    stop.set()
    counts = snapshot.counts
    quarters = (
        [samples[min(len(samples) - 1, int(q * len(samples)))] for q in (0.25, 0.5, 0.75, 0.99)] if samples else []
    )
    data_bytes = {kind: sum(f["bytes"] for f in snapshot.files if f["kind"] == kind) for kind in ("jsonl", "parquet")}
    print(
        json.dumps(
            {
                "judgments": counts["judgments"],
                "rows": {fmt: sum(s.values()) for fmt, s in counts["rows"].items()},
                "seconds": round(elapsed, 1),
                "pass_seconds": round(timing.get("pass", elapsed), 1),
                "judgments_per_s": round(counts["judgments"] / elapsed),
                "cpu_seconds": round(cpu, 1),
                "cpu_ms_per_1k": round(1000 * cpu / max(1, counts["judgments"]) * 1000, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "rss_before_mb": round(rss_before / 1024, 1),
                "rss_at_25_50_75_99_percent_of_run_mb": [round(x) for x in quarters],
                "jsonl_mb": round(data_bytes["jsonl"] / 1e6, 1),
                "parquet_mb": round(data_bytes["parquet"] / 1e6, 1),
                "bundle_mb": round(snapshot.bundle_bytes / 1e6, 1),
            }
        )
    )


def _child(env: dict[str, str], *args: str, root: Path = ROOT) -> dict:
    script = root / "bench" / "export" / "run.py"
    proc = subprocess.run(
        [sys.executable, str(script), *args], env=env, cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--formats", default="pairs,raw")
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the exported files under bench/export/out/var")
    parser.add_argument(
        "--baseline", type=Path, help="another checkout (e.g. a worktree of main): export each project with it too"
    )
    args = parser.parse_args()
    if args.generate:
        generate(args.generate)
        return
    if args.export:
        export(args.export, args.formats.split(","))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/prefloop_bench_export")
    fresh_database(db_url)
    env = bench_env(db_url, OUT / "var")
    results = []
    print(
        f"{'tree':>8} {'judgments':>10} {'pairs':>8} {'raw':>8} {'seconds':>8} {'pass s':>7} {'judg/s':>7} "
        f"{'CPU s':>6} {'CPU ms/1k':>9} {'peak RSS MB':>11} {'RSS before':>10} {'JSONL MB':>9} {'Parquet MB':>10} "
        f"{'zip MB':>7}"
    )
    trees = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for n in args.sizes:
        gen = _child(env, "--generate", str(n))
        for tree, root in trees:
            r = _child(env, "--export", gen["slug"], "--formats", args.formats, root=root)
            r["generate_seconds"] = gen["seconds"]
            r["tree"] = tree
            results.append(r)
            _report(r)
            if not args.keep:
                import shutil

                shutil.rmtree(OUT / "var" / "exports", ignore_errors=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


def _report(r: dict) -> None:
    print(
        f"{r['tree']:>8} {r['judgments']:>10} {r['rows'].get('pairs', 0):>8} {r['rows'].get('raw', 0):>8} "
        f"{r['seconds']:>8} "
        f"{r['pass_seconds']:>7} {r['judgments_per_s']:>7} {r['cpu_seconds']:>6} {r['cpu_ms_per_1k']:>9} "
        f"{r['peak_rss_mb']:>11} {r['rss_before_mb']:>10} "
        f"{r['jsonl_mb']:>9} {r['parquet_mb']:>10} {r['bundle_mb']:>7}",
        flush=True,
    )
    print(f"{'':>19} current RSS at 25/50/75/99 % of the run (MB): {r['rss_at_25_50_75_99_percent_of_run_mb']}")


if __name__ == "__main__":
    main()
