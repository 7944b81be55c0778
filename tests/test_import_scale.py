"""Imports at scale and at the edges: the per-batch id lookup probes the unique index instead of
scanning the project, a Parquet file with nested columns over several row groups reads, an id
given twice is refused naming both lines, a bad byte or a lone surrogate is reported on its own
line, and a batch is bounded by the text it holds as well as by its rows."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import annotation.importing as importing
from annotation.importing import ImportRefused, import_items
from annotation.models import Item, Judgment, Project
from tests.conftest import jsonl, pair_row


def _item_rows_read(plan: dict[str, Any]) -> int:
    """Rows of annotation_item that a plan's nodes read: returned by each loop, plus filtered out."""
    total = 0
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.get("Relation Name") == "annotation_item":
            loops = node.get("Actual Loops", 1)
            total += (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
            total += node.get("Rows Removed by Index Recheck", 0)
        stack.extend(node.get("Plans", []))
    return total


def test_the_batch_lookup_reads_only_the_batchs_items_not_the_whole_project(project: Project) -> None:
    """Inside the import's transaction the planner has no statistics of the rows it just wrote;
    an `external_id IN (...)` lookup was planned as a scan of the whole project, so every batch
    read every item imported before it (1,361 rows/s at a million rows)."""
    batch = 250
    rows = [pair_row(i, label="A") for i in range(4000)]
    with CaptureQueriesContext(connection) as queries:
        import_items(project=project, fileobj=jsonl(rows), batch_size=batch)
    lookups = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().upper().startswith("SELECT")
        and "annotation_item" in q["sql"]
        and "external_id" in q["sql"]
    ]
    assert len(lookups) >= 2 * (len(rows) // batch)  # existing items, then the new items' ids
    with connection.cursor() as cursor:
        for sql in lookups[-4:]:  # the last batches, with 3,500 items of the project already written
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            assert _item_rows_read(plan[0]["Plan"]) <= batch, json.dumps(plan, indent=1)[:3000]


def test_a_parquet_file_with_a_struct_column_over_several_row_groups_is_read(project: Project) -> None:
    rows = [
        pair_row(i, metadata={"category": f"c{i % 3}", "n": i}, extra={"a": {"len": i}, "tags": ["x", "y"]})
        for i in range(700)
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=300)  # batches straddle row groups
    assert pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.num_row_groups == 3
    buf.seek(0)
    result = import_items(project=project, fileobj=buf)
    assert (result.format, result.items_created) == ("parquet", 700)
    item = Item.objects.get(project=project, external_id="r650")
    assert item.metadata == {"category": "c2", "n": 650, "extra": {"a": {"len": 650}, "tags": ["x", "y"]}}


@pytest.mark.parametrize("batch_size", [100, 3])
def test_an_id_given_twice_in_a_file_is_refused_naming_both_lines(project: Project, batch_size: int) -> None:
    rows = [pair_row(1), pair_row(2), pair_row(1, label="B"), pair_row(3), pair_row(4), pair_row(5), pair_row(2)]
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=jsonl(rows), batch_size=batch_size)
    assert [str(e) for e in refused.value.errors] == [
        "line 3: id 'r1' is also on line 1",
        "line 7: id 'r2' is also on line 2",
    ]
    assert not Item.objects.filter(project=project).exists()


def test_a_row_repeated_without_an_id_is_one_item(project: Project) -> None:
    row = {"prompt": "same", "response_a": "x", "response_b": "y"}
    result = import_items(project=project, fileobj=jsonl([row, row]))
    assert (result.items_created, result.items_existing) == (1, 1)


def test_an_id_already_in_the_project_is_still_left_as_it_is(project: Project) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    result = import_items(project=project, fileobj=jsonl([pair_row(1, prompt="Changed?"), pair_row(2)]))
    assert (result.items_created, result.items_existing) == (1, 1)
    assert Item.objects.get(external_id="r1").prompt == "Question 1?"


@pytest.mark.parametrize("lines_before", [1, 5000])
def test_a_latin_1_byte_is_reported_on_its_own_line(project: Project, lines_before: int) -> None:
    good = b"".join((json.dumps(pair_row(i)) + "\n").encode() for i in range(lines_before))
    bad = '{"id": "x", "prompt": "café", "response_a": "a", "response_b": "b"}\n'.encode("latin-1")
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(good + bad + good[:200]))
    assert [str(e) for e in refused.value.errors] == [
        f"line {lines_before + 1}: the file is not valid UTF-8 text (Latin-1 or Windows-1252? save it as UTF-8)"
    ]
    assert not Item.objects.filter(project=project).exists()


