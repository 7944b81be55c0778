"""Load test of the annotation queue: gunicorn + PostgreSQL, a 100,000-item project, N annotators.

    .venv/bin/python bench/annotate/run.py                      # everything, about 3 minutes
    .venv/bin/python bench/annotate/run.py --duration 10 --items 20000

Each simulated annotator is its own user with its own session, and loops: GET the next item
(the htmx partial the page loads) then POST its submit (which answers with the following item,
as the page does). Phases: a closed loop with no think time at C = 1, 8 and 32 annotators, then an
open load at a fixed rate of loops per second (latency counted from each loop's scheduled start,
so a slow server cannot hide queueing), then a closed phase shaped like the page itself (submits
only, each answered with the next item; `--browser 0` skips it). Afterwards it checks that no item
was handed out more than the overlap allows and none twice to one annotator. The load generator is
a small asyncio HTTP/1.1 client on keep-alive connections, bounded in requests and time; everything
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import bench_env, fresh_database  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
SLUG = "bench-queue"
PASSWORD = "bench-annotator-pass"  # noqa: S105 - a throwaway benchmark database
# The cache as deployed (docker-compose): Redis, shared by the workers, which then read sessions
# from it (with the per-process default they are read from PostgreSQL).
CACHE_URL = os.environ.get("BENCH_CACHE_URL", "redis://127.0.0.1:6379/8")
SUBMIT_RE = re.compile(rb'hx-post="(/a/[0-9a-f-]{36}/submit)"')


def cpu_seconds() -> dict[str, float]:
    """CPU time used so far (user + system): by gunicorn's processes, by this load generator, and
    by everything else on the machine, which under load is PostgreSQL (its per-connection
    processes come and go, so it is counted as the machine's total minus the other two)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"gunicorn": 0.0, "loadgen": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == os.getpid():
            out["loadgen"] += used
        elif b"gunicorn" in cmd:
            out["gunicorn"] += used
    total = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user, nice, system, irq, softirq: not idle, iowait, or steal (time the hypervisor gave to other
    # machines, 10-15 % of this VM at times), nor guest (already counted in user)
    busy = sum(int(total[k]) for k in (0, 1, 2, 5, 6)) / tick
    out["postgres"] = busy - out["gunicorn"] - out["loadgen"]
    out["steal"] = int(total[7]) / tick
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


# ---------------------------------------------------------------------------------------------
# Setup: database, project, users, server


def setup(env: dict[str, str], items: int, annotators: int) -> None:
    code = f"""
import django, importlib.util, sys
django.setup()
from pathlib import Path
from django.core.management import call_command
from django.contrib.auth import get_user_model
from annotation.importing import import_items
from annotation.models import Project
from annotation.services import ProjectSpec, project_create, membership_set
call_command("migrate", verbosity=0)
spec = importlib.util.spec_from_file_location("gen", "{ROOT}/bench/import/run.py")
gen = importlib.util.module_from_spec(spec); spec.loader.exec_module(gen)
path = Path("{OUT}/items-unlabeled-{items}.jsonl")
if not path.exists():
    gen.generate(path, {items}, labeled=False)
spec = ProjectSpec.parse({{"slug": "{SLUG}", "name": "Bench", "overlap": 2, "lease_seconds": 600,
    "schema": {{"pairwise": {{"strengths": ["better", "much better"]}}}}}})
project = project_create(spec=spec, created_by=None)
with path.open("rb") as fh:
    r = import_items(project=project, fileobj=fh)
users = get_user_model()
for i in range({annotators}):
    u = users.objects.create_user(f"bench{{i}}", password="{PASSWORD}")
    membership_set(project=project, user=u, role="annotator")
print("items", r.items_created)
"""
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)


def reset(db_url: str) -> None:
    """Back to the state right after setup: no judgments, leases or counts.

    The emptied tables are truncated, not deleted from and analyzed: statistics that say "empty"
    make PostgreSQL plan the hand-out's probe of an item's assignments as a scan of the whole
    table, and a connection keeps that plan (prepared statements) while the table grows, so each
    hand-out scanned every assignment of the phase (22 ms per hand-out after 550 judgments at
    C=1). TRUNCATE leaves them as on a freshly built database: never analyzed."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE annotation_judgment, annotation_assignment, annotation_annotatorstats CASCADE")
        conn.execute(
            "UPDATE annotation_item SET human_count = 0, leased_count = 0, status = 'open'"
            " WHERE human_count <> 0 OR leased_count <> 0 OR status <> 'open'"
        )
        conn.execute("VACUUM ANALYZE annotation_item")


def settle(db_url: str) -> None:
    """Write the setup's dirty pages out now (CHECKPOINT), so the first phase does not measure its
    commits queueing behind the write-back of 100,000 freshly written or reset rows."""
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def start_server(
    env: dict[str, str], port: int, workers: int, threads: int, worker_class: str, tree: Path = ROOT
) -> subprocess.Popen[bytes]:
    cmd = [
        str(Path(sys.executable).parent / "gunicorn"),
        "config.wsgi:application",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        "-k",
        worker_class,
        "--threads",
        str(threads),
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env=env, cwd=tree)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not start")


def login(base: str, username: str) -> dict[str, str]:
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    html = opener.open(base + "/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    data = urllib.parse.urlencode({"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token})
    opener.open(urllib.request.Request(base + "/accounts/login/", data=data.encode()))
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies, f"login failed for {username}"
    return cookies


# ---------------------------------------------------------------------------------------------
# A minimal keep-alive HTTP/1.1 client


class Conn:
    def __init__(self, port: int, cookies: dict[str, str]) -> None:
        self.port = port
        self.cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.csrf = cookies.get("csrftoken", "")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        for attempt in range(2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            head = (
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {self.cookie}\r\nHX-Request: true\r\n"
                f"X-CSRFToken: {self.csrf}\r\nContent-Length: {len(body)}\r\n"
            )
            if body:
                head += "Content-Type: application/x-www-form-urlencoded\r\n"
            try:
                self.writer.write(head.encode() + b"\r\n" + body)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError
                headers = {}
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                data = await self.reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("connection", "").lower() == "close":
                    self.close()
                return int(status_line.split()[1]), data
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = {"next": [], "submit": [], "loop": []}
        self.errors = 0
        self.loops = 0


FORM = urllib.parse.urlencode(
    {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 1}}), "time_ms": "1000"}
).encode()


async def one_loop(conn: Conn, stats: Stats, started: float | None = None) -> None:
    t0 = time.perf_counter()
    status, body = await conn.request("GET", f"/p/{SLUG}/annotate")
    t1 = time.perf_counter()
    match = SUBMIT_RE.search(body)
    if status != 200 or not match:
        stats.errors += 1
        return
    status, _ = await conn.request("POST", match.group(1).decode(), FORM)
    t2 = time.perf_counter()
    if status != 200:
        stats.errors += 1
        return
    stats.lat["next"].append((t1 - t0) * 1000)
    stats.lat["submit"].append((t2 - t1) * 1000)
    stats.lat["loop"].append((t2 - (started if started is not None else t0)) * 1000)
    stats.loops += 1


async def closed_loop(conns: list[Conn], seconds: float, max_loops: int) -> tuple[Stats, float]:
    stats = Stats()
    deadline = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        while time.perf_counter() < deadline and stats.loops < max_loops:
            await one_loop(conn, stats)

    t = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return stats, time.perf_counter() - t


async def browser_loop(conns: list[Conn], seconds: float, max_loops: int) -> tuple[Stats, float]:
    """What the page itself does: one GET for the first item, then submits only, each answered with
    the following item (so "loop" here is one request, and "next" stays empty)."""
    stats = Stats()
    deadline = time.perf_counter() + seconds

    async def worker(conn: Conn) -> None:
        status, body = await conn.request("GET", f"/p/{SLUG}/annotate")
        while time.perf_counter() < deadline and stats.loops < max_loops:
            match = SUBMIT_RE.search(body)
            if status != 200 or not match:
                stats.errors += 1
                return
            t0 = time.perf_counter()
            status, body = await conn.request("POST", match.group(1).decode(), FORM)
            elapsed = (time.perf_counter() - t0) * 1000
            if status == 200:
                stats.lat["submit"].append(elapsed)
                stats.lat["loop"].append(elapsed)
                stats.loops += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    return stats, time.perf_counter() - t


async def open_loop(conns: list[Conn], rate: float, seconds: float) -> tuple[Stats, float, int]:
    stats = Stats()
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    n = int(rate * seconds)
    start = time.perf_counter()
    late = 0

    async def run(i: int) -> None:
        nonlocal late
        scheduled = start + i / rate
        conn = await idle.get()
        if time.perf_counter() - scheduled > 0.05:
            late += 1
        try:
            await one_loop(conn, stats, started=scheduled)
        finally:
            idle.put_nowait(conn)

    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run(i)))
    await asyncio.gather(*tasks)
    return stats, time.perf_counter() - start, late


def report(title: str, stats: Stats, elapsed: float, cpu_before: dict[str, float]) -> dict[str, object]:
    row: dict[str, object] = {
        "phase": title,
        "loops": stats.loops,
        "errors": stats.errors,
        "loops_per_s": round(stats.loops / elapsed, 1),
    }
    for kind, values in stats.lat.items():
        row[kind] = {f"p{p}": round(pct(values, p), 1) for p in (50, 95, 99)}
        if values:
            row[kind]["mean"] = round(statistics.fmean(values), 1)
    line = f"{title:<22} {row['loops_per_s']:>8} loops/s  errors {stats.errors:<3}"
    for kind in ("next", "submit", "loop"):
        v = row[kind]
        line += f"  {kind} p50/p95/p99 {v['p50']:>5}/{v['p95']:>5}/{v['p99']:>5} ms"
    after = cpu_seconds()
    row["cpu_ms_per_loop"] = {k: round((after[k] - cpu_before[k]) * 1000 / max(stats.loops, 1), 1) for k in after}
    cpu = row["cpu_ms_per_loop"]
    line += f"\n{'':<22} CPU ms per loop: gunicorn {cpu['gunicorn']}, PostgreSQL and the rest {cpu['postgres']}"
    line += f", load generator {cpu['loadgen']}; stolen by the hypervisor {cpu['steal']}"
    print(line, flush=True)
    return row


def check_duplicates(db_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        over = conn.execute(
            "SELECT count(*) FROM (SELECT item_id FROM annotation_assignment WHERE state IN ('leased','submitted') "
            "GROUP BY item_id HAVING count(*) > 2) t"
        ).fetchone()[0]
        twice = conn.execute(
            "SELECT count(*) FROM (SELECT item_id, annotator_id FROM annotation_assignment "
            "GROUP BY item_id, annotator_id HAVING count(*) > 1) t"
        ).fetchone()[0]
        judged_over = conn.execute(
            "SELECT count(*) FROM (SELECT item_id FROM annotation_judgment GROUP BY item_id HAVING count(*) > 2) t"
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM annotation_judgment").fetchone()[0]
    return {
        "items_over_overlap": over,
        "items_twice_to_one_annotator": twice,
        "items_with_more_judgments_than_overlap": judged_over,
        "judgments": total,
    }


async def main_async(args: argparse.Namespace, port: int, cookies: list[dict[str, str]]) -> list[dict[str, object]]:
    rows = []
    for c in args.concurrency:
        conns = [Conn(port, cookies[i]) for i in range(c)]
        await closed_loop(conns, 2, 10**9)  # warm-up: connections, caches, workers
        before = cpu_seconds()
        stats, elapsed = await closed_loop(conns, args.duration, args.max_loops)
        rows.append(report(f"closed C={c}", stats, elapsed, before))
        for conn in conns:
            conn.close()
    if args.rate:
        conns = [Conn(port, cookies[i]) for i in range(len(cookies))]
        before = cpu_seconds()
        stats, elapsed, late = await open_loop(conns, args.rate, args.duration)
        row = report(f"open {args.rate:g} loops/s", stats, elapsed, before)
        row["late_starts"] = late
        rows.append(row)
        for conn in conns:
            conn.close()
    if args.browser:
        conns = [Conn(port, cookies[i]) for i in range(args.browser)]
        await browser_loop(conns, 2, 10**9)
        before = cpu_seconds()
        stats, elapsed = await browser_loop(conns, args.duration, args.max_loops)
        rows.append(report(f"page C={args.browser}", stats, elapsed, before))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--max-loops", type=int, default=20_000, help="bound per closed-loop phase")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rate", type=float, default=100.0, help="loops/s of the open-load phase (0: skip it)")
    parser.add_argument(
        "--browser",
        type=int,
        default=32,
        help="annotators of a last closed phase shaped like the page: submits only, each answered with "
        "the next item (0: skip it)",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker-class", default="gthread", help="gunicorn's worker class (-k)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="serve the app from this checkout (another commit's worktree; bench/annotate/compare.sh)",
    )
    parser.add_argument("--results", type=Path, default=OUT / "results.json", help="where the figures go")
    parser.add_argument(
        "--reuse-database",
        action="store_true",
        help="keep the database of an earlier run (same --items) and only clear its judgments and leases",
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/prefloop_bench_annotate")
    annotators = max(max(args.concurrency), args.browser, 32)
    env = bench_env(db_url, OUT / "var", SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0", CACHE_URL=CACHE_URL)
    t = time.perf_counter()
    if args.reuse_database:
        reset(db_url)
    else:
        fresh_database(db_url)
        setup(env, args.items, annotators)
    settle(db_url)
    print(f"setup: {args.items} items, {annotators} annotators in {time.perf_counter() - t:.0f} s", flush=True)
    server = start_server(env, args.port, args.workers, args.threads, args.worker_class, args.tree.resolve())
    try:
        base = f"http://127.0.0.1:{args.port}"
        cookies = [login(base, f"bench{i}") for i in range(annotators)]
        print(
            f"gunicorn {args.worker_class}: {args.workers} workers x {args.threads} threads; {os.cpu_count()} CPUs;"
            f" serving {args.tree}",
            flush=True,
        )
        rows = asyncio.run(main_async(args, args.port, cookies))
    finally:
        server.terminate()
        server.wait(timeout=30)
    dup = check_duplicates(db_url)
    print("duplicates check:", dup)
    args.results.write_text(json.dumps({"phases": rows, "check": dup, "args": vars(args)}, indent=2, default=str))
    if (
        dup["items_over_overlap"]
        or dup["items_twice_to_one_annotator"]
        or dup["items_with_more_judgments_than_overlap"]
    ):
        raise SystemExit("DUPLICATE ASSIGNMENTS FOUND")


if __name__ == "__main__":
    main()
