"""Annotators reach only their projects and their own assignments; everything else answers 404."""

from __future__ import annotations

import json

from django.test import Client
from django.urls import reverse

from annotation import queue
from annotation.importing import import_items
from annotation.models import Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row


def _client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_annotate_pages_and_assignments_of_others_answer_404(project, annotator, make_user, make_project) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(3)]))
    outsider = make_user("eve")
    colleague = make_user("bob")
    membership_set(project=project, user=colleague, role=Membership.Role.ANNOTATOR)
    mine = queue.next_assignment(project=project, user=annotator)
    body = {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 1}})}

    assert _client(outsider).get(reverse("annotation:annotate", args=[project.slug])).status_code == 404
    for who in (outsider, colleague):
        c = _client(who)
        assert c.post(reverse("annotation:submit", args=[mine.uuid]), body).status_code == 404
        assert c.post(reverse("annotation:skip", args=[mine.uuid])).status_code == 404
    # A project the annotator does not belong to.
    other = make_project("other")
    assert _client(annotator).get(reverse("annotation:annotate", args=[other.slug])).status_code == 404
    assert Judgment.objects.count() == 0


def test_submit_through_htmx_returns_the_next_item_and_is_idempotent(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(2)]))
    c = _client(annotator)
    page = c.get(reverse("annotation:annotate", args=[project.slug]))
    assert page.status_code == 200 and 'id="item-form"' in page.content.decode()
    a = queue.next_assignment(project=project, user=annotator)
    body = {"payload": json.dumps({"pairwise": {"choice": "tie", "strength": 0}}), "time_ms": "1500"}
    first = c.post(reverse("annotation:submit", args=[a.uuid]), body, HTTP_HX_REQUEST="true")
    again = c.post(reverse("annotation:submit", args=[a.uuid]), body, HTTP_HX_REQUEST="true")  # a retry
    assert first.status_code == again.status_code == 200
    assert "<html" not in first.content.decode()  # a partial, not a page
    assert Judgment.objects.count() == 1
    assert Judgment.objects.get().time_spent_ms <= 1500
    bad = c.post(
        reverse("annotation:submit", args=[queue.next_assignment(project=project, user=annotator).uuid]),
        {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 7}})},
        HTTP_HX_REQUEST="true",
    )
    assert bad.status_code == 422
    assert "strength must be between 1 and 2" in bad.content.decode()
    odd = c.post(  # a digit isdigit() accepts but int() does not: ignored, not a crash
        reverse("annotation:submit", args=[queue.next_assignment(project=project, user=annotator).uuid]),
        {"payload": json.dumps({"pairwise": {"choice": "A", "strength": 1}}), "time_ms": "\u00b2"},
        HTTP_HX_REQUEST="true",
    )
    assert odd.status_code == 200


def test_home_shows_own_and_project_progress(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(4)]))
    a = queue.next_assignment(project=project, user=annotator)
    queue.submit(assignment_id=a.id, user=annotator, payload={"pairwise": {"choice": "A", "strength": 1}})
    body = _client(annotator).get(reverse("annotation:home")).content.decode()
    assert "1 / 4 items complete (25%)" in body
    assert reverse("annotation:annotate", args=[project.slug]) in body


def test_the_queue_empty_message(project, annotator) -> None:
    body = _client(annotator).get(reverse("annotation:annotate", args=[project.slug])).content.decode()
    assert 'id="queue-empty"' in body


def test_an_ended_session_gets_a_message_from_htmx_requests_and_the_login_page_otherwise(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    lease = queue.next_assignment(project=project, user=annotator)
    anonymous = Client()
    urls = [
        ("get", reverse("annotation:annotate", args=[project.slug])),
        ("post", reverse("annotation:submit", args=[lease.uuid])),
        ("post", reverse("annotation:skip", args=[lease.uuid])),
    ]
    for method, url in urls:
        partial = getattr(anonymous, method)(url, HTTP_HX_REQUEST="true")
        assert partial.status_code == 401 and partial["Content-Type"].startswith("text/plain")
        assert "session has ended" in partial.content.decode() and reverse("login") in partial.content.decode()
        page = getattr(anonymous, method)(url)
        assert page.status_code == 302 and page["Location"].startswith(reverse("login"))


def test_the_annotate_page_is_not_kept_by_the_browser(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    page = _client(annotator).get(reverse("annotation:annotate", args=[project.slug]))
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]


def test_a_page_can_ask_for_the_current_csrf_token(annotator) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(annotator)
    token = c.get(reverse("csrf_token")).json()["token"]
    assert len(token) == 64
    assert c.post(reverse("logout"), HTTP_X_CSRFTOKEN=token).status_code == 302
