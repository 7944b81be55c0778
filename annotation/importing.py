"""Reading item files (JSONL, CSV, Parquet, JSON, optionally gzip-compressed) into a project.

The reader streams: rows are parsed, validated and written in batches, so memory stays flat in
the size of the file. The whole import is one transaction: if any row is bad, the import is
refused with the line number and reason of each bad row (up to `max_errors`), and nothing is
stored. Items whose external id the project already has are left untouched, so importing a file
twice changes nothing; an id given twice in one file is refused. Labels are checked for
consistency with the schema, not for completeness (see `check_row`).

Accepted row shapes (see README, "Importing items"):
- {prompt, response_a, response_b, model_a?, model_b?, metadata?, id?, split?}
- {prompt, responses: [{text, model?} | "text", ...], ...}
- prompt as chat messages: a list of {role, content}, under `prompt` or `messages`
- HH-RLHF dialogue pairs {chosen, rejected}: the shared conversation is the prompt and the two
  final Assistant turns are the responses (the human preferred `chosen`)
- TRL preference rows {prompt, chosen, rejected}
Labels carried in the file become judgments of an "imported" labeler (named by `annotator`):
`label`/`preference` (A, B or tie) with `strength`, `ranking`, `rubric`, `spans`,
`justification`, or a full `judgments: [{annotator, pairwise?, ranking?, rubric?, spans?}]` list.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models import Count
from django.utils import timezone

from annotation.models import Item, Judgment, Labeler, LabelSource, Project, source_q
from annotation.schema import JudgmentSchema, PayloadError

FORMATS = ("jsonl", "csv", "parquet", "json")
DEFAULT_ANNOTATOR = "imported"
# Signatures of files people upload by mistake: refused by name instead of as "not UTF-8".
_NOT_TEXT = (
    (b"\x1f\x8b", "compressed twice (gzip inside gzip)"),
    (b"PK\x03\x04", "a ZIP archive; upload the file inside it (gzip compression is accepted)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"BZh", "bzip2-compressed; use gzip"),
    (b"\xfd7zXZ", "xz-compressed; use gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; use gzip"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\xff\xfe", "UTF-16 text; save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text; save it as UTF-8"),
)
_ROLES = {"system", "user", "assistant", "tool"}
_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"
_TURN_RE = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class RowError:
    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}" if self.line else self.message


class ImportRefused(Exception):  # noqa: N818 - it is a refusal, not a crash
    """The file was refused; nothing of it was stored."""

    def __init__(self, errors: list[RowError], rows_read: int = 0, truncated: bool = False) -> None:
        self.errors = errors
        self.rows_read = rows_read
        self.truncated = truncated
        more = " (and possibly more; stopped counting)" if truncated else ""
        super().__init__(f"import refused, nothing stored: {len(errors)} problem(s){more}; first: {errors[0]}")


class _BadRowError(ValueError):
    pass


@dataclass
class ImportResult:
    format: str = ""
    rows_read: int = 0
    items_created: int = 0
    items_existing: int = 0
    judgments_created: int = 0


@dataclass
class ParsedRow:
    line: int
    external_id: str
    prompt: str
    prompt_messages: list[dict[str, str]] | None
    responses: list[dict[str, str]]
    metadata: dict[str, Any]
    split: str = Item.Split.TRAIN
    gold_answer: dict[str, Any] | None = None
    judgments: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    chars: int = 0  # characters of text in the raw row: its weight in a batch
    id_given: bool = True  # False: the id was made from the content


# ---------------------------------------------------------------------------------------------
# Reading rows out of a file


class _CappedReader(io.RawIOBase):
    """Stops a decompression bomb: refuses past `limit` decompressed bytes."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        self._left -= len(data)
        if self._left < 0:
            raise _too_large_decompressed()
        buffer[: len(data)] = data
        return len(data)


def _too_large_decompressed() -> ImportRefused:
    limit = settings.IMPORT_MAX_DECOMPRESSED_BYTES
    message = f"the file decompresses to more than {limit:,} bytes (IMPORT_MAX_DECOMPRESSED_BYTES)"
    return ImportRefused([RowError(0, message)])


