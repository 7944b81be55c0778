"""HTTP API of the model service: start training, follow it, read versions and metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from ninja import Field, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from pydantic import ValidationError, model_validator

from accounts.auth import scoped
from annotation.selectors import project_for_user
from config.api_errors import refusals
from config.http import AuthenticatedHttpRequest
from models_srv import selectors, services
from models_srv.engine import TrainConfig
from models_srv.models import RewardModelVersion

router = Router(tags=["reward models"])


class VersionOut(Schema):
    id: UUID = Field(alias="uuid")
    project: str = Field(alias="project.slug")
    version: int
    status: str
    is_current: bool
    config: dict[str, Any]
    snapshot: UUID = Field(alias="snapshot.uuid")
    metrics: dict[str, Any]
    progress: dict[str, Any]
    error: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None


@router.get("/projects/{slug:slug}/reward-models", response=list[VersionOut])
def list_versions(request: AuthenticatedHttpRequest, slug: str) -> list[RewardModelVersion]:
    """The project's versions, newest first, each with its config, data snapshot and metrics."""
    project = project_for_user(request.user, slug, curator=True)
    versions = selectors.versions_of(project)
    for version in versions:
        version.project = project  # one query for the list, not one per row
    return versions


class TrainConfigIn(TrainConfig):
    """The training options (models_srv.engine.TrainConfig), with a seed the data snapshot can store."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _allowed_models(self) -> TrainConfigIn:
        from models_srv.engine import check_sources

        check_sources(self)  # the backbone and from_config: models_srv.model_sources' rule
        return self


@router.post(
    "/projects/{slug:slug}/reward-models",
    response={202: VersionOut},
    auth=scoped("train"),
    openapi_extra=refusals({409: "Nothing to train on yet (no judgments of that source)."}),
)
def start_training(request: AuthenticatedHttpRequest, slug: str, config: TrainConfigIn) -> Status[RewardModelVersion]:
    """Start a training run (every field is optional); poll the returned version."""
    project = project_for_user(request.user, slug, curator=True)
    try:
        version = services.training_start(
            project=project, config=config.model_dump(exclude_unset=True), created_by=request.user
        )
    except ValidationError as exc:
        raise HttpError(422, str(exc)) from None
    except ValueError as exc:
        raise HttpError(409, str(exc)) from None
    return Status(202, version)


@router.get("/reward-models/{uuid:version_id}", response=VersionOut)
def get_version(request: AuthenticatedHttpRequest, version_id: UUID) -> RewardModelVersion:
    return selectors.version_for_curator(request.user, version_id)


@router.post("/reward-models/{uuid:version_id}/cancel", response=VersionOut, auth=scoped("train"))
def cancel_version(request: AuthenticatedHttpRequest, version_id: UUID) -> RewardModelVersion:
    return services.version_cancel(version=selectors.version_for_curator(request.user, version_id))


@router.post(
    "/reward-models/{uuid:version_id}/make-current",
    response=VersionOut,
    auth=scoped("train"),
    openapi_extra=refusals({409: "Only a succeeded version can become current."}),
)
def make_current(request: AuthenticatedHttpRequest, version_id: UUID) -> RewardModelVersion:
    try:
        return services.version_make_current(
            version=selectors.version_for_curator(request.user, version_id), by=request.user
        )
    except ValueError as exc:
        raise HttpError(409, str(exc)) from None


@router.post(
    "/reward-models/{uuid:version_id}/rescore",
    response={202: VersionOut},
    auth=scoped("train"),
    openapi_extra=refusals({409: "Only a succeeded version can rescore items."}),
)
def rescore(request: AuthenticatedHttpRequest, version_id: UUID) -> Status[RewardModelVersion]:
    try:
        version = services.rescore_request(version=selectors.version_for_curator(request.user, version_id))
    except ValueError as exc:
        raise HttpError(409, str(exc)) from None
    return Status(202, version)


class LabelerIn(Schema):
    name: str
    kind: Literal["llm", "reward_model", "density_ratio"]  # models_srv.judges.CONFIGS
    config: dict[str, Any]
    api_key: str = ""


class LabelerOut(Schema):
    id: int
    name: str
    kind: str
    version: int
    config: dict[str, Any]

    audit: Literal["passed", "failed", "running", "stale", "none"] = Field(
        description="Its judge audit: the latest of its current config passed or failed, one is running, "
        "its audits ran with another config (stale), or none"
    )

    @staticmethod
    def resolve_config(obj: Any) -> dict[str, Any]:
        from models_srv.judges import public_config

        return public_config(obj.config)

    @staticmethod
    def resolve_audit(obj: Any) -> str:
        from models_srv.judge_audit import standings

        return standings([obj])[obj.id].state


class FailureOut(Schema):
    item: str = Field(alias="item.external_id")
    reason: str
    raw_output: str


class AuditOut(Schema):
    id: UUID = Field(alias="uuid")
    labeler: str = Field(alias="labeler.name")
    labeler_version: int
    config_sha: str = Field(description="sha256 of the config audited: the audit holds for this config only")
    status: str
    passed: bool | None
    metrics: dict[str, Any] = Field(
        description="false_accept, truncated_accept, self_consistency, failed: {rate, hits, n}; first_shown: "
        "{rate, hits, n, p, by_order}; reasons: why it failed"
    )
    thresholds: dict[str, Any]
    items: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    error: str
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_items(obj: Any) -> int:
        return len(obj.item_ids)


class RunOut(Schema):
    id: UUID = Field(alias="uuid")
    labeler: str = Field(alias="labeler.name")
    status: str
    total: int
    done: int
    failed: int
    abstained: int = Field(
        description="Items whose two response orders disagreed where the schema has no tie: no label"
    )
    skipped: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    error: str
    failures: list[FailureOut] = []
    abstentions: list[FailureOut] = Field(default=[], description="The abstentions, with both answers")

    @staticmethod
    def resolve_failures(obj: Any) -> list[Any]:
        return list(obj.failures.select_related("item").filter(abstained=False)[:100])

    @staticmethod
    def resolve_abstentions(obj: Any) -> list[Any]:
        return list(obj.failures.select_related("item").filter(abstained=True)[:100])


@router.get("/projects/{slug:slug}/ai-labelers", response=list[LabelerOut])
def list_labelers(request: AuthenticatedHttpRequest, slug: str) -> list[Any]:
    return selectors.ai_labelers_of(project_for_user(request.user, slug, curator=True))


@router.post(
    "/projects/{slug:slug}/ai-labelers",
    response={201: LabelerOut},
    auth=scoped("train"),
    openapi_extra=refusals({422: "The body fails validation, or the config is not valid for that kind."}),
)
def add_labeler(request: AuthenticatedHttpRequest, slug: str, body: LabelerIn) -> Status[Any]:
    from models_srv.labeling import LabelerError, labeler_create

    project = project_for_user(request.user, slug, curator=True)
    try:
        labeler = labeler_create(
            project=project, kind=body.kind, name=body.name, config=body.config, api_key=body.api_key, by=request.user
        )
    except LabelerError as exc:
        raise HttpError(422, str(exc)) from None
    return Status(201, labeler)


@router.post(
    "/ai-labelers/{int:labeler_id}/runs",
    response={202: RunOut},
    auth=scoped("train"),
    openapi_extra=refusals({409: "A run of this labeler is already in progress, or it cannot run now."}),
)
def start_run(request: AuthenticatedHttpRequest, labeler_id: int) -> Status[Any]:
    """Label every item this labeler has not labeled yet (in the background)."""
    from models_srv.labeling import LabelerError, run_start

    labeler = selectors.labeler_for_curator(request.user, labeler_id)
    try:
        return Status(202, run_start(project=labeler.own_project, labeler=labeler, created_by=request.user))
    except LabelerError as exc:
        raise HttpError(409, str(exc)) from None


@router.get("/ai-runs/{uuid:run_id}", response=RunOut)
def get_run(request: AuthenticatedHttpRequest, run_id: UUID) -> Any:
    return selectors.ai_run_for_curator(request.user, run_id)


@router.get("/ai-labelers/{int:labeler_id}/audits", response=list[AuditOut])
def list_audits(request: AuthenticatedHttpRequest, labeler_id: int) -> list[Any]:
    """The labeler's latest judge audits, newest first (the probes and answers are on its page)."""
    return selectors.audits_of(selectors.labeler_for_curator(request.user, labeler_id))


@router.post(
    "/ai-labelers/{int:labeler_id}/audits",
    response={202: AuditOut},
    auth=scoped("train"),
    openapi_extra=refusals({409: "An audit of this labeler is in progress, or the project has nothing to audit."}),
)
def start_audit(request: AuthenticatedHttpRequest, labeler_id: int) -> Status[Any]:
    """Audit the labeler's current config on probes built from the project's items (in the background)."""
    from models_srv.judge_audit import AuditError

    labeler = selectors.labeler_for_curator(request.user, labeler_id)
    try:
        return Status(202, services.audit_start(labeler=labeler, created_by=request.user, request=request))
    except AuditError as exc:
        raise HttpError(409, str(exc)) from None
