"""Bad uploads, through the upload page and through the API: too large, a gzip bomb, a Parquet
file that decompresses past the cap, the wrong encoding, binary garbage, an archive or image named
.jsonl, malformed JSON lines, an empty file, a CSV with a 10 MB field. Each is refused with an
error that names the problem, and nothing of it is stored: no items, no judgments, no imported
labelers."""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import ImportJob, Item, Judgment, Labeler, Project
from annotation.services import import_job_run
from tests.test_api import token_for

ROW = {"id": "1", "prompt": "Is this fine?", "response_a": "yes", "response_b": "no", "label": "A"}
GOOD_LINE = (json.dumps(ROW) + "\n").encode()


def _gzip_of_zeros(total: int) -> bytes:
    """`total` zero bytes, gzip-compressed (about 1,000 to 1), made in slices."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(total // len(chunk))]
    return b"".join([*parts, c.flush()])


@pytest.fixture(scope="module")
def zero_bomb() -> bytes:
    return _gzip_of_zeros(1 << 30)  # 1 GiB of zeros in about 1 MB


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("items.jsonl", GOOD_LINE * 10)
    return buf.getvalue()


@cache
def _text_bomb() -> bytes:
    """Valid rows that decompress past the cap the test sets (1 MiB): about 24 MB of lines."""
    lines = b"".join((json.dumps({**ROW, "id": str(i)}) + "\n").encode() for i in range(300_000))
    return gzip.compress(lines, compresslevel=6)


@cache
def _one_huge_line() -> bytes:
    """A gzip stream of one 64 MiB JSON line (over the line cap), without a newline."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [c.compress(b'{"prompt": "')] + [c.compress(b"a" * (1 << 20)) for _ in range(64)]
    return b"".join([*parts, c.flush()])


@cache
def _parquet_bomb() -> bytes:
    """A Parquet file of a few kilobytes whose rows come to about 8 MB uncompressed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**ROW, "id": str(i), "prompt": "a" * 40_000} for i in range(200)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd", use_dictionary=False)
    assert len(buf.getvalue()) < 100_000
    return buf.getvalue()


@cache
def _parquet_dictionary_bomb() -> bytes:
    """One 40,000-character prompt and two long responses in a list, each stored once in a
    dictionary and referenced by 4,000 rows: about 500 MB of text once decoded, while the file's
    metadata counts the dictionary once (under the cap)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"prompt": "a" * 40_000, "responses": ["b" * 40_000, "c" * 40_000]}
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**row, "id": str(i)} for i in range(4000)]), buf, compression="zstd")
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    assert sum(meta.row_group(k).total_byte_size for k in range(meta.num_row_groups)) < 1 << 20
    return buf.getvalue()


