"""`make run`'s embedded defaults (SQLite, the filesystem broker) serve every page: the suite itself
runs on PostgreSQL, so scripts/crawl_embedded.py starts the app as scripts/run.sh does, in its own
processes and a temporary VAR_DIR, puts data behind every page and requests every URL pattern and
every link as each demo user (and a site admin). Any 5xx fails, naming the page and the error."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_every_page_answers_without_a_server_error_on_the_embedded_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/crawl_embedded.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0, "\n".join(lines[-40:]) + "\n" + done.stderr[-3000:]
    summary = json.loads(lines[-1])
    # The walk reached the pages with data: the seed's model trained, and most patterns were filled.
    assert "reward model v1: succeeded" in summary["seed"], summary
    assert summary["patterns_filled"] >= 150 and summary["pages"] >= 500, summary
