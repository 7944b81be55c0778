"""The files of one format and split: JSONL and Parquet written together as rows arrive.

Fast path (the export's hot loop, measured in `bench/export`): a JSONL line is assembled from
per-value JSON texts, each exactly what `json.dumps(row, ensure_ascii=False)` writes for it, and
the texts of long strings and lists are remembered for a while (`RowEncoder`), since an item's
prompt and responses recur in every row it gives (four `raw` rows a judgment each, plus `pairs`).
Parquet rows are buffered as columns and written as one record batch per row group.
"""

from __future__ import annotations

import hashlib
import json
import math
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


_encode_str = json.encoder.encode_basestring  # ensure_ascii=False's string encoder (C)
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default)
_MEMO_ITEMS = 512  # long values remembered; bounded, so memory stays flat


class RowEncoder:
    """Rows as JSON lines, byte for byte `json.dumps(row, ensure_ascii=False) + "\\n"`.

    Long strings and lists are encoded once and remembered by identity (the memo holds a
    reference, so an id cannot be reused while it is remembered): rows must not mutate them."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, str]] = {}
        self._keys: dict[str, str] = {}

    def value(self, v: Any) -> str:
        t = type(v)
        if t is str:
            if len(v) < 64:
                return _encode_str(v)
        elif v is None:
            return "null"
        elif t is int:
            return int.__repr__(v)
        elif t is bool:
            return "true" if v else "false"
        elif t is float:
            return float.__repr__(v) if math.isfinite(v) else _ENCODER.encode(v)
        elif t is datetime:
            return '"' + _json_default(v) + '"'
        elif t is not list:
            return _ENCODER.encode(v)
        hit = self._memo.get(id(v))
        if hit is not None and hit[0] is v:
            return hit[1]
        text = _encode_str(v) if t is str else _ENCODER.encode(v)
        if len(self._memo) >= _MEMO_ITEMS:
            self._memo.clear()
        self._memo[id(v)] = (v, text)
        return text

    def line(self, row: dict[str, Any]) -> bytes:
        keys, value = self._keys, self.value
        parts = []
        for k, v in row.items():
            prefix = keys.get(k)
            if prefix is None:
                prefix = keys[k] = _encode_str(k) + ": "
            parts.append(prefix + value(v))
        return ("{" + ", ".join(parts) + "}\n").encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_TEXT_COLUMNS = {"prompt", "chosen", "rejected", "response", "responses", "justification"}


class SplitFiles:
    """The JSONL and Parquet files of one format and split, written as rows arrive."""

    def __init__(self, root: Path, fmt: str, split: str, schema: pa.Schema, encoder: RowEncoder | None = None) -> None:
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
        self._encoder = encoder or RowEncoder()
        self._names = schema.names
        self._columns: list[list[Any]] = [[] for _ in self._names]
        self._buffered = 0
        self._buffer_bytes = 0
        self.rows = 0
        self.bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        line = self._encoder.line(row)
        self._jsonl.write(line)
        self._sha.update(line)
        self.bytes += len(line)
        get = row.get
        for column, name in zip(self._columns, self._names, strict=True):
            column.append(get(name))
        self._buffered += 1
        self._buffer_bytes += len(line)
        self.rows += 1
        if self._buffered >= ROW_GROUP_ROWS or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffered:
            arrays = [pa.array(c, type=f.type) for c, f in zip(self._columns, self.schema, strict=True)]
            batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
            self._parquet.write_batch(batch, row_group_size=self._buffered)
            self._columns = [[] for _ in self._names]
            self._buffered = 0
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
