"""Writes: every change to projects, members and imports goes through these functions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import File
from django.db import transaction
from django.db.models import F, Q
from django.http import HttpRequest
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from annotation.importing import ImportRefused, ImportResult, RowError, import_items
from annotation.models import GuidelinesVersion, ImportJob, Item, Membership, Project, SchemaVersion
from annotation.schema import JudgmentSchema, format_validation_error
from config.jobs import JobLost, claim_job, liveness, stale_after, sweep_stale

log = logging.getLogger(__name__)


class SpecError(ValueError):
    """A project spec that cannot be used, with a readable reason."""


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    role: Membership.Role


class ProjectSpec(BaseModel):
    """A project as written in a JSON/YAML spec file or sent to the API."""

    model_config = ConfigDict(extra="forbid")
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    guidelines: str = ""
    schema_: JudgmentSchema = Field(alias="schema")
    overlap: int = Field(default=1, ge=1, le=50)
    human_budget: float = Field(default=1.0, ge=0, le=1)
    calibration_share: float = Field(default=0.1, ge=0, le=1)
    gold_rate: float = Field(default=0.0, ge=0, le=1)
    lease_seconds: int = Field(default=900, ge=10, le=7 * 24 * 3600)
    show_model_names: bool = False
    routing_policy: Project.RoutingPolicy = Field(
        default=Project.RoutingPolicy.ALL_HUMAN,
        description="all_human (the default), all_ai, learned, or performance (experimental: no better than "
        "random routing in the simulations of bench/route)",
    )
    require_ai_audit: bool = False
    autotrain_after: int = Field(default=0, ge=0)
    members: list[MemberSpec] = Field(default_factory=list)

    @field_validator("slug")
    @classmethod
    def _slug(cls, v: str) -> str:
        return v.strip()

    @classmethod
    def parse(cls, data: Any) -> ProjectSpec:
        if not isinstance(data, dict):
            raise SpecError("a project spec is a mapping with at least slug, name and schema")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc)) from None


def project_create(*, spec: ProjectSpec, created_by: AbstractBaseUser | None) -> Project:
    """Create a project with version 1 of its schema and guidelines; the creator becomes curator."""
    from django.contrib.auth import get_user_model

    users = get_user_model()
    with transaction.atomic():
        if Project.objects.filter(slug=spec.slug).exists():
            raise SpecError(f"a project with slug {spec.slug!r} already exists")
        schema = spec.schema_.model_dump(mode="json", exclude_none=True)
        project = Project.objects.create(
            slug=spec.slug,
            name=spec.name,
            description=spec.description,
            guidelines=spec.guidelines,
            schema=schema,
            overlap=spec.overlap,
            human_budget=spec.human_budget,
            calibration_share=spec.calibration_share,
            gold_rate=spec.gold_rate,
            lease_seconds=spec.lease_seconds,
            show_model_names=spec.show_model_names,
            routing_policy=spec.routing_policy,
            require_ai_audit=spec.require_ai_audit,
            autotrain_after=spec.autotrain_after,
            created_by=created_by,
        )
        SchemaVersion.objects.create(project=project, version=1, schema=schema, created_by=created_by)
        GuidelinesVersion.objects.create(project=project, version=1, text=spec.guidelines, created_by=created_by)
        if created_by is not None:
            Membership.objects.create(project=project, user=created_by, role=Membership.Role.CURATOR)
        for member in spec.members:
            user = users.objects.filter(username=member.username).first()
            if user is None:
                raise SpecError(f"member {member.username!r} is not a user")
            Membership.objects.update_or_create(project=project, user=user, defaults={"role": member.role})
    return project


def project_set_schema(*, project: Project, schema: JudgmentSchema, by: AbstractBaseUser | None) -> Project:
    """Record a new schema version; earlier judgments keep the version they were made under."""
    data = schema.model_dump(mode="json", exclude_none=True)
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if _normalized(locked.schema) == data:
            return locked
        locked.schema_version += 1
        locked.schema = data
        locked.save(update_fields=["schema", "schema_version", "updated_at"])
        SchemaVersion.objects.create(project=locked, version=locked.schema_version, schema=data, created_by=by)
    return locked


def _normalized(schema: Any) -> Any:
    """A stored schema as `project_set_schema` would store it (None if it no longer parses)."""
    try:
        return JudgmentSchema.model_validate(schema).model_dump(mode="json", exclude_none=True)
    except ValidationError:
        return None


def project_set_guidelines(*, project: Project, text: str, by: AbstractBaseUser | None) -> Project:
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if locked.guidelines == text:
            return locked
        locked.guidelines_version += 1
        locked.guidelines = text
        locked.save(update_fields=["guidelines", "guidelines_version", "updated_at"])
        GuidelinesVersion.objects.create(project=locked, version=locked.guidelines_version, text=text, created_by=by)
    return locked


def project_edit_texts(
    *,
    project: Project,
    schema: JudgmentSchema,
    guidelines: str,
    by: AbstractBaseUser,
    request: HttpRequest | None = None,
) -> Project:
    """A curator's edit of the schema and guidelines (the project's settings page): each that
    changed becomes a new version through `project_set_schema` / `project_set_guidelines`, as the
    admin's edits do, and the change is in the audit log."""
    from annotation import audit

    with transaction.atomic():
        before = Project.objects.select_for_update().get(pk=project.pk)
        versions = (before.schema_version, before.guidelines_version)
        project_set_schema(project=before, schema=schema, by=by)
        after = project_set_guidelines(project=before, text=guidelines, by=by)
        changes = {
            name: [old, new]
            for name, old, new in zip(
                ("schema_version", "guidelines_version"),
                versions,
                (after.schema_version, after.guidelines_version),
                strict=True,
            )
            if old != new
        }
        if changes:
            audit.record(by, "project.settings", project=after, target=after, details=changes, request=request)
    return after


