"""Import throughput and peak memory on PostgreSQL, for generated files of growing size.

    make bench-import   # or: .venv/bin/python bench/import/run.py --sizes 10000 100000 --formats jsonl

Each size runs in a fresh process (so its peak RSS is its own) against a fresh database
(BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/prefloop_bench). Rows are
pairwise items with metadata, half of them carrying a human label, like a labeled export.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import WORDS, bench_env, fresh_database  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def generate(path: Path, n: int, seed: int = 0, labeled: bool = True) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = {
                "id": f"bench-{i}",
                "prompt": " ".join(rng.choices(WORDS, k=rng.randint(8, 60))) + "?",
                "response_a": " ".join(rng.choices(WORDS, k=rng.randint(20, 200))),
                "response_b": " ".join(rng.choices(WORDS, k=rng.randint(20, 200))),
                "model_a": rng.choice(["m-small", "m-large"]),
                "model_b": rng.choice(["m-small", "m-large"]),
                "metadata": {"category": rng.choice(["chat", "code", "safety", "math"]), "n": i},
            }
            if labeled and i % 2 == 0:
                row["label"] = rng.choice(["A", "B", "tie"])
            fh.write(json.dumps(row) + "\n")


def to_parquet(source: Path, path: Path) -> None:
    """The JSONL file as Parquet written the ordinary way: one `pq.write_table` with pyarrow's
    defaults (what pandas' `to_parquet` does): snappy, dictionary pages that fall back to plain
    ones for unique texts, and one row group of up to 1Mi rows, so a million rows are one row
    group. `metadata` is a struct column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    with source.open(encoding="utf-8") as fh:  # into Arrow 100,000 rows at a time; one table
        while rows := [json.loads(line) for _, line in zip(range(100_000), fh, strict=False)]:
            for row in rows:
                row.setdefault("label", None)
            parts.append(pa.Table.from_pylist(rows))
    table = pa.concat_tables(parts, promote_options="permissive")
    assert pa.types.is_struct(table.schema.field("metadata").type)
    pq.write_table(table, path)


def peak_rss_kb() -> int:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec; ru_maxrss keeps
    the peak of the parent it was forked from (which generated the files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(path: Path, n: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from annotation.importing import import_items
    from annotation.services import ProjectSpec, project_create

    call_command("migrate", verbosity=0)
    slug = f"bench-{n}-{int(time.time())}"
    project = project_create(
        spec=ProjectSpec.parse({"slug": slug, "name": slug, "schema": {"pairwise": {}}}), created_by=None
    )
    rss_before = peak_rss_kb()
    start = time.perf_counter()
    with path.open("rb") as fh:
        result = import_items(project=project, fileobj=fh)
    elapsed = time.perf_counter() - start
    print(
        json.dumps(
            {
                "rows": result.rows_read,
                "items": result.items_created,
                "judgments": result.judgments_created,
                "seconds": round(elapsed, 2),
                "rows_per_s": round(result.rows_read / elapsed),
                "peak_rss_mb": round(peak_rss_kb() / 1024, 1),
                "rss_before_import_mb": round(rss_before / 1024, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--formats", nargs="+", choices=["jsonl", "parquet"], default=["jsonl", "parquet"])
    parser.add_argument("--child", nargs=2, metavar=("FILE", "N"))
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/prefloop_bench")
    fresh_database(db_url)
    env = bench_env(db_url, OUT / "var")
    head = ("format", 8), ("rows", 8), ("seconds", 8), ("rows/s", 8), ("peak RSS MB", 12), ("RSS before MB", 14)
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'file MB':>8}")
    for n in args.sizes:
        for fmt in args.formats:
            source = OUT / f"items-{n}.jsonl"
            if not source.exists():
                generate(source, n)
            path = OUT / f"items-{n}-defaults.parquet" if fmt == "parquet" else source
            if not path.exists():
                to_parquet(source, path)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(n)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{fmt:>8} {r['rows']:>8} {r['seconds']:>8} {r['rows_per_s']:>8} {r['peak_rss_mb']:>12} "
                f"{r['rss_before_import_mb']:>14} {path.stat().st_size / 1e6:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
