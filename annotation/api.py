"""HTTP API of the annotation app (django-ninja; schema at /api/v1/openapi.json)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Body, Field, File, Form, Router, Schema
from ninja.errors import HttpError
from ninja.files import UploadedFile
from ninja.responses import Status

from annotation import selectors, services
from annotation.importing import FORMATS
from annotation.models import ImportJob, Project

router = Router(tags=["annotation"])


class ProjectOut(Schema):
    slug: str
    name: str
    description: str
    judgment_schema: dict[str, Any] = Field(alias="schema")
    schema_version: int
    guidelines_version: int
    overlap: int
    item_count: int


class ImportJobOut(Schema):
    id: UUID = Field(alias="uuid")
    project: str = Field(alias="project.slug")
    status: str
    format: str
    rows_read: int
    items_created: int
    items_existing: int
    judgments_created: int
    errors: list[str]
    created_at: datetime
    finished_at: datetime | None


@router.get("/projects", response=list[ProjectOut])
def list_projects(request: HttpRequest) -> QuerySet[Project]:
    return selectors.project_list_for_user(request.user)


@router.post("/projects", response={201: ProjectOut})
def create_project(request: HttpRequest, spec: Body[dict[str, Any]]) -> Status[Project]:
    if not selectors.can_create_projects(request.user):
        raise HttpError(403, "You may not create projects.")
    try:
        project = services.project_create(spec=services.ProjectSpec.parse(spec), created_by=request.user)
    except services.SpecError as exc:
        raise HttpError(422, str(exc)) from None
    project.item_count = 0
    return Status(201, project)


@router.get("/projects/{slug}", response=ProjectOut)
def get_project(request: HttpRequest, slug: str) -> Project:
    project = selectors.project_for_user(request.user, slug)
    project.item_count = project.items.count()
    return project


@router.post("/projects/{slug}/imports", response={202: ImportJobOut})
def start_import(
    request: HttpRequest,
    slug: str,
    file: File[UploadedFile],
    format: Form[str] = "",  # noqa: A002
) -> Status[ImportJob]:
    """Upload a file of items; the import runs in the background. Poll the returned job."""
    project = selectors.project_for_user(request.user, slug, curator=True)
    if format and format not in FORMATS:
        raise HttpError(422, f"format must be one of {', '.join(FORMATS)}")
    if file.size > settings.IMPORT_MAX_UPLOAD_BYTES:
        raise HttpError(413, f"the file is larger than {settings.IMPORT_MAX_UPLOAD_BYTES:,} bytes")
    job = services.import_job_create(
        project=project,
        upload=file,
        name=file.name or "upload",
        source=ImportJob.Source.API,
        created_by=request.user,
        fmt=format,
    )
    return Status(202, job)


@router.get("/imports/{job_id}", response=ImportJobOut)
def get_import(request: HttpRequest, job_id: UUID) -> ImportJob:
    return selectors.import_job_for_user(request.user, job_id)
