"""Small visible defects of the pages: a raw template comment, gold accuracy left blank, a heading
made from a dictionary key, a project progress that did not move."""

from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.urls import reverse

from annotation import queue, selectors
from annotation.importing import import_items
from annotation.models import Item, Membership
from annotation.services import membership_set
from curation import quality
from tests.conftest import PAIRWISE_SCHEMA, ROOT, jsonl, pair_row

ANSWER = {"pairwise": {"choice": "A", "strength": 1}}


def test_no_django_template_has_a_multiline_short_comment() -> None:
    # {# ... #} is a comment on one line only; spread over lines it is printed as text.
    found = []
    for path in ROOT.glob("*/templates/**/*.html"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\{#(?!.*#\})", line):
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert not found, f"use {{% comment %}} for comments over several lines: {found}"


def test_the_annotate_page_shows_no_template_comment(client, project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    client.force_login(annotator)
    page = client.get(reverse("annotation:annotate", args=[project.slug])).content.decode()
    assert "{#" not in page and "#}" not in page and "sends the version it shows" not in page


def test_gold_accuracy_counts_the_scored_gold_answers(client, make_project, curator, annotator) -> None:
    project = make_project("gold", curator=curator, schema=PAIRWISE_SCHEMA, gold_rate=1.0)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    gold = {"pairwise": {"choice": "A", "strength": 1}}
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2, gold_answer=gold), pair_row(3)]))
    a = queue.next_assignment(project=project, user=annotator)
    assert a.item.is_gold  # gold first (rate 1.0)
    queue.submit(assignment_id=a.id, user=annotator, payload=queue_payload(a, "A"))
    b = queue.next_assignment(project=project, user=annotator)
    queue.submit(assignment_id=b.id, user=annotator, payload=ANSWER)

    row = next(r for r in quality.report(project)["annotators"] if r["annotator"] == annotator.username)
    assert (row["gold_accuracy"], row["gold_items"], row["judgments"]) == (1.0, 1, 1)
    client.force_login(curator)
    page = client.get(reverse("curation:quality", args=[project.slug])).content.decode()
    annotators = page.split('data-testid="annotators"')[1].split("</table>")[0]
    assert "<td>1.0 <span" in annotators and "(n=1)" in annotators


def queue_payload(assignment, stored_choice: str) -> dict:
    """A pairwise answer for the stored response `stored_choice`, as the page sends it (shown order)."""
    shown_first = assignment.response_order[0]
    shown = "A" if (shown_first == 0) == (stored_choice == "A") else "B"
    return {"pairwise": {"choice": shown, "strength": 1}}


def test_drift_headings_are_written_titles(client, project, curator) -> None:
    client.force_login(curator)
    page = client.get(reverse("curation:quality", args=[project.slug])).content.decode()
    assert "<h3>AI labelers</h3>" in page and "<h3>Annotators</h3>" in page
    assert "From AI labels" in page and "From ai labels" not in page
    assert "_" not in "".join(re.findall(r"<h3>(.*?)</h3>", page))


@pytest.mark.django_db
def test_project_progress_counts_judgments_toward_the_overlap(make_project, curator, annotator) -> None:
    project = make_project("prog", curator=curator, schema=PAIRWISE_SCHEMA, overlap=2)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(5)]))
    for _ in range(3):
        a = queue.next_assignment(project=project, user=annotator)
        queue.submit(assignment_id=a.id, user=annotator, payload=ANSWER)
    cache.clear()
    selectors._LOCAL_TOTALS.clear()
    p = selectors.annotator_progress(annotator, project)
    # No item is complete (each wants a second annotator), but 3 of the 10 judgments are in.
    assert (p["done"], p["collected"], p["wanted"], p["percent"]) == (0, 3, 10, 30)
    Item.objects.filter(project=project, human_count=0).update(extra_overlap=1)
    cache.clear()
    selectors._LOCAL_TOTALS.clear()
    assert selectors.annotator_progress(annotator, project)["wanted"] == 12
