"""The files of one format and split: JSONL and Parquet written together as rows arrive.

Fast path (the export's hot loop, measured in `bench/export`): rows are turned into Arrow arrays a
chunk at a time, the Parquet row groups are written from those arrays, and the JSONL lines are
built from the same arrays in Arrow: each column's JSON texts (strings escaped and quoted,
integers cast; other types one value at a time through `RowEncoder`, which remembers the texts of
an item's lists, as they recur in every row of the item) joined with the key prefixes. The bytes
are exactly what `json.dumps(row, ensure_ascii=False)` writes, line by line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.export.deflate import Deflater

ROW_GROUP_ROWS = 5_000
CHUNK_ROWS = 1_000  # rows converted to Arrow and JSON at a time; divides ROW_GROUP_ROWS
ROW_GROUP_BYTES = 32 * 1024 * 1024


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


_encode_str = json.encoder.encode_basestring  # ensure_ascii=False's string encoder (C)
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default)
_MEMO_ITEMS = 512  # long values remembered; bounded, so memory stays flat


class RowEncoder:
    """Values as JSON texts, byte for byte `json.dumps(value, ensure_ascii=False)`.

    Long strings and lists are encoded once and remembered by identity (the memo holds a
    reference, so an id cannot be reused while it is remembered): rows must not mutate them."""

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, str]] = {}

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


# What json escapes: these as two characters, any other control character as \\u00XX.
_ESCAPES = {
    ord(c): (c, e)
    for c, e in [
        ("\\", "\\\\"),
        ('"', '\\"'),
        ("\n", "\\n"),
        ("\r", "\\r"),
        ("\t", "\\t"),
        ("\b", "\\b"),
        ("\f", "\\f"),
    ]
}
_CONTROL = np.array([b < 0x20 and b not in _ESCAPES for b in range(256)])
_NONE = type(None)


def _string_texts(array: pa.Array) -> pa.Array | None:
    """JSON texts of a string column, escaped in Arrow (a byte count of the UTF-8 data says which
    escapes are needed, each a substring replacement); None when a control character other than
    the named escapes needs the per-value encoder."""
    counts = np.bincount(np.frombuffer(_utf8(array), dtype=np.uint8), minlength=256)
    if counts[_CONTROL].any():
        return None
    for byte, (old, new) in _ESCAPES.items():
        if counts[byte]:
            array = pc.replace_substring(array, old, new)
    return pc.fill_null(pc.binary_join_element_wise('"', array, '"', ""), "null")


def _json_texts(array: pa.Array, values: tuple[Any, ...], encoder: RowEncoder) -> pa.Array:
    """Each value's JSON text (as `json.dumps(value, ensure_ascii=False)`), as a string array.

    Strings and integers are encoded by Arrow (a byte count of the UTF-8 data says which escapes
    are needed, each a substring replacement); strings with other control characters, and every
    other type, one value at a time by `encoder`."""
    kinds = set(map(type, values)) - {_NONE}
    if kinds <= {str} and pa.types.is_string(array.type):
        if (texts := _string_texts(array)) is not None:
            return texts
    elif kinds <= {int} and pa.types.is_integer(array.type):
        return pc.fill_null(pc.cast(array, pa.string()), "null")
    if not kinds:
        return pa.array(["null"] * len(values), type=pa.string())
    if kinds == {float} and array.null_count == 0 and pc.all(pc.is_finite(array)).as_py():
        return pa.array(list(map(float.__repr__, values)), type=pa.string())
    return pa.array([encoder.value(v) for v in values], type=pa.string())


def json_texts(array: pa.Array, encoder: RowEncoder) -> pa.Array:
    """`_json_texts` of a column that is only an Arrow array: strings and integers in Arrow, an
    all-null column as `null`, anything else one value at a time."""
    if array.null_count == len(array):
        return pa.array(["null"] * len(array), type=pa.string())
    if pa.types.is_string(array.type):
        if (texts := _string_texts(array)) is not None:
            return texts
    elif pa.types.is_integer(array.type):
        return pc.fill_null(pc.cast(array, pa.string()), "null")
    return pa.array([encoder.value(v) for v in array.to_pylist()], type=pa.string())


def quoted(array: pa.Array) -> pa.Array:
    """JSON texts of strings known to need no escapes (identifiers, uuids, hex digests)."""
    return pc.fill_null(pc.binary_join_element_wise('"', array, '"', ""), "null")


def _utf8(array: pa.Array) -> memoryview:
    """The bytes of a string array's values, end to end."""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    data = array.buffers()[2]
    return memoryview(data)[offsets[0] : offsets[-1]] if data is not None else memoryview(b"")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_TEXT_COLUMNS = {"prompt", "chosen", "rejected", "response", "responses", "justification"}


