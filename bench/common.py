"""What the benchmark scripts share: a fresh PostgreSQL database and the environment for the app."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