def detect_format(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "jsonl"
    if text.startswith(b"["):
        return "json"
    return "csv"


def open_rows(
    fileobj: IO[bytes], fmt: str | None = None
) -> tuple[str, Iterator[tuple[int, dict[str, Any] | RowError]]]:
    """Detect the format (unless forced) and return it with an iterator of (line, row or error)."""
    if fmt is not None and fmt not in FORMATS:
        raise ImportRefused([RowError(0, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")])
    # typing.IO declares no readinto(), which BufferedReader's stub wants of its stream; the files
    # given here (an upload, a stored file, an open file) all have it.
    stream: io.BufferedReader = (
        fileobj if isinstance(fileobj, io.BufferedReader) else io.BufferedReader(fileobj)  # type: ignore[arg-type]
    )
    if stream.peek(2)[:2] == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=stream, mode="rb")
        capped = _CappedReader(gz, settings.IMPORT_MAX_DECOMPRESSED_BYTES)
        stream = io.BufferedReader(capped, buffer_size=1 << 20)
    try:
        head = stream.peek(4096)[:4096]
    except (OSError, EOFError) as exc:
        raise ImportRefused([RowError(0, f"the file is truncated or corrupt: {exc}")]) from None
    if not head.strip():
        raise ImportRefused([RowError(0, "the file is empty")])
    _refuse_non_text(head)
    fmt = fmt or detect_format(head)
    readers = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows, "json": _json_rows}
    return fmt, readers[fmt](stream)


def _refuse_non_text(head: bytes) -> None:
    if head.startswith(b"PAR1"):
        return
    for magic, what in _NOT_TEXT:
        if head.startswith(magic):
            raise ImportRefused([RowError(0, f"the file is {what}, not JSONL, CSV, JSON or Parquet")])
    if b"\x00" in head:
        even, odd, half = head[0::2].count(0), head[1::2].count(0), len(head) // 2
        if min(even, odd) < half // 20 and max(even, odd) > half // 2:  # mostly ASCII written as UTF-16
            raise ImportRefused([RowError(0, "the file is UTF-16 text (without a byte-order mark); save it as UTF-8")])
        raise ImportRefused([RowError(0, "the file is binary (it holds NUL bytes), not JSONL, CSV, JSON or Parquet")])


def _text(stream: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")


def _lines(text: io.TextIOWrapper) -> Iterator[str]:
    """The text's lines, refusing one longer than IMPORT_MAX_LINE_CHARS (memory stays bounded)."""
    limit = settings.IMPORT_MAX_LINE_CHARS
    lineno = 0
    while True:
        try:
            line = text.readline(limit + 1)
        except UnicodeDecodeError as exc:
            raise ImportRefused([RowError(_bad_byte_line(lineno, exc), _NOT_UTF8)]) from None
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith("\n"):
            message = f"the line is longer than {limit:,} characters (IMPORT_MAX_LINE_CHARS)"
            raise ImportRefused([RowError(lineno, message)])
        yield line


_NOT_UTF8 = "the file is not valid UTF-8 text (Latin-1 or Windows-1252? save it as UTF-8)"


def _bad_byte_line(lines_read: int, exc: UnicodeDecodeError) -> int:
    """The line of the byte that failed to decode. The text reader decodes a chunk of bytes ahead
    of the lines handed out, and asks for a chunk only when the line it is reading runs past the
    decoded text, so the chunk starts inside line `lines_read + 1`; the chunk's newlines before
    the bad byte count the lines after it."""
    return lines_read + 1 + exc.object[: exc.start].count(b"\n")


def _decode_guard(rows: Iterator[tuple[int, Any]], where: list[int]) -> Iterator[tuple[int, Any]]:
    try:
        yield from rows
    except csv.Error as exc:
        if "field limit" in str(exc):
            limit = settings.IMPORT_MAX_FIELD_CHARS
            message = f"a field is longer than {limit:,} characters (IMPORT_MAX_FIELD_CHARS)"
        elif "NUL" in str(exc):
            message = "the file holds NUL bytes: it is binary, not CSV text"
        else:
            message = f"malformed CSV: {exc}"
        raise ImportRefused([RowError(where[0] + 1, message)]) from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ImportRefused([RowError(where[0] + 1, f"the file is truncated or corrupt: {exc}")]) from None


def _jsonl_rows(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    where = [0]

    def rows() -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        for lineno, line in enumerate(_lines(_text(stream)), start=1):
            where[0] = lineno
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield lineno, RowError(lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield lineno, RowError(lineno, "each line must be a JSON object")
                continue
            yield lineno, value

    return _decode_guard(rows(), where)


def _json_rows(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    """A JSON array of objects. Not streamed: capped at 256 MB; use JSONL for larger files."""
    data = stream.read(256 * 1024 * 1024 + 1)
    if len(data) > 256 * 1024 * 1024:
        raise ImportRefused([RowError(0, "a JSON array file is limited to 256 MB; use JSONL for larger files")])
    try:
        values = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ImportRefused([RowError(0, "the file is not valid UTF-8 text")]) from None
    except json.JSONDecodeError as exc:
        raise ImportRefused([RowError(exc.lineno, f"invalid JSON ({exc.msg})")]) from None
    if not isinstance(values, list):
        raise ImportRefused([RowError(0, "a JSON file must hold an array of objects")])
    for n, value in enumerate(values, start=1):
        if isinstance(value, dict):
            yield n, value
        else:
            yield n, RowError(n, "each element must be a JSON object", unit="element")


def _csv_rows(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    csv.field_size_limit(settings.IMPORT_MAX_FIELD_CHARS)
    where = [0]

    def rows() -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        reader = csv.reader(_lines(_text(stream)))
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            yield 1, RowError(1, "the CSV header repeats a column name")
            return
        start = reader.line_num + 1
        for values in reader:
            where[0] = reader.line_num
            line, start = start, reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield line, RowError(line, f"expected {len(header)} columns, found {len(values)}")
                continue
            yield line, _csv_row(dict(zip(header, values, strict=True)))

    return _decode_guard(rows(), where)


def _csv_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are text: decode JSON-looking prompt/metadata cells and dotted metadata columns."""
    out: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith(("meta.", "metadata.")):
            if value != "":
                metadata[key.split(".", 1)[1]] = value
        elif value == "" and key not in ("response_a", "response_b") and not key.startswith("response_"):
            continue
        elif key in ("metadata", "responses", "ranking", "rubric", "spans", "judgments", "gold_answer"):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = _Unparsable(key)
        elif key in ("prompt", "messages") and value.lstrip().startswith("[{"):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value
        else:
            out[key] = value
    if metadata:
        base = out.get("metadata")
        out["metadata"] = {**(base if isinstance(base, dict) else {}), **metadata}
    return out


@dataclass(frozen=True)
class _Unparsable:
    column: str


def _parquet_rows(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def unreadable(exc: Exception) -> ImportRefused:
        return ImportRefused([RowError(0, f"not a readable Parquet file: {exc}")])

    # A Parquet file is compressed, and its text columns are usually dictionary-encoded: a few
    # kilobytes can stand for gigabytes of text (one long value, referenced by a million rows).
    # Reading such a column as an Arrow dictionary sizes it before any value is copied, but
    # costs memory in the size of the row group when the writer fell back to plain pages (as
    # pyarrow and pandas do once a column's unique texts pass 1 MB): Arrow then grows one
    # dictionary over the whole row group (several GB for their default row group of up to
    # 1Mi rows), and copies it into every batch. So text columns are read decoded, in batches
    # small enough that even a batch of rows all referencing the longest value a dictionary
    # page can hold stays within IMPORT_BATCH_CHARS bytes (see `_dictionary_bounds`). A column
    # inside a list can hold any number of values in one row, so no row count bounds it: such a
    # column with a dictionary page is still read as a dictionary, and sized before it decodes.
    try:
        meta = pq.read_metadata(stream)
    except (pa.ArrowException, OSError) as exc:
        raise unreadable(exc) from None
    limit = settings.IMPORT_MAX_DECOMPRESSED_BYTES
    if sum(meta.row_group(k).total_byte_size for k in range(meta.num_row_groups)) > limit:
        raise _too_large_decompressed()
    n = decoded = 0
    for k in range(meta.num_row_groups):
        # Row group by row group: a batch that spans two row groups comes out of Arrow as a
        # chunked array, which it cannot build for a nested column read as a dictionary.
        try:
            per_row, as_dictionary = _dictionary_bounds(stream, meta, k)
            group = meta.row_group(k)
            row_bytes = per_row + group.total_byte_size // max(group.num_rows, 1)
            batch_size = max(1, min(256, settings.IMPORT_BATCH_CHARS // max(row_bytes, 1)))
            # buffer_size without pre_buffer: column chunks stream through a small buffer instead
            # of being read whole (a row group's compressed text is hundreds of MB at 1Mi rows).
            pf = pq.ParquetFile(
                stream, metadata=meta, read_dictionary=as_dictionary, buffer_size=1 << 20, pre_buffer=False
            )
            batches = pf.iter_batches(batch_size=batch_size, row_groups=[k])
        except (pa.ArrowException, OSError) as exc:
            raise unreadable(exc) from None
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise unreadable(exc) from None
            if batch is None:
                break
            decoded += sum(_decoded_bytes(column) for column in batch.columns)
            if decoded > limit:
                raise _too_large_decompressed()
            for row in batch.to_pylist():
                n += 1
                yield n, {k: v for k, v in row.items() if v is not None}


def _dictionary_bounds(stream: IO[bytes], meta: Any, k: int) -> tuple[int, list[str]]:
    """For row group `k`: the most bytes one row's dictionary-encoded values can decode to, and the
    columns to read as dictionaries instead (values in a list; dictionary pages we cannot size).

    A dictionary-encoded value is at most as long as its dictionary page, whose uncompressed size
    is in the page's own header (the size Arrow decompresses it to), so the bound holds even where
    the footer's sizes understate it. That bound is about 1 MB for any column whose writer fell
    back to plain pages, so the longest value in the dictionary itself is used where it is known:
    the first row read as a dictionary brings the whole dictionary page with it, unless a crafted
    file puts a plain page first; then what came is shorter than the page and the page's size
    stands. A column without a dictionary page decodes to its pages' own bytes, which the cap on
    the file's decompressed size already counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    group = meta.row_group(k)
    page_bytes: dict[str, int] = {}
    as_dictionary = []
    for j in range(group.num_columns):
        chunk = group.column(j)
        if chunk.physical_type not in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"):
            continue  # numbers and booleans decode to a fixed width
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and 0 < chunk.dictionary_page_offset < start:
            start = chunk.dictionary_page_offset  # where Arrow starts reading the chunk
        stream.seek(start)
        header = _page_header_start(stream.read(16))
        if header is not None and header[0] != _DICTIONARY_PAGE and not chunk.has_dictionary_page:
            continue
        if header is not None and header[1] > settings.IMPORT_MAX_DECOMPRESSED_BYTES:
            raise _too_large_decompressed()
        if header is None or header[0] != _DICTIONARY_PAGE or meta.schema.column(j).max_repetition_level:
            as_dictionary.append(chunk.path_in_schema)
        else:
            page_bytes[chunk.path_in_schema] = header[1]
    if not page_bytes:
        return 0, as_dictionary
    paths = list(page_bytes)
    tops = list(dict.fromkeys(path.split(".")[0] for path in paths))
    probe = pq.ParquetFile(stream, metadata=meta, read_dictionary=paths, buffer_size=1 << 20, pre_buffer=False)
    first = next(probe.iter_batches(batch_size=1, row_groups=[k], columns=tops), None)
    per_row = sum(page_bytes.values())
    if first is not None:
        for path, array in _leaves(first):
            if path in page_bytes and hasattr(array, "dictionary"):
                lengths = pc.binary_length(array.dictionary)
                held = int(pc.sum(lengths).as_py() or 0) + 4 * len(lengths)  # as PLAIN-encoded on the page
                if held >= page_bytes[path]:
                    per_row -= page_bytes[path] - int(pc.max(lengths).as_py() or 0)
    return per_row, as_dictionary


def _leaves(batch: Any) -> Iterator[tuple[str, Any]]:
    """(dotted path, array) of each leaf column of a record batch, through structs."""
    import pyarrow as pa

    stack = [(name, batch.column(i)) for i, name in enumerate(batch.schema.names)]
    while stack:
        path, array = stack.pop()
        if pa.types.is_struct(array.type):
            stack.extend((f"{path}.{array.type.field(i).name}", array.field(i)) for i in range(array.type.num_fields))
        else:
            yield path, array


_DICTIONARY_PAGE = 2  # parquet.thrift PageType


def _page_header_start(head: bytes) -> tuple[int, int] | None:
    """A Parquet page header's first two fields, (type, uncompressed_page_size), from Thrift's
    compact encoding: for each, a byte 0x15 (field id delta 1, type i32), then a zigzag varint.
    None if `head` does not start that way."""
    fields, pos = [], 0
    for _ in range(2):
        if pos >= len(head) or head[pos] != 0x15:
            return None
        pos += 1
        value = shift = 0
        while True:
            if pos >= len(head) or shift > 28:
                return None
            byte = head[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields.append((value >> 1) ^ -(value & 1))
    return fields[0], fields[1]


def _decoded_bytes(array: Any) -> int:
    """The bytes of `array` with its dictionaries expanded: what its values come to once decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        lengths = pc.binary_length(array.dictionary)
        return int(pc.sum(pc.take(lengths, array.indices)).as_py() or 0) + array.indices.nbytes
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _decoded_bytes(array.flatten()) + array.nbytes - array.values.nbytes
    if pa.types.is_struct(kind):
        return sum(_decoded_bytes(field) for field in array.flatten())
    return array.nbytes


# ---------------------------------------------------------------------------------------------
# Turning one raw row into a normalized item


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH-RLHF dialogues into (shared prompt, chosen final turn, rejected final turn).

    The prompt runs up to the last Human turn of the shared prefix; the final Assistant turn
    starts at the first Assistant marker after it. Responses that themselves contain turn markers
    (the model "continuing" the dialogue) stay whole.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    shared = chosen[:n]
    human = shared.rfind(_HUMAN)
    if human < 0:
        raise _BadRowError("chosen and rejected share no Human turn, so the prompt cannot be found")
    cut = shared.find(_ASSISTANT, human)
    if cut < 0:
        # The dialogues diverge inside the last Human turn or right at the Assistant marker.
        cut = chosen.find(_ASSISTANT, human)
        if cut < 0 or rejected.find(_ASSISTANT, human) != cut:
            raise _BadRowError("chosen and rejected do not end with a final Assistant turn after a shared prompt")
    prompt = chosen[:cut]
    return prompt, _turn_text(chosen[cut + len(_ASSISTANT) :]), _turn_text(rejected[cut + len(_ASSISTANT) :])


def _turn_text(text: str) -> str:
    return text[1:] if text.startswith(" ") else text


def hh_messages(prompt: str) -> list[dict[str, str]]:
    parts = _TURN_RE.split(prompt)
    messages = []
    lead = parts[0].strip()
    if lead:
        messages.append({"role": "user", "content": lead})
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": _turn_text(content)})
    return messages


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _BadRowError(f"{what} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
            raise _BadRowError(f"{what}[{i}] must be {{role: system|user|assistant|tool, content: text}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def transcript(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _response_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # TRL conversational: the final assistant message
        msgs = _messages(value, what)
        if msgs[-1]["role"] != "assistant":
            raise _BadRowError(f"{what} as messages must end with an assistant message")
        return msgs[-1]["content"]
    raise _BadRowError(f"{what} must be text")


def _str(value: Any, what: str, max_len: int = 1_000_000) -> str:
    if isinstance(value, bool) or value is None:
        raise _BadRowError(f"{what} must be text")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise _BadRowError(f"{what} must be text")
    if len(value) > max_len:
        raise _BadRowError(f"{what} is longer than {max_len} characters")
    return value


_LABELS = {"a": "A", "response_a": "A", "b": "B", "response_b": "B", "tie": "tie", "equal": "tie", "same": "tie"}
_SPLITS = {"train": "train", "eval": "eval", "test": "eval", "validation": "eval", "dev": "eval", "heldout": "eval"}
_KNOWN = {
    "id",
    "external_id",
    "prompt",
    "messages",
    "response_a",
    "response_b",
    "model_a",
    "model_b",
    "responses",
    "chosen",
    "rejected",
    "metadata",
    "split",
    "label",
    "preference",
    "strength",
    "ranking",
    "rubric",
    "spans",
    "justification",
    "annotator",
    "judgments",
    "gold_answer",
    "chosen_model",
    "rejected_model",
}


def normalize_row(raw: dict[str, Any], line: int) -> ParsedRow:
    """Map any accepted row shape onto one ParsedRow, or raise _BadRowError saying what is wrong."""
    chars = _text_chars(raw)
    for key, value in raw.items():
        if isinstance(value, _Unparsable):
            raise _BadRowError(f"column {key!r} must hold JSON")
    prompt_messages: list[dict[str, str]] | None = None
    labels: list[tuple[str, dict[str, Any]]] = []
    annotator = _str(raw.get("annotator", DEFAULT_ANNOTATOR), "annotator", 200).strip() or DEFAULT_ANNOTATOR
    hh_like = "chosen" in raw and "rejected" in raw
    if not hh_like and ("chosen" in raw or "rejected" in raw):
        raise _BadRowError("chosen and rejected must both be given")
    if hh_like and "prompt" not in raw and "messages" not in raw:
        chosen = _str(raw["chosen"], "chosen")
        rejected = _str(raw["rejected"], "rejected")
        prompt_text, chosen_text, rejected_text = split_hh_dialogue(chosen, rejected)
        prompt_messages = hh_messages(prompt_text)
        prompt = transcript(prompt_messages)
    else:
        prompt_value = raw.get("prompt", raw.get("messages"))
        if prompt_value is None:
            raise _BadRowError("missing prompt (or messages)")
        if isinstance(prompt_value, list):
            prompt_messages = _messages(prompt_value, "prompt")
            prompt = transcript(prompt_messages)
        else:
            prompt = _str(prompt_value, "prompt")
            if not prompt.strip():
                raise _BadRowError("prompt is empty")
        if hh_like:
            chosen_text = _response_text(raw["chosen"], "chosen")
            rejected_text = _response_text(raw["rejected"], "rejected")

    if hh_like:
        external_id = _external_id(raw, prompt, [chosen_text, rejected_text])
        chosen_first = int(hashlib.sha256(external_id.encode()).hexdigest(), 16) % 2 == 0
        models = [raw.get("chosen_model", ""), raw.get("rejected_model", "")]
        pair = [(chosen_text, models[0]), (rejected_text, models[1])]
        if not chosen_first:
            pair.reverse()
        responses = [{"text": t, "model": _str(m, "model", 200) if m else ""} for t, m in pair]
        strength = _int(raw.get("strength", 1), "strength")
        labels.append((annotator, {"pairwise": {"choice": "A" if chosen_first else "B", "strength": strength}}))
    else:
        responses = _responses(raw)
        external_id = _external_id(raw, prompt, [r["text"] for r in responses])

    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _BadRowError("metadata must be a JSON object")
    extra = {
        k: v for k, v in raw.items() if k not in _KNOWN and not k.startswith("response_") and not k.startswith("model_")
    }
    metadata = {**extra, **metadata}

    split = _SPLITS.get(str(raw.get("split", "train")).strip().lower())
    if split is None:
        raise _BadRowError(f"split must be train or eval, got {raw.get('split')!r}")

    if not hh_like:
        labels.extend(_labels(raw, annotator))
    gold = raw.get("gold_answer")
    if gold is not None and not isinstance(gold, dict):
        raise _BadRowError("gold_answer must be a judgment payload object")
    return ParsedRow(
        line=line,
        external_id=external_id,
        prompt=prompt,
        prompt_messages=prompt_messages,
        responses=responses,
        metadata=metadata,
        split=split,
        gold_answer=gold,
        judgments=labels,
        chars=chars,
        id_given=raw.get("id", raw.get("external_id")) not in (None, ""),
    )


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _text_chars(value: Any) -> int:
    """The characters of text in a raw row (its size in a batch), refusing text that cannot be
    stored: PostgreSQL keeps no NUL character in text or jsonb, and a lone surrogate (JSON's
    `\\ud800` without its pair) is no character at all, so it has no UTF-8 form."""
    chars = 0
    stack = [value]
    while stack:
        v = stack.pop()
        kind = type(v)  # the plain types json, csv and pyarrow give; exact checks (a hot loop)
        if kind is str:
            chars += len(v)
            if "\x00" in v:
                raise _BadRowError("a value holds a NUL character (\\u0000), which cannot be stored")
            if not v.isascii() and (bad := _SURROGATE_RE.search(v)):
                code = f"\\u{ord(bad.group()):04x}"
                raise _BadRowError(f"a value holds a lone surrogate ({code}), which is not valid Unicode text")
        elif kind is dict:
            stack.extend(v)
            stack.extend(v.values())
        elif kind is list:
            stack.extend(v)
        else:
            chars += 8
    return chars


def _int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise _BadRowError(f"{what} must be a whole number, got {value!r}") from None


def _responses(raw: dict[str, Any]) -> list[dict[str, str]]:
    if "responses" in raw:
        value = raw["responses"]
        if not isinstance(value, list):
            raise _BadRowError("responses must be a list")
        out = []
        for i, r in enumerate(value):
            if isinstance(r, str):
                out.append({"text": r, "model": ""})
            elif isinstance(r, dict) and "text" in r:
                out.append(
                    {"text": _str(r["text"], f"responses[{i}].text"), "model": _str(r.get("model") or "", "model", 200)}
                )
            else:
                raise _BadRowError(f"responses[{i}] must be text or {{text, model}}")
        return out
    if "response_a" in raw or "response_b" in raw:
        if "response_a" not in raw or "response_b" not in raw:
            raise _BadRowError("response_a and response_b must both be given")
        return [
            {"text": _str(raw["response_a"], "response_a"), "model": _str(raw.get("model_a") or "", "model_a", 200)},
            {"text": _str(raw["response_b"], "response_b"), "model": _str(raw.get("model_b") or "", "model_b", 200)},
        ]
    numbered = sorted((int(k.split("_", 1)[1]), k) for k in raw if re.fullmatch(r"response_[0-9]+", k))
    if numbered:
        if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
            raise _BadRowError("numbered responses must be response_1, response_2, ... without gaps")
        return [
            {"text": _str(raw[k], k), "model": _str(raw.get(f"model_{n}") or "", f"model_{n}", 200)}
            for n, k in numbered
        ]
    raise _BadRowError("missing responses: give response_a/response_b, responses, or chosen/rejected")


def _external_id(raw: dict[str, Any], prompt: str, texts: list[str]) -> str:
    value = raw.get("id", raw.get("external_id"))
    if value is not None and value != "":
        ext = _str(value, "id", 255).strip()
        if not ext:
            raise _BadRowError("id is blank")
        return ext
    digest = hashlib.sha256(json.dumps([prompt, texts], ensure_ascii=False).encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _labels(raw: dict[str, Any], annotator: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if "judgments" in raw:
        judgments = raw["judgments"]
        if not isinstance(judgments, list):
            raise _BadRowError("judgments must be a list")
        for i, j in enumerate(judgments):
            if not isinstance(j, dict):
                raise _BadRowError(f"judgments[{i}] must be an object")
            name = _str(j.get("annotator", f"{DEFAULT_ANNOTATOR}-{i + 1}"), f"judgments[{i}].annotator", 200)
            out.append((name, {k: v for k, v in j.items() if k != "annotator"}))
    payload: dict[str, Any] = {}
    label = raw.get("label", raw.get("preference"))
    if label is not None and label != "":
        choice = _LABELS.get(str(label).strip().lower())
        if choice is None:
            raise _BadRowError(f"label must be A, B or tie, got {label!r}")
        default = 0 if choice == "tie" else 1
        payload["pairwise"] = {"choice": choice, "strength": _int(raw.get("strength", default), "strength")}
    for key in ("ranking", "rubric", "spans"):
        if key in raw:
            payload[key] = raw[key]
    if "justification" in raw:
        payload["justification"] = _str(raw["justification"], "justification")
    if payload:
        out.append((annotator, payload))
    return out


def check_row(row: ParsedRow, schema: JudgmentSchema) -> list[tuple[str, dict[str, Any]]]:
    """Check the item and its labels against the project's schema; return canonical payloads.

    Labels (and gold answers) are checked for consistency, not completeness: what a project asks
    of its annotators (a justification, every rubric aspect) does not refuse a labeled dataset
    made without it."""
    problem = schema.response_count_error(len(row.responses))
    if problem:
        raise _BadRowError(problem)
    texts = [r["text"] for r in row.responses]
    canonical = []
    seen = set()
    for name, payload in row.judgments:
        if name in seen:
            raise _BadRowError(f"annotator {name!r} judges this item twice")
        seen.add(name)
        try:
            parsed = schema.validate_payload(payload, texts, complete=False)
        except PayloadError as exc:
            raise _BadRowError(f"label by {name!r}: {exc}") from None
        canonical.append((name, parsed.model_dump(exclude_none=True)))
    if row.gold_answer is not None:
        try:
            gold = schema.validate_payload(row.gold_answer, texts, complete=False)
            row.gold_answer = gold.model_dump(exclude_none=True)
        except PayloadError as exc:
            raise _BadRowError(f"gold_answer: {exc}") from None
    return canonical


# ---------------------------------------------------------------------------------------------
# Writing


def import_items(
    *,
    project: Project,
    fileobj: IO[bytes],
    fmt: str | None = None,
    import_job_id: int | None = None,
    batch_size: int | None = None,
    max_errors: int = 50,
) -> ImportResult:
    """Import every row of `fileobj` into `project`, all or nothing. Raises ImportRefused."""
    batch_size = batch_size or settings.IMPORT_BATCH_SIZE
    schema = project.judgment_schema
    fmt, rows = open_rows(fileobj, fmt)
    unit = "row" if fmt == "parquet" else "element" if fmt == "json" else "line"
    result = ImportResult(format=fmt)
    errors: list[RowError] = []
    labelers: dict[str, Labeler] = {}
    with transaction.atomic():
        judgments_before = Judgment.objects.filter(item__project=project).count()
        first_lines = _FirstLines(unit)
        checked = _checked_rows(rows, schema, unit, errors, result, max_errors)
        for batch in _batched(checked, batch_size, settings.IMPORT_BATCH_CHARS):
            errors.extend(first_lines.repeats([row for row, _ in batch]))
            if len(errors) >= max_errors:
                raise ImportRefused(_by_line(errors)[:max_errors], result.rows_read, truncated=True)
            if not errors:
                _write_batch(project, batch, labelers, import_job_id, result)
        if errors:
            raise ImportRefused(_by_line(errors), result.rows_read)
        if result.rows_read == 0:
            raise ImportRefused([RowError(0, "the file holds no rows")])
        result.judgments_created = Judgment.objects.filter(item__project=project).count() - judgments_before
    return result


Checked = tuple[ParsedRow, list[tuple[str, dict[str, Any]]]]


def _checked_rows(
    rows: Iterable[tuple[int, dict[str, Any] | RowError]],
    schema: JudgmentSchema,
    unit: str,
    errors: list[RowError],
    result: ImportResult,
    max_errors: int,
) -> Iterator[Checked]:
    """The good rows, normalized and checked; the bad ones go to `errors` (refused past `max_errors`)."""
    for line, raw in rows:
        result.rows_read += 1
        if isinstance(raw, RowError):
            errors.append(raw)
        else:
            try:
                row = normalize_row(raw, line)
                labels = check_row(row, schema)
            except _BadRowError as exc:
                errors.append(RowError(line, str(exc), unit))
            else:
                yield row, labels
                continue
        if len(errors) >= max_errors:
            raise ImportRefused(_by_line(errors)[:max_errors], result.rows_read, truncated=True)


def _by_line(errors: list[RowError]) -> list[RowError]:
    return sorted(errors, key=lambda e: e.line)


def _batched(rows: Iterable[Checked], size: int, max_chars: int) -> Iterator[list[Checked]]:
    """Batches of at most `size` rows and at most `max_chars` characters of text (a row longer
    than that is a batch of its own): a few thousand long rows would otherwise hold gigabytes
    before they are written."""
    batch: list[Checked] = []
    chars = 0
    for row in rows:
        if batch and (len(batch) >= size or chars + row[0].chars > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(row)
        chars += row[0].chars
    if batch:
        yield batch


class _FirstLines:
    """The line on which each id given in the file first appeared, so that an id given twice is
    refused naming both lines (rows without an id take one from their content: an exact repeat is
    the same item, counted as already present). On PostgreSQL the ids wait in a temporary table,
    so a file of millions of rows holds no growing set in Python; elsewhere in a dict."""

    _TABLE = "prefloop_import_first_line"

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.conn = connections[router.db_for_write(Item)]
        self.local: dict[str, int] | None = None
        if self.conn.vendor != "postgresql":
            self.local = {}
            return
        with self.conn.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {self._TABLE} "
                "(external_id text PRIMARY KEY, line integer NOT NULL) ON COMMIT DROP"
            )
            cursor.execute(f"TRUNCATE {self._TABLE}")  # left by an earlier import in the same transaction

    def repeats(self, rows: list[ParsedRow]) -> list[RowError]:
        here: dict[str, int] = {}
        for row in rows:
            if row.id_given:
                here.setdefault(row.external_id, row.line)
        first = {**here, **self._earlier(here)}
        return [
            RowError(row.line, f"id {row.external_id!r} is also on {self.unit} {first[row.external_id]}", self.unit)
            for row in rows
            if row.id_given and first[row.external_id] != row.line
        ]

    def _earlier(self, here: dict[str, int]) -> dict[str, int]:
        """Of these ids, those seen in earlier batches, with their first line; records the rest."""
        if self.local is not None:
            earlier = {ext: self.local[ext] for ext in here if ext in self.local}
            self.local.update((ext, line) for ext, line in here.items() if ext not in earlier)
            return earlier
        if not here:
            return {}
        with self.conn.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {self._TABLE} (external_id, line) SELECT * FROM unnest(%s::text[], %s::integer[]) "  # noqa: S608 - a constant name
                "ON CONFLICT (external_id) DO NOTHING RETURNING external_id",
                [list(here), list(here.values())],
            )
            added = {ext for (ext,) in cursor.fetchall()}
            clashes = [ext for ext in here if ext not in added]
            if not clashes:
                return {}
            cursor.execute(
                f"SELECT external_id, line FROM {self._TABLE} WHERE external_id = ANY(%s::text[])",  # noqa: S608
                [clashes],
            )
            return dict(cursor.fetchall())


def _item_ids(project: Project, external_ids: list[str]) -> dict[str, int]:
    """{external id: item id} of the project's items among `external_ids`.

    On PostgreSQL one probe of the unique (project, external_id) index per id, written so the
    planner cannot choose otherwise: inside an import's transaction the table's statistics are
    those of before it (or none), so an `IN (...)` list was planned as a scan of every item of the
    project, and each batch of a million-row import took longer than the one before."""
    conn = connections[router.db_for_write(Item)]
    if not external_ids:
        return {}
    if conn.vendor != "postgresql":
        found = Item.objects.filter(project=project, external_id__in=external_ids).order_by()
        return dict(found.values_list("external_id", "id"))
    table = Item._meta.db_table
    sql = (
        f"SELECT e.external_id, (SELECT t.id FROM {table} t WHERE t.project_id = %s AND t.external_id = e.external_id) "  # noqa: S608
        "FROM unnest(%s::text[]) AS e(external_id)"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [project.id, external_ids])
        return {ext: pk for ext, pk in cursor.fetchall() if pk is not None}


def _write_batch(
    project: Project,
    parsed: list[tuple[ParsedRow, list[tuple[str, dict[str, Any]]]]],
    labelers: dict[str, Labeler],
    import_job_id: int | None,
    result: ImportResult,
) -> None:
    unique: dict[str, tuple[ParsedRow, list[tuple[str, dict[str, Any]]]]] = {}
    for row, judgments in parsed:
        unique.setdefault(row.external_id, (row, judgments))
    ids = _item_ids(project, list(unique))
    result.items_existing += len(ids) + (len(parsed) - len(unique))
    now = timezone.now()
    new_items: list[dict[str, Any]] = [
        {
            "uuid": uuid.uuid4(),
            "project_id": project.id,
            "external_id": ext,
            "prompt": row.prompt,
            "prompt_messages": row.prompt_messages,
            "responses": row.responses,
            "num_responses": len(row.responses),
            "metadata": row.metadata,
            "split": row.split,
            "status": Item.Status.OPEN,  # imported labels do not fill the overlap (LabelSource)
            "human_count": 0,
            "leased_count": 0,
            "priority": 0.0,
            "route": Item.Route.HUMAN,
            "route_info": {},
            "is_gold": row.gold_answer is not None,
            "gold_answer": row.gold_answer,
            "import_job_id": import_job_id,
            "created_at": now,
        }
        for ext, (row, judgments) in unique.items()
        if ext not in ids
    ]
    if new_items:
        fast_insert(Item, new_items)
        ids.update(_item_ids(project, [i["external_id"] for i in new_items]))
    result.items_created += len(new_items)
    new_ids = {i["external_id"] for i in new_items}
    on_new_items: list[dict[str, Any]] = []
    on_existing_items: list[dict[str, Any]] = []
    for ext, (_, judgments) in unique.items():
        for name, payload in judgments:
            judgment = {
                "uuid": uuid.uuid4(),
                "item_id": ids[ext],
                "labeler_id": _imported_labeler(project, name, labelers).id,
                "payload": payload,
                "schema_version": project.schema_version,
                "raw_output": "",
                "created_at": now,
            }
            (on_new_items if ext in new_ids else on_existing_items).append(judgment)
    fast_insert(Judgment, on_new_items)  # a new item has no judgment yet, and annotators are unique per row
    if on_existing_items:
        Judgment.objects.bulk_create([Judgment(**j) for j in on_existing_items], ignore_conflicts=True)
        recount_human_judgments(project, [j["item_id"] for j in on_existing_items])


def recount_human_judgments(project: Project, item_ids: list[int]) -> None:
    """Set human_count (and done-ness) of these items from their annotators' judgments (imported
    labels are not human work: they never fill the overlap)."""
    human = Count("judgments", filter=source_q(LabelSource.HUMAN, labeler="judgments__labeler__"))
    for item in Item.objects.filter(id__in=item_ids).annotate(n=human):
        status = item.status
        if status == Item.Status.OPEN and item.n >= project.overlap:
            status = Item.Status.DONE
        Item.objects.filter(id=item.id).update(human_count=item.n, status=status)


def fast_insert(model: type[models.Model], rows: list[dict[str, Any]]) -> None:
    """Insert new rows, given as {field attname: value}, with PostgreSQL's COPY.

    Twice as fast as bulk_create for wide text/JSON rows; other databases get bulk_create.
    Every row names the same fields, defaults included, and must not conflict with an existing
    row (COPY has no ON CONFLICT). No primary keys come back: select them by a natural key.
    """
    if not rows:
        return
    conn = connections[router.db_for_write(model)]
    if conn.vendor != "postgresql":
        model._default_manager.bulk_create([model(**row) for row in rows])
        return
    from psycopg.types.json import Jsonb

    by_attname = {f.attname: f for f in model._meta.concrete_fields}
    fields = [by_attname[name] for name in rows[0]]
    json_at = [i for i, f in enumerate(fields) if isinstance(f, models.JSONField)]
    columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
    with conn.cursor() as cursor, cursor.cursor.copy(f"COPY {model._meta.db_table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            values = list(row.values())
            for i in json_at:
                if values[i] is not None:
                    values[i] = Jsonb(values[i])
            copy.write_row(values)


def _imported_labeler(project: Project, name: str, cache: dict[str, Labeler]) -> Labeler:
    if name not in cache:
        cache[name], _ = Labeler.objects.get_or_create(
            project=project, kind=Labeler.Kind.IMPORTED, name=name, version=1, user=None
        )
    return cache[name]