class SplitFiles:
    """The JSONL and Parquet files of one format and split, written as rows arrive.

    Rows (dicts with the schema's columns, in its order) are converted a chunk at a time: Arrow
    arrays from the columns, then each column's JSON texts (`_json_texts`) joined into the lines
    in Arrow. A Parquet row group is written every `ROW_GROUP_ROWS` rows or `ROW_GROUP_BYTES` of
    JSON, so at most one row group and one chunk are held."""

    def __init__(
        self,
        root: Path,
        fmt: str,
        split: str,
        schema: pa.Schema,
        encoder: RowEncoder | None = None,
        deflater: Callable[[Path], Deflater] | None = None,
    ) -> None:
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
        self._names = tuple(schema.names)
        # `{"a": `, `, "b": `, ...: what comes before each column's value in a line
        self._prefixes = [("{" if i == 0 else ", ") + _encode_str(n) + ": " for i, n in enumerate(self._names)]
        self._chunk: list[dict[str, Any]] = []
        self._carry: tuple[pa.RecordBatch, pa.Array] | None = None  # columns short of a chunk
        self._deflate = deflater(self.jsonl_path) if deflater else None
        self._batches: list[pa.RecordBatch] = []
        self._group_rows = 0
        self._group_bytes = 0
        self.rows = 0
        self.bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        if tuple(row) != self._names:
            raise ValueError(f"{self.fmt} row has columns {list(row)}, not the schema's {list(self._names)}")
        self._chunk.append(row)
        self.rows += 1
        if len(self._chunk) >= CHUNK_ROWS:
            self._convert()

    def write_columns(self, arrays: list[pa.Array], texts: list[pa.Array]) -> None:
        """Append rows given as columns: each column's Arrow array and its JSON texts (`json_texts`).

        They are cut into the same chunks of `CHUNK_ROWS` rows as rows written one by one, so the
        files are the same bytes whichever way the rows came."""
        if self._chunk:
            raise ValueError(f"{self.fmt}: rows and columns written to one file")
        if not len(arrays[0]):
            return
        pieces: list[Any] = []
        for prefix, text in zip(self._prefixes, texts, strict=True):
            pieces += [prefix, text]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        lines = pc.binary_join_element_wise(*pieces, "}\n", "")
        self.rows += len(lines)
        if self._carry is not None:
            batch = pa.Table.from_batches([self._carry[0], batch]).combine_chunks().to_batches()[0]
            lines = pa.concat_arrays([self._carry[1], lines])
            self._carry = None
        start = 0
        while len(lines) - start >= CHUNK_ROWS:
            self._emit(batch.slice(start, CHUNK_ROWS), lines.slice(start, CHUNK_ROWS))
            start += CHUNK_ROWS
        if start < len(lines):
            self._carry = (batch.slice(start), lines.slice(start))

    def _convert(self) -> None:
        if self._carry is not None:
            self._emit(*self._carry)
            self._carry = None
        if not self._chunk:
            return
        columns = list(zip(*(row.values() for row in self._chunk), strict=True))
        self._chunk = []
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, self.schema, strict=True)]
        pieces: list[Any] = []
        for prefix, array, values in zip(self._prefixes, arrays, columns, strict=True):
            pieces += [prefix, _json_texts(array, values, self._encoder)]
        lines = pc.binary_join_element_wise(*pieces, "}\n", "")
        self._emit(pa.RecordBatch.from_arrays(arrays, schema=self.schema), lines)

    def _emit(self, batch: pa.RecordBatch, lines: pa.Array) -> None:
        """One chunk: its JSON lines to the JSONL file, its batch to the row group being built."""
        data = _utf8(lines)
        self._jsonl.write(data)
        self._sha.update(data)
        if self._deflate is not None:
            self._deflate.feed(data)
        self.bytes += len(data)
        self._batches.append(batch)
        self._group_rows += len(lines)
        self._group_bytes += len(data)
        if self._group_rows >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._chunk or self._carry is not None:
            self._convert()
        if self._batches:
            table = pa.Table.from_batches(self._batches, schema=self.schema)
            self._parquet.write_table(table, row_group_size=table.num_rows)
            self._batches = []
            self._group_rows = self._group_bytes = 0

    def close(self, root: Path) -> list[dict[str, Any]]:
        self._flush()
        if self._deflate is not None:
            self._deflate.end()
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
