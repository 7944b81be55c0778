"""Span offsets round-trip exactly, on the QA-Feedback span errors of Fine-Grained RLHF:
through the importer for all 953 spans, and through the browser (mouse selection) for a sample."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from annotation.importing import import_items
from annotation.models import Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import QA_FILE, jsonl, login, needs_shared
from tests.test_browser_annotate import mouse_select

pytestmark = [needs_shared(QA_FILE), pytest.mark.shared_data]

CATEGORIES = ["Irrelevant", "Wrong-Grounding", "Unverifiable", "Redundant", "Incoherent"]
SCHEMA = {"spans": {"categories": [{"name": c} for c in CATEGORIES]}}


def _entries() -> list[dict[str, Any]]:
    with gzip.open(QA_FILE, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _rows(entries: list[dict[str, Any]], with_labels: bool) -> list[dict[str, Any]]:
    rows = []
    for n, e in enumerate(entries):
        row: dict[str, Any] = {"id": f"qa-{n}", "prompt": e["question"], "responses": [e["prediction 1"]]}
        if with_labels:
            row["annotator"] = "qa-feedback"
            row["spans"] = [
                {"response": 0, "start": x["start"], "end": x["end"], "category": x["error type"]}
                for x in e["feedback"]["errors"]
            ]
        rows.append(row)
    return rows


def test_all_qa_feedback_spans_import_and_read_back_exactly(make_project) -> None:
    entries = _entries()
    project = make_project("qa", schema=SCHEMA)
    import_items(project=project, fileobj=jsonl(_rows(entries, with_labels=True)))
    checked = 0
    for j in Judgment.objects.select_related("item"):
        n = int(j.item.external_id.split("-")[1])
        original = entries[n]["prediction 1"]
        assert j.item.responses[0]["text"] == original
        expected = [(x["start"], x["end"], x["error type"]) for x in entries[n]["feedback"]["errors"]]
        got = [(s["start"], s["end"], s["category"]) for s in j.payload["spans"]]
        assert got == expected
        for s in j.payload["spans"]:
            assert original[s["start"] : s["end"]] == j.item.responses[0]["text"][s["start"] : s["end"]]
            checked += 1
    assert checked == 953


@pytest.mark.django_db(transaction=True)
def test_qa_feedback_spans_marked_with_the_mouse_are_stored_exactly(page, make_project, make_user) -> None:
    entries = _entries()
    # A sample with several spans each, one of them with non-ASCII text.
    sample = [e for e in entries if len(e["feedback"]["errors"]) >= 3][:3]
    sample += [e for e in entries if any(ord(c) > 127 for c in e["prediction 1"]) and e["feedback"]["errors"]][:1]
    project = make_project("qa-ui", schema=SCHEMA, overlap=1)
    annotator = make_user("marker")
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl(_rows(sample, with_labels=False)))
    login(page, "marker", "marker-pw-123")
    page.goto(f"/p/{project.slug}/annotate")
    for _ in sample:
        page.wait_for_selector("#item-form")
        item = Item.objects.get(assignments__annotator=annotator, assignments__state="leased")
        n = int(item.external_id.split("-")[1])
        errors = sample[n]["feedback"]["errors"]
        for x in errors:
            try:
                mouse_select(page, 0, x["start"], x["end"])
            except Exception:
                text = sample[n]["prediction 1"]
                print("WANT", repr(text[x["start"] : x["end"]]), x)
                print("GOT", repr(page.evaluate("window.getSelection().toString()")))
                page.screenshot(path="/tmp/qa.png")
                raise
            page.click(f"#span-menu button[data-category='{x['error type']}']")
        assert page.locator("span.span-text mark, .span-text mark").count() == len(errors)
        data = page.locator("#item-data").inner_text()
        page.click("#submit-btn")
        page.wait_for_function(
            "(t) => !document.querySelector('#item-data') || document.querySelector('#item-data').textContent !== t",
            arg=data,
        )
        stored = Judgment.objects.get(item=item).payload["spans"]
        assert [(s["start"], s["end"], s["category"]) for s in stored] == [
            (x["start"], x["end"], x["error type"]) for x in errors
        ]