def project_set_overlap(*, project: Project, overlap: int) -> Project:
    """Change how many human judgments each item wants. Items already judged that many times
    (plus any extra a curator asked for) are done; done items now short of it are open again.
    Gold and dropped items keep their status."""
    if not 1 <= overlap <= 50:
        raise ValueError("overlap is 1 to 50 human judgments per item")
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        if locked.overlap == overlap:
            return locked
        locked.overlap = overlap
        locked.save(update_fields=["overlap", "updated_at"])
        items = Item.objects.filter(project=locked, is_gold=False)
        wanted = overlap + F("extra_overlap")
        items.filter(status=Item.Status.OPEN, human_count__gte=wanted).update(status=Item.Status.DONE)
        items.filter(status=Item.Status.DONE, human_count__lt=wanted).update(status=Item.Status.OPEN)
    return locked


def membership_set(*, project: Project, user: AbstractBaseUser, role: Membership.Role) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


# ---------------------------------------------------------------------------------------------
# Import jobs: an upload (page or API) becomes a job; a Celery task runs it.


def import_job_create(
    *,
    project: Project,
    upload: IO[bytes],
    name: str,
    source: ImportJob.Source,
    created_by: AbstractBaseUser | None,
    fmt: str = "",
) -> ImportJob:
    """Store the upload and queue its import once the transaction commits."""
    from annotation.tasks import run_import_job

    job = ImportJob(project=project, created_by=created_by, source=source, original_name=name[:255], format=fmt)
    job.file.save(Path(name).name[-100:] or "upload", File(upload), save=False)
    job.save()
    transaction.on_commit(lambda: run_import_job.delay(job.id))
    return job


