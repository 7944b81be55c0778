"""HTTP API of curation: start a dataset export, follow it, download its bundle."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.http import FileResponse
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status

from accounts.auth import scoped
from annotation.selectors import project_for_user
from config.api_errors import refusals
from config.http import AuthenticatedHttpRequest
from curation import selectors, services
from curation.export import ExportError, ExportFilters
from curation.models import ExportSnapshot, ExportStatus

router = Router(tags=["exports"])


class ExportIn(Schema):
    filters: ExportFilters = Field(default_factory=ExportFilters, description="Which items and judgments.")
    formats: list[Literal["pairs", "listwise", "rubric", "spans", "raw"]] = Field(
        min_length=1, description="Files to write; pairs, listwise, rubric and spans need that question in the schema."
    )
    license: str = Field("unknown", max_length=100, pattern=r"^[^\x00]*$", description="The dataset card's license.")


class ExportFileOut(Schema):
    name: str
    format: str | None = None
    split: str | None = None
    kind: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    rows: int | None = None


class BundleOut(Schema):
    name: str
    bytes: int
    sha256: str
    url: str = Field(description="GET it (the `export` scope) for the zip.")


class ExportOut(Schema):
    id: UUID = Field(alias="code")
    project: str = Field(alias="project.slug")
    status: str = Field(description="pending, running, done or failed")
    progress: dict[str, Any]
    filters: dict[str, Any]
    formats: list[str]
    license: str
    cutoff: datetime
    counts: dict[str, Any]
    files: list[ExportFileOut]
    bundle: BundleOut | None = None
    error: str
    reproduces: UUID | None = Field(None, description="The export this one rebuilds, if any.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_bundle(obj: ExportSnapshot) -> dict[str, Any] | None:
        if obj.status != ExportStatus.DONE or not obj.bundle_path:
            return None
        return {
            "name": obj.bundle_name,
            "bytes": obj.bundle_bytes,
            "sha256": obj.bundle_sha256,
            "url": reverse("api:export_download", args=[obj.code]),
        }

    @staticmethod
    def resolve_reproduces(obj: ExportSnapshot) -> UUID | None:
        return obj.source_snapshot.code if obj.source_snapshot is not None else None

    @staticmethod
    def resolve_files(obj: ExportSnapshot) -> list[dict[str, Any]]:
        return [f for f in obj.files if isinstance(f, dict)] if isinstance(obj.files, list) else []


class ExportList(Schema):
    limit: int = Field(20, ge=1, le=200)


@router.post(
    "/projects/{slug:slug}/exports",
    response={202: ExportOut},
    auth=scoped("export"),
    openapi_extra=refusals(
        {
            422: "The body fails validation, or asks for what the project lacks (a format without its question in "
            "the schema, a labeler not in the project)."
        }
    ),
)
def start_export(request: AuthenticatedHttpRequest, slug: str, body: ExportIn) -> Status[ExportSnapshot]:
    """Snapshot the project as it is now and build the export in the background; poll the result."""
    project = project_for_user(request.user, slug, curator=True)
    try:
        snapshot = services.export_create(
            project=project, user=request.user, filters=body.filters, formats=body.formats, license=body.license
        )
    except ExportError as exc:
        raise HttpError(422, str(exc)) from None
    return Status(202, selectors.export_get_for_user(request.user, snapshot.code))


@router.get("/projects/{slug:slug}/exports", response=list[ExportOut])
def list_exports(request: AuthenticatedHttpRequest, slug: str, params: Query[ExportList]) -> list[ExportSnapshot]:
    """The project's exports, newest first."""
    project = project_for_user(request.user, slug, curator=True)
    return list(
        ExportSnapshot.objects.filter(project=project)
        .select_related("project", "source_snapshot")
        .order_by("-created_at", "-id")[: params.limit]
    )


@router.get("/exports/{uuid:export_id}", response=ExportOut)
def get_export(request: AuthenticatedHttpRequest, export_id: UUID) -> ExportSnapshot:
    return selectors.export_get_for_user(request.user, export_id)


@router.get(
    "/exports/{uuid:export_id}/download",
    auth=scoped("export"),
    url_name="export_download",
    openapi_extra={
        "responses": {
            200: {"description": "The zip bundle.", "content": {"application/zip": {}}},
            **refusals(
                {409: "The export is not done (pending, running or failed).", 410: "The bundle is no longer on disk."}
            )["responses"],
        }
    },
)
def download_export(request: AuthenticatedHttpRequest, export_id: UUID) -> FileResponse:
    """The export's zip bundle; its SHA-256 is the export's `bundle.sha256`."""
    snapshot = selectors.export_get_for_user(request.user, export_id)
    if snapshot.status != ExportStatus.DONE:
        raise HttpError(409, f"the export is {snapshot.status}, not done")
    path = snapshot.bundle_file
    if path is None or not path.exists():
        raise HttpError(410, "the bundle is no longer on disk")
    return FileResponse(path.open("rb"), as_attachment=True, filename=snapshot.bundle_name)
