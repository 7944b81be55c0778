"""A next + submit loop in process, through Django's WSGI handler: CPU and statements per loop.

    .venv/bin/python bench/annotate/inprocess.py 400 bench3       # loops, annotator
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/annotate/inprocess.py 150 bench4   # user-space instructions

Runs against the database `run.py` builds (run that first, once). No HTTP server and no load
generator, so the figures are the app's own: CPU time per loop, and the statements a loop sends to
PostgreSQL (round trips, `BEGIN`/`COMMIT` included). With `CHUNK=500` it also prints the wall
time per loop of every 500 loops: one annotator working alone, as their history grows.
Instructions per loop under callgrind are the difference between a run of 150 loops and one of
50 (with another annotator), divided by 100: the
start-up cancels out, and the count repeats to within 0.03 %.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import bench_env  # noqa: E402
from run import CACHE_URL, PASSWORD, SLUG, SUBMIT_RE  # noqa: E402

DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/prefloop_bench_annotate")
FORM = urllib.parse.urlencode(
    {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 1}}), "time_ms": "1000"}
).encode()


def main() -> None:
    loops = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    username = sys.argv[2] if len(sys.argv) > 2 else "bench5"
    os.environ.update(
        bench_env(
            DB_URL,
            Path(__file__).parent / "out" / "var",
            SESSION_COOKIE_SECURE="0",
            CSRF_COOKIE_SECURE="0",
            CACHE_URL=CACHE_URL,
        )
    )
    import django

    django.setup()
    import psycopg
    from django.test import Client

    from config.wsgi import application

    client = Client()
    client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    client.get("/accounts/login/")
    cookies = {k: m.value for k, m in client.cookies.items()}
    assert "sessionid" in cookies, f"login failed for {username}"
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())

    def call(method: str, path: str, body: bytes = b"") -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "CONTENT_LENGTH": str(len(body)),
            "HTTP_COOKIE": cookie, "HTTP_HX_REQUEST": "true", "HTTP_X_CSRFTOKEN": cookies.get("csrftoken", ""),
        }  # fmt: skip
        if body:
            environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
        status: list[str] = []
        out = b"".join(application(environ, lambda s, h, *a: status.append(s)))
        return status[0], out

    def loop() -> None:
        status, body = call("GET", f"/p/{SLUG}/annotate")
        match = SUBMIT_RE.search(body)
        assert status.startswith("200") and match, (status, body[:300])
        status, body = call("POST", match.group(1).decode(), FORM)
        assert status.startswith("200"), (status, body[:300])

    statements: Counter[str] = Counter()
    execute, command = psycopg.Cursor.execute, psycopg.Connection._exec_command

    def counted_execute(self: psycopg.Cursor, query: object, *args: object, **kwargs: object) -> object:
        statements[" ".join(str(query).split())[:50]] += 1
        return execute(self, query, *args, **kwargs)

    def counted_command(self: psycopg.Connection, cmd: object, *args: object, **kwargs: object) -> object:
        statements[str(cmd)[:50]] += 1
        return command(self, cmd, *args, **kwargs)

    for _ in range(30):  # warm-up: connections, caches, prepared statements
        loop()
    psycopg.Cursor.execute, psycopg.Connection._exec_command = counted_execute, counted_command
    profile = os.environ.get("PROFILE")  # a path: write cProfile's stats of the timed loops there
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time, not waiting
        profiler.enable()
    chunk = int(os.environ.get("CHUNK", "0"))  # print the wall time of every CHUNK loops too
    cpu, wall = time.process_time(), time.perf_counter()
    mark = wall
    for n in range(1, loops + 1):
        loop()
        if chunk and n % chunk == 0:
            now = time.perf_counter()
            print(f"  loops {n - chunk + 1}-{n}: wall {1000 * (now - mark) / chunk:.2f} ms/loop", flush=True)
            mark = now
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if profile:
        profiler.disable()
        profiler.dump_stats(profile)
    print(f"{loops} loops as {username}: CPU {1000 * cpu / loops:.2f} ms/loop, wall {1000 * wall / loops:.2f} ms/loop")
    print(f"statements per loop: {sum(statements.values()) / loops:.2f}")
    for text, n in statements.most_common():
        print(f"  {n / loops:5.2f}  {text}")


if __name__ == "__main__":
    main()
