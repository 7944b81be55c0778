"""The dataset card on an export's page: its counts are the rows of the files in the bundle, it
says which items were left out and why, with the filters, and the card's markdown is rendered
without letting HTML from project names, descriptions or licenses through."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Item
from curation.models import ExportSnapshot
from curation.services import curation_action_apply, export_create, export_run
from tests.conftest import jsonl
from tests.test_export import PAIRWISE, import_as_annotators, pair_rows

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(autouse=True)
def _exports_in_tmp(settings: Any, tmp_path: Path) -> None:
    settings.VAR_DIR = tmp_path / "var"


def _export(project: Any, curator: Any, **filters: Any) -> ExportSnapshot:
    snapshot = export_create(
        project=project, user=curator, filters=filters, formats=["pairs", "raw"], license=EVIL, enqueue=False
    )
    done = export_run(snapshot_id=snapshot.id)
    assert done is not None and done.status == "done", done and done.error
    return done


def _rows_in_bundle(snapshot: ExportSnapshot) -> dict[tuple[str, str, str], int]:
    """{(configuration, split, kind): rows} counted in the zip's data files themselves."""
    out = {}
    with zipfile.ZipFile(snapshot.bundle_file) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) != 3:
                continue
            config, (split, kind) = parts[1], parts[2].rsplit(".", 1)
            data = zf.read(name)
            if kind == "parquet":
                out[(config, split, kind)] = pq.read_table(io.BytesIO(data)).num_rows
            elif kind == "jsonl":
                out[(config, split, kind)] = len([line for line in data.decode().splitlines() if line.strip()])
    return out


def _card_rows(html: str) -> dict[tuple[str, str], int]:
    table = re.search(r'<table data-testid="card-rows">(.*?)</table>', html, re.S).group(1)
    found = {}
    for config, cells in re.findall(r'<tr data-config="([^"]+)">(.*?)</tr>', table, re.S):
        for split, n in re.findall(r'<td data-split="([^"]+)">([\d,]+)</td>', cells):
            found[(config, split)] = int(n.replace(",", ""))
    return found


@pytest.fixture
def exported(make_project: Any, curator: Any) -> tuple[Any, ExportSnapshot]:
    project = make_project("cardp", schema=PAIRWISE, curator=curator, description=f"About {EVIL}")
    project.name = f"Card {EVIL}"
    project.save(update_fields=["name"])
    import_as_annotators(project=project, fileobj=jsonl(pair_rows()))
    curation_action_apply(item=Item.objects.get(project=project, external_id="r0"), actor=curator, action="drop")
    return project, _export(project, curator, min_agreement=0.5)


def test_the_card_counts_are_the_files_rows(exported, curator) -> None:
    _, snapshot = exported
    c = Client()
    c.force_login(curator)
    html = c.get(reverse("curation:export", args=[snapshot.code])).content.decode()
    in_files = _rows_in_bundle(snapshot)
    card = _card_rows(html)
    assert card, "the card shows no rows table"
    # Every configuration and split on the card is a file with that many rows (JSONL and Parquet alike).
    for (config, split), n in card.items():
        assert in_files[(config, split, "jsonl")] == n, (config, split)
        assert in_files[(config, split, "parquet")] == n, (config, split)
    assert {(c, s) for c, s, _ in in_files} == set(card)  # and every file is on the card
    # r2 is the one pair left (r0 dropped, r1 a tie, r3 undecided); raw keeps r1-r3's 2 + 1 + 2 judgments.
    assert card[("pairs", "test")] == 1 and sum(n for (c, _), n in card.items() if c == "raw") == 5
    exported_n = int(re.search(r'data-testid="card-exported">(\d+)<', html).group(1))
    considered = int(re.search(r'data-testid="card-considered">(\d+)<', html).group(1))
    assert (exported_n, considered) == (snapshot.counts["items_exported"], snapshot.counts["items_considered"])
    assert (exported_n, considered) == (3, 4)


def test_the_card_says_what_was_left_out_and_why_with_the_filters(exported, curator) -> None:
    _, snapshot = exported
    c = Client()
    c.force_login(curator)
    html = c.get(reverse("curation:export", args=[snapshot.code])).content.decode()
    left_out = re.search(r'<table data-testid="card-left-out">(.*?)</table>', html, re.S).group(1)
    assert re.search(
        r'<tr data-reason="dropped"><td class="mono">dropped</td><td>1</td><td>dropped by a curator', left_out
    )
    not_written = re.search(r'<table data-testid="card-not-written">(.*?)</table>', html, re.S).group(1)
    assert "pairs:tie" in not_written and "the consensus is a tie" in not_written
    assert "pairs:undecided" in not_written
    filters = re.search(r'<table data-testid="card-filters">(.*?)</table>', html, re.S).group(1)
    assert '<td class="mono">min_agreement</td><td class="mono">0.5</td>' in filters
    text = re.search(r'<article class="card-text" data-testid="card-text">(.*?)</article>', html, re.S).group(1)
    assert "<h2>Counts</h2>" in text and "<table>" in text  # the markdown rendered, tables included
    assert "Items left out: dropped 1." in text


def test_no_html_from_user_strings_gets_through(exported, curator) -> None:
    _, snapshot = exported
    c = Client()
    c.force_login(curator)
    html = c.get(reverse("curation:export", args=[snapshot.code])).content.decode()
    card = html[html.index('data-testid="card"') :]
    assert "<script" not in card and "<img" not in card  # neither a tag from the strings nor one markdown made
    assert "&lt;script&gt;" in card and "onerror=alert(1)&gt;" in card  # shown as text
    # The card on the page is the file's text: the README in the bundle holds the raw strings.
    with zipfile.ZipFile(snapshot.bundle_file) as zf:
        readme = zf.read(next(n for n in zf.namelist() if n.endswith("/README.md"))).decode()
    assert EVIL in readme


def test_the_card_arrives_with_the_last_status_poll_and_survives_a_lost_folder(exported, curator) -> None:
    project, snapshot = exported
    c = Client()
    c.force_login(curator)
    poll = c.get(reverse("curation:export", args=[snapshot.code]), HTTP_HX_REQUEST="true").content.decode()
    assert poll.lstrip().startswith('<div id="export-status"') and 'data-testid="card-text"' in poll
    (snapshot.folder / "README.md").unlink()  # read from the bundle then
    html = c.get(reverse("curation:export", args=[snapshot.code])).content.decode()
    assert 'data-testid="card-text"' in html and "<h2>Counts</h2>" in html
    snapshot.bundle_file.unlink()
    html = c.get(reverse("curation:export", args=[snapshot.code])).content.decode()
    assert 'data-testid="card-missing"' in html and _card_rows(html)  # the record's figures remain
    pending = export_create(project=project, user=curator, filters={}, formats=["raw"], enqueue=False)
    page = c.get(reverse("curation:export", args=[pending.code])).content.decode()
    assert 'data-testid="card"' not in page
    assert json.dumps(pending.filters)  # a pending export has a record and no card yet
