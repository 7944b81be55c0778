"""The minimal pages: login, project list, project page, project creation, and the upload form.
Each is tried by the curator, an annotator of the project, and an outsider."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import ImportJob, Item, Project
from tests.conftest import jsonl, pair_row


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_anonymous_visitors_are_sent_to_login(db) -> None:
    response = Client().get(reverse("annotation:home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert Client().get(reverse("login")).status_code == 200


def test_login_with_password_leads_to_the_project_list(project: Project, annotator) -> None:
    c = Client()
    response = c.post(reverse("login"), {"username": "alice", "password": "alice-pw-123"}, follow=True)
    assert response.status_code == 200
    assert project.name in response.content.decode()


def test_project_list_shows_only_the_users_projects(project: Project, make_project, outsider, annotator) -> None:
    other = make_project("theirs", curator=outsider)
    body = client_for(annotator).get(reverse("annotation:home")).content.decode()
    assert project.name in body and other.name not in body


def test_project_page_counts_items_and_hides_import_from_annotators(project: Project, curator, annotator) -> None:
    from annotation.importing import import_items

    import_items(project=project, fileobj=jsonl([pair_row(i, label="A") for i in range(5)]))
    curator_page = client_for(curator).get(reverse("annotation:project", args=[project.slug])).content.decode()
    assert 'id="import-panel"' in curator_page
    assert ">5<" in curator_page  # items and human judgments
    annotator_page = client_for(annotator).get(reverse("annotation:project", args=[project.slug])).content.decode()
    assert 'id="import-panel"' not in annotator_page


@pytest.mark.parametrize("who", ["outsider", "annotator"])
def test_other_peoples_projects_and_imports_answer_404(project: Project, request, who: str) -> None:
    user = request.getfixturevalue(who)
    c = client_for(user)
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "x.jsonl"
    assert c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": upload}).status_code == 404
    assert c.get(reverse("annotation:import_jobs", args=[project.slug])).status_code == 404
    job = ImportJob.objects.create(project=project, source="upload")
    assert c.get(reverse("annotation:import_job", args=[job.uuid])).status_code == 404
    if who == "outsider":
        assert c.get(reverse("annotation:project", args=[project.slug])).status_code == 404
    assert Item.objects.count() == 0


def test_curator_upload_creates_a_job_and_returns_the_panel_to_htmx(project: Project, curator) -> None:
    # The job runs on a worker once the request's transaction commits: see test_worker.py.
    upload = io.BytesIO(jsonl([pair_row(i) for i in range(3)]).getvalue())
    upload.name = "items.jsonl"
    response = client_for(curator).post(
        reverse("annotation:import_upload", args=[project.slug]),
        {"file": upload, "format": ""},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert 'id="import-panel"' in response.content.decode()
    job = ImportJob.objects.get()
    assert (job.source, job.original_name, job.created_by) == ("upload", "items.jsonl", curator)


def test_project_creation_from_the_form(curator) -> None:
    c = client_for(curator)
    assert c.get(reverse("annotation:project_create")).status_code == 200
    form = {
        "name": "Helpfulness",
        "slug": "helpfulness",
        "schema": "ranking:\n  k: 3\n  allow_ties: true\n",
        "overlap": 3,
        "lease_seconds": 600,
        "gold_rate": 0.1,
        "guidelines": "# Be kind",
    }
    response = c.post(reverse("annotation:project_create"), form)
    assert response.status_code == 302
    project = Project.objects.get(slug="helpfulness")
    assert project.schema == {"ranking": {"k": 3, "allow_ties": True}}
    assert (project.overlap, project.schema_version, project.schema_versions.count()) == (3, 1, 1)
    assert project.memberships.get().user == curator


def test_project_creation_refuses_a_bad_schema_and_users_without_permission(curator, annotator) -> None:
    c = client_for(curator)
    bad = {"name": "X", "slug": "x", "schema": "ranking: {k: 1}", "overlap": 1, "lease_seconds": 600, "gold_rate": 0}
    response = c.post(reverse("annotation:project_create"), bad)
    assert response.status_code == 200
    assert "greater than or equal to 2" in response.content.decode()
    assert not Project.objects.exists()
    assert client_for(annotator).get(reverse("annotation:project_create")).status_code == 403


def test_markdown_from_data_is_rendered_without_html_injection(make_project, curator) -> None:
    project = make_project(
        "md", curator=curator, guidelines="**bold** <script>alert(1)</script> [x](javascript:alert(1))"
    )
    body = client_for(curator).get(reverse("annotation:project", args=[project.slug])).content.decode()
    assert "<strong>bold</strong>" in body
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body
    assert 'href="javascript:' not in body


def test_health_endpoint(db) -> None:
    body = Client().get("/healthz").json()
    assert body["status"] == "ok" and body["checks"]["database"]["ok"] is True


def test_an_assignments_urls_are_those_reverse_gives_under_any_script_prefix() -> None:
    import uuid

    from django.urls import get_script_prefix, reverse, set_script_prefix

    from annotation.item_html import assignment_urls as _assignment_urls

    before = get_script_prefix()
    try:
        for prefix in ("/", "/prefloop/"):
            set_script_prefix(prefix)
            for _ in range(2):
                u = uuid.uuid4()
                expected = (reverse("annotation:submit", args=[u]), reverse("annotation:skip", args=[u]))
                assert _assignment_urls(u) == expected and expected[0].startswith(prefix)
    finally:
        set_script_prefix(before)


@pytest.mark.django_db
def test_project_totals_are_kept_a_few_seconds_in_each_process(project, monkeypatch) -> None:
    import time

    from django.core.cache import cache

    from annotation import selectors
    from annotation.importing import import_items

    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    cache.clear()
    selectors._LOCAL_TOTALS.clear()
    assert selectors.project_totals(project) == {"total": 2, "done": 0, "wanted": 2, "collected": 0}
    Item.objects.filter(project=project).update(status=Item.Status.DONE)
    cache.clear()  # the shared copy is gone; this process still has its own for a few seconds
    assert selectors.project_totals(project)["done"] == 0
    later = time.monotonic() + selectors.PROJECT_TOTALS_LOCAL_SECONDS + 1
    monkeypatch.setattr(selectors.time, "monotonic", lambda: later)
    assert selectors.project_totals(project) == {"total": 2, "done": 2, "wanted": 2, "collected": 2}
