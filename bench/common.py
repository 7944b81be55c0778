"""What the benchmark scripts share: a fresh PostgreSQL database, the environment for the app, and
the shared HH-RLHF pairs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from pathlib import Path

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_pairs.jsonl.gz"

# The vocabulary of generated prompts and responses.
WORDS = [
    "the", "model", "answer", "question", "because", "however", "data", "label",
    "prefer", "safe", "helpful", "claim", "code", "step", "result",
]  # fmt: skip


def fresh_database(db_url: str) -> None:
    """Drop and recreate the database named at the end of `db_url`."""
    server, name = db_url.rsplit("/", 1)
    for sql in (f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"):
        subprocess.run(["psql", f"{server}/postgres", "-qc", sql], check=True)


def bench_env(db_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    """The app's environment for a benchmark run: production settings on a throwaway database."""
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "SECRET_KEY": "bench",
        "DEBUG": "0",
        "STATIC_MANIFEST": "0",
        "VAR_DIR": str(var_dir),
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **extra,
    }


def load_hh_pairs(limit: int) -> list[tuple[str, str, str]]:
    """(prompt transcript, chosen, rejected) of the first `limit` shared HH-RLHF pairs, split the way
    the importer splits them (needs Django set up: it uses annotation.importing)."""
    from annotation.importing import hh_messages, split_hh_dialogue, transcript

    if not HH.exists():
        raise SystemExit(f"{HH} is absent: this benchmark reads the shared HH-RLHF pairs")
    out = []
    with gzip.open(HH, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"])
            out.append((transcript(hh_messages(prompt)), chosen, rejected))
            if len(out) >= limit:
                break
    return out


def setup_embedded_django(out: Path) -> None:
    """Django in this process on a SQLite database under `out` (the app's `EmbeddingCache` lives
    there, so embeddings are computed once across runs), migrated."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{out / 'embeddings.sqlite3'}")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
