"""Flows that cross Celery, through a real worker process against Redis and the test database."""

from __future__ import annotations

import io
import time

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import ImportJob, Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row

pytestmark = pytest.mark.worker


def _wait_for(job: ImportJob, timeout: float = 60) -> ImportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"import job still {job.status} after {timeout} s")


def test_an_upload_is_imported_by_the_worker(celery_worker_process, make_project, make_user) -> None:
    curator = make_user("wendy", can_create=True)
    project = make_project("worker", curator=curator)
    membership_set(project=project, user=curator, role=Membership.Role.CURATOR)
    c = Client()
    c.force_login(curator)

    good = io.BytesIO(jsonl([pair_row(i, label="A") for i in range(25)]).getvalue())
    good.name = "good.jsonl"
    response = c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": good})
    assert response.status_code == 302
    job = _wait_for(ImportJob.objects.get(original_name="good.jsonl"))
    assert (job.status, job.items_created, job.judgments_created, job.format) == ("succeeded", 25, 25, "jsonl")

    bad = io.BytesIO(b'{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b"}\n{"id": "y"}\n')
    bad.name = "bad.jsonl"
    c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": bad})
    job = _wait_for(ImportJob.objects.get(original_name="bad.jsonl"))
    assert job.status == "failed"
    assert job.errors == ["line 2: missing prompt (or messages)"]
    assert Item.objects.filter(project=project).count() == 25
    assert Judgment.objects.filter(item__project=project).count() == 25