def test_a_latin_1_byte_in_csv_is_reported_on_its_physical_line(project: Project) -> None:
    body = 'id,prompt,response_a,response_b\nr1,"two\nlines",a,b\nr2,caf\xe9,a,b\n'.encode("latin-1")
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(body))
    assert [e.line for e in refused.value.errors] == [4]


def test_a_lone_surrogate_is_refused_on_its_line(project: Project) -> None:
    body = (
        json.dumps(pair_row(1)) + "\n" + '{"id": "r2", "prompt": "x\\ud800y", "response_a": "a", "response_b": "b"}\n'
    )
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(body.encode()))
    assert [str(e) for e in refused.value.errors] == [
        "line 2: a value holds a lone surrogate (\\ud800), which is not valid Unicode text"
    ]
    assert not Item.objects.filter(project=project).exists()


def test_a_batch_holds_at_most_the_configured_text(project: Project, settings, monkeypatch) -> None:
    """Long rows close a batch early: 2,000 rows of 1 MB each would be gigabytes in one batch."""
    settings.IMPORT_BATCH_CHARS = 100_000
    rows = [pair_row(i, prompt=f"{i} " + "long " * (4000 + 1000 * (i % 5)), label="A") for i in range(40)]
    written: list[tuple[int, int]] = []
    write = importing._write_batch

    def recording(project: Project, batch: list[Any], *args: Any) -> None:
        written.append(
            (len(batch), sum(len(row.prompt) + sum(len(r["text"]) for r in row.responses) for row, _ in batch))
        )
        write(project, batch, *args)

    monkeypatch.setattr(importing, "_write_batch", recording)
    result = import_items(project=project, fileobj=jsonl(rows))
    assert (result.items_created, result.judgments_created) == (40, 40)
    assert sum(n for n, _ in written) == 40
    assert len(written) > 1 and all(chars <= 100_000 for _, chars in written), written
    assert Judgment.objects.filter(item__project=project).count() == 40


_READ_PARQUET = """
import os, sys
import django
django.setup()
from annotation.importing import open_rows

def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024

before = peak_mb()
with open(sys.argv[1], "rb") as fh:
    fmt, rows = open_rows(fh)
    n = sum(1 for _ in rows)
print(fmt, n, round(peak_mb() - before))
"""


def _parquet_peak_growth_mb(path: Any) -> tuple[int, int]:
    """Read every row of the file in a fresh interpreter; return (rows, growth of its peak RSS)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    done = subprocess.run(
        [sys.executable, "-c", _READ_PARQUET, str(path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fmt, rows, growth = done.stdout.split()
    assert fmt == "parquet"
    return int(rows), int(growth)


def test_parquet_memory_is_flat_in_the_row_group_size(tmp_path: Any) -> None:
    """pyarrow and pandas write one row group of up to 1Mi rows by default. Unique texts fill a
    column's dictionary page and the writer falls back to plain pages; read as dictionaries, Arrow
    grew one dictionary over the whole row group and copied it into every batch (about 950 MB for
    these 60,000 rows). The reader's peak must not depend on how many rows a row group holds."""
    import os

    n = 60_000
    text = os.urandom(n * 1200).hex()  # unique, poorly compressible text: 2,400 characters a row
    rows = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "prompt": [text[i * 2400 : i * 2400 + 600] for i in range(n)],
            "response_a": [text[i * 2400 + 600 : i * 2400 + 1500] for i in range(n)],
            "response_b": [text[i * 2400 + 1500 : (i + 1) * 2400] for i in range(n)],
            "metadata": [{"category": ("chat", "code")[i % 2], "n": i} for i in range(n)],
        }
    )
    del text
    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    pq.write_table(rows, one)  # the defaults: one row group for these rows
    pq.write_table(rows, many, row_group_size=1000)
    assert pq.read_metadata(one).num_row_groups == 1 and pq.read_metadata(many).num_row_groups == 60
    del rows
    many_rows, many_mb = _parquet_peak_growth_mb(many)
    one_rows, one_mb = _parquet_peak_growth_mb(one)
    assert (one_rows, many_rows) == (n, n)
    # The row group holds 144 MB of text: reading it must not cost even that once over reading
    # 60 small ones (the allocator keeps some freed page buffers: 55 to 75 MB more here).
    assert one_mb <= many_mb + 120, (one_mb, many_mb)