def _parquet_corrupt() -> bytes:
    """A small Parquet file whose footer is intact but whose pages are garbage: the metadata reads,
    the rows do not."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**ROW, "id": str(i)} for i in range(50)]), buf, compression="zstd")
    data = bytearray(buf.getvalue())
    footer = int.from_bytes(data[-8:-4], "little")
    for k in range(4, len(data) - footer - 8):
        data[k] ^= 0x5A
    return bytes(data)


@cache
def _huge_csv_field() -> bytes:
    return b"prompt,response_a,response_b,notes\nq,a,b," + b"x" * (10 * 1024 * 1024) + b"\n"


# (name, content builder, a fragment of the error) for files that reach the importer.
BAD_FILES: list[tuple[str, Any, str]] = [
    ("gzip-bomb-of-zeros", None, "the file is binary (it holds NUL bytes)"),
    ("gzip-bomb-of-rows", _text_bomb, "the file decompresses to more than 1,048,576 bytes"),
    ("parquet-bomb", _parquet_bomb, "the file decompresses to more than 1,048,576 bytes"),
    ("parquet-dictionary-bomb", _parquet_dictionary_bomb, "the file decompresses to more than 1,048,576 bytes"),
    ("parquet-corrupt-pages", lambda: _parquet_corrupt(), "not a readable Parquet file"),
    ("gzip-one-huge-line", _one_huge_line, "line 1: the line is longer than 33,554,432 characters"),
    (
        "latin-1",
        lambda: '{"prompt": "café", "response_a": "a", "response_b": "b"}\n'.encode("latin-1"),
        "not valid UTF-8",
    ),
    (
        "latin-1-on-line-2",
        lambda: GOOD_LINE + '{"prompt": "café", "response_a": "a", "response_b": "b"}\n'.encode("latin-1"),
        "line 2: the file is not valid UTF-8",
    ),
    (
        "lone-surrogate",
        lambda: GOOD_LINE + b'{"prompt": "x\\ud800y", "response_a": "a", "response_b": "b"}\n',
        "line 2: a value holds a lone surrogate (\\ud800)",
    ),
    ("utf-16", lambda: GOOD_LINE.decode().encode("utf-16"), "UTF-16 text; save it as UTF-8"),
    ("utf-16-no-bom", lambda: GOOD_LINE.decode().encode("utf-16-le"), "UTF-16 text (without a byte-order mark)"),
    ("binary-garbage", lambda: random.Random(7).randbytes(20_000), "the file is binary"),
    ("zip-named-jsonl", _zip, "the file is a ZIP archive"),
    ("png-named-jsonl", _png, "the file is a PNG image"),
    (
        "malformed-json-lines",
        lambda: GOOD_LINE + b'{"prompt": "p", "response_a": "a",,}\n' + b"[1, 2]\n",
        "line 2: invalid JSON",
    ),
    ("nul-in-a-value", lambda: b'{"prompt": "a\\u0000b", "response_a": "a", "response_b": "b"}\n', "NUL character"),
    ("csv-10-mb-field", _huge_csv_field, "a field is longer than 4,000,000 characters"),
    ("only-whitespace", lambda: b"\n\n   \n", "the file is empty"),
]


def _content(builder: Any, zero_bomb: bytes) -> bytes:
    return zero_bomb if builder is None else builder()


def _nothing_stored(project: Project) -> None:
    assert Item.objects.filter(project=project).count() == 0
    assert Judgment.objects.filter(item__project=project).count() == 0
    assert not Labeler.objects.filter(project=project).exists()


def _upload(name: str, content: bytes) -> io.BytesIO:
    f = io.BytesIO(content)
    f.name = name
    return f


def _web(project: Project, curator: Any, content: bytes, name: str = "items.jsonl") -> Any:
    c = Client()
    c.force_login(curator)
    return c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": _upload(name, content)})


def _api(project: Project, curator: Any, content: bytes, name: str = "items.jsonl") -> Any:
    c = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    return c.post(f"/api/v1/projects/{project.slug}/imports", {"file": _upload(name, content)})


@pytest.mark.parametrize("channel", ["web", "api"])
@pytest.mark.parametrize(("case", "builder", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_refused_with_its_reason_and_stores_nothing(
    project: Project, curator, settings, zero_bomb, channel: str, case: str, builder: Any, message: str
) -> None:
    settings.IMPORT_MAX_DECOMPRESSED_BYTES = 1 << 20
    if case in ("gzip-bomb-of-zeros", "gzip-one-huge-line"):
        settings.IMPORT_MAX_DECOMPRESSED_BYTES = 1 << 32  # the default's order: other guards stop these
    content = _content(builder, zero_bomb)
    response = (_web if channel == "web" else _api)(project, curator, content)
    assert response.status_code in (302, 202), response.content[:300]
    job = ImportJob.objects.get(project=project)
    stored = Path(job.file.path)
    assert stored.exists()
    import_job_run(job_id=job.id)  # what the worker does
    job.refresh_from_db()
    assert job.status == "failed"
    assert any(message in e for e in job.errors), job.errors
    _nothing_stored(project)
    assert not job.file and not stored.exists()  # the refused file is not kept on disk
    if channel == "web":
        c = Client()
        c.force_login(curator)
        page = c.get(reverse("annotation:import_job", args=[job.uuid])).content.decode()
        assert message.replace("'", "&#x27;") in page
    else:
        polled = Client(headers={"Authorization": f"Bearer {token_for(curator)}"}).get(f"/api/v1/imports/{job.uuid}")
        assert polled.json()["status"] == "failed" and any(message in e for e in polled.json()["errors"])


def test_a_file_over_the_upload_limit_is_refused_before_it_is_stored(project: Project, curator, settings) -> None:
    settings.IMPORT_MAX_UPLOAD_BYTES = 1000
    content = GOOD_LINE * 40  # about 2,700 bytes
    web = _web(project, curator, content)
    assert web.status_code == 400
    assert f"The file is {len(content):,} bytes; the limit is 1,000." in web.content.decode()
    api = _api(project, curator, content)
    assert api.status_code == 413 and "larger than 1,000 bytes" in api.json()["detail"]
    far_over = _web(project, curator, GOOD_LINE * 40_000)  # megabytes: refused before the body is read
    assert far_over.status_code == 413 and "IMPORT_MAX_UPLOAD_BYTES" in far_over.content.decode()
    assert not ImportJob.objects.exists()
    _nothing_stored(project)


def test_an_empty_file_is_refused(project: Project, curator) -> None:
    web = _web(project, curator, b"")
    assert web.status_code == 400 and "The submitted file is empty." in web.content.decode()
    assert not ImportJob.objects.exists()
    api = _api(project, curator, b"")
    job = ImportJob.objects.get(uuid=api.json()["id"])
    import_job_run(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.errors) == ("failed", ["the file is empty"])
    _nothing_stored(project)


def test_a_good_file_still_imports_after_all_the_guards(project: Project, curator) -> None:
    """The guards cost nothing to honest files: gzip, CSV and a UTF-8 BOM go through."""
    for name, content in (
        ("a.jsonl.gz", gzip.compress(GOOD_LINE)),
        ("b.csv", "\ufeffid,prompt,response_a,response_b\n2,q,é,b\n".encode()),
    ):
        _web(project, curator, content, name=name)
    for job in ImportJob.objects.all():
        import_job_run(job_id=job.id)
        job.refresh_from_db()
        assert job.status == "succeeded", job.errors
    assert Item.objects.filter(project=project).count() == 2


def test_a_dictionary_encoded_batch_is_sized_as_it_decodes() -> None:
    """The size the Parquet cap counts is the decoded one, not the dictionary's (tens of kilobytes
    here, for 20 MB of text)."""
    import pyarrow.parquet as pq

    from annotation.importing import _decoded_bytes

    content = _parquet_dictionary_bomb()
    meta = pq.ParquetFile(io.BytesIO(content)).metadata
    paths = [meta.schema.column(k).path for k in range(len(meta.schema))]
    encoded = next(pq.ParquetFile(io.BytesIO(content), read_dictionary=paths).iter_batches(batch_size=256))
    plain = next(pq.ParquetFile(io.BytesIO(content)).iter_batches(batch_size=256))
    assert sum(c.nbytes for c in encoded.columns) < 200_000  # what the dictionaries hold
    text = 256 * 3 * 40_000
    assert text < sum(_decoded_bytes(c) for c in encoded.columns) <= plain.nbytes + 10_000