def import_job_run(*, job_id: int, redelivered: bool = False) -> ImportJob | None:
    """Claim a pending job and run it. A second delivery of a finished job does nothing.

    The rows and the job's final status commit in one transaction, under the attempt's claim
    `(running, attempts)`: a worker killed mid-import leaves nothing behind, its heartbeat (written
    by `config.jobs.liveness` throughout) goes stale and `recover_stale_imports` queues the job
    again, to run from the start from its stored upload, kept until the job is over. An attempt
    that lost its claim meanwhile rolls its rows back. A redelivered message takes over a running
    job only once its heartbeat is stale.
    """
    claim = claim_job(
        ImportJob,
        pk=job_id,
        pending=ImportJob.Status.PENDING,
        running=ImportJob.Status.RUNNING,
        redelivered=redelivered,
        stale=_silent_since(timezone.now() - stale_after()),
        max_attempts=IMPORT_MAX_ATTEMPTS,
        give_up=lambda job: _finish(
            job, ImportJob.objects.filter(id=job.id), ImportJob.Status.FAILED, ImportResult(), [_GAVE_UP]
        ),
    )
    if claim is None:
        return None
    mine = claim.owned
    job = ImportJob.objects.select_related("project").get(id=job_id)
    try:
        with liveness(mine) as beat, transaction.atomic():
            with job.file.open("rb") as fh:
                result = import_items(project=job.project, fileobj=fh, fmt=job.format or None, import_job_id=job.id)
            beat.finishing()
            if not _finish(job, mine, ImportJob.Status.SUCCEEDED, result, []):
                raise JobLost  # taken over: these rows roll back, the new attempt writes them
    except JobLost:
        log.warning("import job %s: attempt %s lost the job to a takeover; rolled back", job.uuid, job.attempts)
        return None
    except ImportRefused as exc:
        if _finish(
            job, mine, ImportJob.Status.FAILED, ImportResult(rows_read=exc.rows_read), [str(e) for e in exc.errors]
        ):
            # The refused file is of no further use (the curator fixes it and uploads it again;
            # the job keeps its name and the errors): delete it, once the refusal is recorded,
            # rather than keep it on disk forever. A crash below keeps its file, for the bug.
            try:
                job.file.delete(save=False)
                ImportJob.objects.filter(id=job.id).update(file="")
            except OSError:
                log.warning(
                    "import job %s: could not delete the refused file %s", job.uuid, job.file.name, exc_info=True
                )
    except Exception as exc:
        log.exception("import job %s crashed", job.uuid)
        _finish(job, mine, ImportJob.Status.FAILED, ImportResult(), [f"internal error: {type(exc).__name__}"])
        raise
    return ImportJob.objects.get(id=job.id)


IMPORT_MAX_ATTEMPTS = 3
_GAVE_UP = f"the worker stopped reporting (killed or lost) {IMPORT_MAX_ATTEMPTS} times: gave up"


def _silent_since(cutoff: Any) -> Q:
    """A running job whose last heartbeat (or, claimed before heartbeats, its start) is older."""
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)


def _finish(job: ImportJob, rows: Any, status: str, result: ImportResult, errors: list[str]) -> bool:
    """Record the outcome on `rows` (the attempt's claim); False when the claim is gone."""
    return bool(
        rows.update(
            status=status,
            rows_read=result.rows_read,
            items_created=result.items_created,
            items_existing=result.items_existing,
            judgments_created=result.judgments_created,
            errors=errors,
            finished_at=timezone.now(),
            format=job.format or result.format or "",
        )
    )


def recover_stale_imports(now: Any = None) -> dict[str, int]:
    """Periodic: imports whose worker stopped reporting (killed, lost) go back to the queue with
    their task sent again, or, after `IMPORT_MAX_ATTEMPTS`, are marked failed. Their rows rolled
    back with the dead connection; the stored upload is read again from the start."""
    from annotation.tasks import run_import_job

    now = now or timezone.now()
    return sweep_stale(
        ImportJob.objects.filter(_silent_since(now - stale_after()), status=ImportJob.Status.RUNNING),
        what="import job",
        name="uuid",
        max_attempts=IMPORT_MAX_ATTEMPTS,
        give_up=lambda attempts: {"status": ImportJob.Status.FAILED, "errors": [_GAVE_UP], "finished_at": now},
        requeue=lambda attempts: {"status": ImportJob.Status.PENDING},
        send=lambda job: run_import_job.delay(job["id"]),
    )


def import_file(*, project: Project, path: Path, fmt: str | None = None) -> ImportResult:
    """Import a file from disk in this process (the management command)."""
    try:
        with path.open("rb") as fh:
            return import_items(project=project, fileobj=fh, fmt=fmt)
    except FileNotFoundError:
        raise ImportRefused([RowError(0, f"no such file: {path}")]) from None
