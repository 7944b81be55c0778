"""The files of one format and split: JSONL and Parquet written together as rows arrive."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 5_000
ROW_GROUP_BYTES = 32 * 1024 * 1024


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_TEXT_COLUMNS = {"prompt", "chosen", "rejected", "response", "responses", "justification"}


class SplitFiles:
    """The JSONL and Parquet files of one format and split, written as rows arrive."""

    def __init__(self, root: Path, fmt: str, split: str, schema: pa.Schema) -> None:
        folder = root / fmt
        folder.mkdir(parents=True, exist_ok=True)
        self.fmt, self.split, self.schema = fmt, split, schema
        self.jsonl_path = folder / f"{split}.jsonl"
        self.parquet_path = folder / f"{split}.parquet"
        self._jsonl = self.jsonl_path.open("wb")
        self._sha = hashlib.sha256()
        # Min/max statistics only where they help filtering: not on texts, whose long min/max values
        # would sit in the footer metadata for every row group.
        stats = [f.name for f in schema if not pa.types.is_list(f.type) and f.name not in _TEXT_COLUMNS]
        self._parquet = pq.ParquetWriter(self.parquet_path, schema, compression="zstd", write_statistics=stats)
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.rows = 0
        self.bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, default=_json_default) + "\n").encode()
        self._jsonl.write(line)
        self._sha.update(line)
        self.bytes += len(line)
        self._buffer.append(row)
        self._buffer_bytes += len(line)
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP_ROWS or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            self._parquet.write_table(table, row_group_size=len(self._buffer))
            self._buffer = []
            self._buffer_bytes = 0

    def close(self, root: Path) -> list[dict[str, Any]]:
        self._flush()
        self._jsonl.close()
        self._parquet.close()
        common = {"format": self.fmt, "split": self.split, "rows": self.rows}
        return [
            {
                "name": self.jsonl_path.relative_to(root).as_posix(),
                "kind": "jsonl",
                "bytes": self.bytes,
                "sha256": self._sha.hexdigest(),
                **common,
            },
            {
                "name": self.parquet_path.relative_to(root).as_posix(),
                "kind": "parquet",
                "bytes": self.parquet_path.stat().st_size,
                "sha256": sha256_file(self.parquet_path),
                **common,
            },
        ]

    def abort(self) -> None:
        self._jsonl.close()
        self._parquet.close()
