"""HTTP API of the annotation app (django-ninja; schema at /api/v1/openapi.json)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

from django.conf import settings
from django.db.models import QuerySet
from ninja import Field, File, Form, Query, Router, Schema
from ninja.errors import HttpError
from ninja.files import UploadedFile
from ninja.responses import Status
from pydantic import WithJsonSchema

from accounts.auth import scoped
from annotation import selectors, services
from annotation.models import (
    ImportJob,
    Item,
    ItemRoute,
    ItemSplit,
    ItemStatus,
    Judgment,
    LabelSource,
    Project,
    source_q,
)
from annotation.pseudonym import pseudonym
from annotation.schema import JudgmentRead
from config.api_errors import refusals
from config.http import AuthenticatedHttpRequest

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from annotation.selectors import ListedProject

router = Router(tags=["annotation"])

MAX_ID = 2**63 - 1
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters


class ProjectOut(Schema):
    slug: str
    name: str
    description: str
    judgment_schema: dict[str, Any] = Field(alias="schema")
    schema_version: int
    guidelines_version: int
    overlap: int
    item_count: int


class ProjectIn(services.ProjectSpec):
    """A project spec, as `manage.py create_project` reads it from a file."""

    autotrain_after: int = Field(default=0, ge=0, le=2**31 - 1)


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
def list_projects(request: AuthenticatedHttpRequest) -> QuerySet[ListedProject]:
    return selectors.project_list_for_user(request.user)


def _listed(user: User, project: Project) -> ListedProject:
    """`project` as the project list shows it, with its counts (`ProjectOut.item_count`)."""
    return selectors.project_list_for_user(user).get(pk=project.pk)


@router.post(
    "/projects",
    response={201: ProjectOut},
    auth=scoped("write"),
    openapi_extra=refusals(
        {
            403: "You may not create projects (the add-project permission), or the token lacks `write`.",
            422: "The spec fails validation, or a rule beyond the schema: the slug is taken, a member is "
            "not a user, names repeat, a scale's max is not above its min.",
        }
    ),
)
def create_project(request: AuthenticatedHttpRequest, spec: ProjectIn) -> Status[ListedProject]:
    """Create a project; you become its curator (needs the add-project permission)."""
    if not selectors.can_create_projects(request.user):
        raise HttpError(403, "You may not create projects.")
    try:
        project = services.project_create(spec=spec, created_by=request.user)
    except services.SpecError as exc:
        raise HttpError(422, str(exc)) from None
    return Status(201, _listed(request.user, project))


@router.get("/projects/{slug:slug}", response=ProjectOut)
def get_project(request: AuthenticatedHttpRequest, slug: str) -> ListedProject:
    return _listed(request.user, selectors.project_for_user(request.user, slug))


# An empty file part arrives as no file at all: the schema says a file has a byte at least.
ImportFile = Annotated[UploadedFile, WithJsonSchema({"type": "string", "format": "binary", "minLength": 1})]
ImportFormat = Literal["", "jsonl", "csv", "parquet", "json"]  # annotation.importing.FORMATS, or "": by the name


@router.post(
    "/projects/{slug:slug}/imports",
    response={202: ImportJobOut},
    auth=scoped("write"),
    openapi_extra=refusals({413: "The file is larger than the server's IMPORT_MAX_UPLOAD_BYTES."}),
)
def start_import(
    request: AuthenticatedHttpRequest,
    slug: str,
    file: File[ImportFile],
    format: Form[ImportFormat] = "",  # noqa: A002
) -> Status[ImportJob]:
    """Upload a file of items; the import runs in the background. Poll the returned job."""
    project = selectors.project_for_user(request.user, slug, curator=True)
    if (file.size or 0) > settings.IMPORT_MAX_UPLOAD_BYTES:  # an upload's size is always set
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


@router.get("/imports/{uuid:job_id}", response=ImportJobOut)
def get_import(request: AuthenticatedHttpRequest, job_id: UUID) -> ImportJob:
    return selectors.import_job_for_user(request.user, job_id)


# ---------------------------------------------------------------------------------------------
# Reading judgments and items (curators): keyset pages, newest last, `after` = previous `next_after`


class JudgmentOut(Schema):
    """One judgment. `labeler` is pseudonymous (the same id as the `raw` export's), never a username."""

    id: UUID
    item: str = Field(description="The item's external id.")
    labeler: str = Field(description="Pseudonymous labeler id: HMAC of the project and labeler, 16 hex digits.")
    labeler_kind: Literal["human", "imported", "ai"] = Field(
        description="The source: human (annotators here), imported or ai."
    )
    labeler_type: str = Field(description="human, imported, llm, reward_model or density_ratio.")
    labeler_name: str | None = Field(description="The AI labeler's name (null for people).")
    labeler_version: int | None
    payload: dict[str, Any]
    choice: str | None = Field(description="Pairwise choice A, B or tie (also in payload).")
    strength: int | None = Field(description="Pairwise strength level (also in payload).")
    response_order: list[int] | None = Field(description="Stored response indexes in the order shown.")
    time_spent_ms: int | None
    confidence: float | None
    gold_score: float | None
    schema_version: int
    guidelines_version: int | None
    created_at: datetime


class JudgmentPage(Schema):
    results: list[JudgmentOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class ItemOut(Schema):
    id: UUID = Field(alias="uuid")
    external_id: str
    prompt: str
    prompt_messages: list[dict[str, Any]] | None
    responses: list[dict[str, Any]]
    metadata: dict[str, Any]
    split: str
    status: str
    route: str
    is_gold: bool
    gold_answer: Any = None
    human_count: int
    priority: float
    created_at: datetime


class ItemPage(Schema):
    results: list[ItemOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class JudgmentFilters(Schema):
    labeler_kind: LabelSource | None = Field(
        None, description="Only this source's judgments: human (annotators here), imported or ai."
    )
    since: datetime | None = Field(None, description="Only judgments made at or after this time (UTC if naive).")
    item: str | None = Field(None, max_length=255, pattern=NO_NUL, description="Only this item's (external id).")
    after: int | None = Field(None, ge=0, le=MAX_ID, description="`next_after` of the previous page.")
    limit: int = Field(100, ge=1, le=1000)


class ItemFilters(Schema):
    status: ItemStatus | None = None
    split: ItemSplit | None = None
    route: ItemRoute | None = None
    after: int | None = Field(None, ge=0, le=MAX_ID, description="`next_after` of the previous page.")
    limit: int = Field(100, ge=1, le=1000)


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise HttpError(422, "since is out of range") from None


def _page(rows: list[Any], limit: int) -> tuple[list[Any], int | None]:
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1].id
    return rows, None


def _judgment_out(project: Project, j: Judgment) -> dict[str, Any]:
    pairwise = JudgmentRead.from_stored(j.payload).pairwise
    human = not j.labeler.is_ai
    return {
        "id": j.uuid,
        "item": j.item.external_id,
        "labeler": pseudonym(project.slug, j.labeler_id),
        "labeler_kind": j.labeler.source.value,
        "labeler_type": j.labeler.kind,
        "labeler_name": None if human else j.labeler.name,
        "labeler_version": None if human else j.labeler.version,
        "payload": j.payload,
        "choice": pairwise.choice if pairwise else None,
        "strength": pairwise.strength if pairwise else None,
        "response_order": j.response_order,
        "time_spent_ms": j.time_spent_ms,
        "confidence": j.confidence,
        "gold_score": j.gold_score,
        "schema_version": j.schema_version,
        "guidelines_version": j.guidelines_version,
        "created_at": j.created_at,
    }


@router.get("/projects/{slug:slug}/judgments", response=JudgmentPage)
def list_judgments(request: AuthenticatedHttpRequest, slug: str, filters: Query[JudgmentFilters]) -> dict[str, Any]:
    """The project's judgments (human and AI) in the order they were made; curators only."""
    project = selectors.project_for_user(request.user, slug, curator=True)
    qs = Judgment.objects.filter(item__project=project).select_related("item", "labeler").order_by("id")
    if filters.labeler_kind is not None:
        qs = qs.filter(source_q(filters.labeler_kind))
    if filters.since is not None:
        qs = qs.filter(created_at__gte=_utc(filters.since))
    if filters.item is not None:
        qs = qs.filter(item__external_id=filters.item)
    if filters.after is not None:
        qs = qs.filter(id__gt=filters.after)
    rows, next_after = _page(list(qs[: filters.limit + 1]), filters.limit)
    return {"results": [_judgment_out(project, j) for j in rows], "next_after": next_after}


@router.get("/projects/{slug:slug}/items", response=ItemPage)
def list_items(request: AuthenticatedHttpRequest, slug: str, filters: Query[ItemFilters]) -> dict[str, Any]:
    """The project's items in import order, with status, split and route; curators only."""
    project = selectors.project_for_user(request.user, slug, curator=True)
    qs = Item.objects.filter(project=project).order_by("id")
    for name in ("status", "split", "route"):
        if getattr(filters, name) is not None:
            qs = qs.filter(**{name: getattr(filters, name)})
    if filters.after is not None:
        qs = qs.filter(id__gt=filters.after)
    rows, next_after = _page(list(qs[: filters.limit + 1]), filters.limit)
    return {"results": rows, "next_after": next_after}
