"""The HTTP API: token auth, project creation, item import through a background job, 404 for others."""

from __future__ import annotations

import io

import pytest
from django.test import Client

from annotation.models import ApiToken, ImportJob, Project
from annotation.services import import_job_run


def token_for(user) -> str:
    key = ApiToken.new_key()
    ApiToken.objects.create(user=user, name="test", key_hash=ApiToken.hash_key(key))
    return key


def api(user) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(user)}"})


SPEC = {"slug": "via-api", "name": "Via API", "schema": {"pairwise": {}}, "overlap": 2}


def test_requests_without_a_valid_token_are_refused(db) -> None:
    assert Client().get("/api/v1/projects").status_code == 401
    assert Client(headers={"Authorization": "Bearer pl_nope"}).get("/api/v1/projects").status_code == 401


def test_revoked_tokens_stop_working(curator) -> None:
    from django.utils import timezone

    key = token_for(curator)
    c = Client(headers={"Authorization": f"Bearer {key}"})
    assert c.get("/api/v1/projects").status_code == 200
    ApiToken.objects.update(revoked_at=timezone.now())
    assert c.get("/api/v1/projects").status_code == 401


def test_create_project_then_import_and_poll(curator, django_capture_on_commit_callbacks) -> None:
    c = api(curator)
    created = c.post("/api/v1/projects", SPEC, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["judgment_schema"]["pairwise"]["strengths"] == ["better", "much better"]

    upload = io.BytesIO(b'{"id": "1", "prompt": "p", "response_a": "a", "response_b": "b", "label": "B"}\n')
    upload.name = "items.jsonl"
    with django_capture_on_commit_callbacks() as callbacks:
        started = c.post("/api/v1/projects/via-api/imports", {"file": upload})
    assert started.status_code == 202, started.content
    assert len(callbacks) == 1  # the job is queued only once the upload is committed
    job = ImportJob.objects.get(uuid=started.json()["id"])
    import_job_run(job_id=job.id)  # what the worker does; the real worker runs it in test_worker.py
    polled = c.get(f"/api/v1/imports/{job.uuid}").json()
    assert (polled["status"], polled["items_created"], polled["judgments_created"]) == ("succeeded", 1, 1)
    assert c.get("/api/v1/projects/via-api").json()["item_count"] == 1


def test_a_refused_import_reports_its_line_errors(project: Project, curator) -> None:
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n{"prompt": "p"}\n')
    upload.name = "bad.jsonl"
    started = api(curator).post(f"/api/v1/projects/{project.slug}/imports", {"file": upload})
    job = ImportJob.objects.get(uuid=started.json()["id"])
    import_job_run(job_id=job.id)
    polled = api(curator).get(f"/api/v1/imports/{job.uuid}").json()
    assert polled["status"] == "failed"
    assert polled["errors"] == ["line 2: missing responses: give response_a/response_b, responses, or chosen/rejected"]
    assert project.items.count() == 0


def test_a_job_runs_once_even_if_delivered_twice(project: Project, curator) -> None:
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "x.jsonl"
    started = api(curator).post(f"/api/v1/projects/{project.slug}/imports", {"file": upload})
    job = ImportJob.objects.get(uuid=started.json()["id"])
    assert import_job_run(job_id=job.id) is not None
    assert import_job_run(job_id=job.id) is None


@pytest.mark.parametrize("who", ["outsider", "annotator"])
def test_other_projects_answer_404_through_the_api(project: Project, request, who: str) -> None:
    c = api(request.getfixturevalue(who))
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "x.jsonl"
    assert c.post(f"/api/v1/projects/{project.slug}/imports", {"file": upload}).status_code == 404
    job = ImportJob.objects.create(project=project, source="api")
    assert c.get(f"/api/v1/imports/{job.uuid}").status_code == 404
    if who == "outsider":
        assert c.get(f"/api/v1/projects/{project.slug}").status_code == 404
        assert c.get("/api/v1/projects").json() == []


def test_invalid_specs_get_a_422_with_the_reason(curator, annotator) -> None:
    bad = {**SPEC, "schema": {"ranking": {"k": 1}}}
    response = api(curator).post("/api/v1/projects", bad, content_type="application/json")
    assert response.status_code == 422
    assert "greater than or equal to 2" in response.json()["detail"]
    assert api(annotator).post("/api/v1/projects", SPEC, content_type="application/json").status_code == 403


def test_the_openapi_schema_is_served(db) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    assert "/api/v1/projects/{slug}/imports" in schema["paths"]
