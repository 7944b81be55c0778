"""Writes: every change to projects, members, imports and API tokens goes through these functions.

Each write that the audit log records (`annotation.audit.ACTIONS`) records it here, explicitly,
inside the write's own transaction: a write that rolls back leaves no event, and an event never
describes a write that did not happen. Only logins and Django admin changes are recorded by
signal receivers (`annotation.signals`), because Django offers no other hook for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from django.contrib.auth.models import User
from django.core.files.base import File
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from accounts.auth import TokenError, parse_scopes
from accounts.models import ApiToken
from annotation import audit
from annotation import overlap as overlap_rule
from annotation.importing import ImportRefused, ImportResult, RowError, import_items
from annotation.models import (
    Assignment,
    GuidelinesVersion,
    ImportJob,
    ImportJobSource,
    Item,
    Membership,
    MembershipRole,
    Project,
    RoutingPolicy,
    SchemaVersion,
)
from annotation.schema import JudgmentSchema, format_validation_error
from config.jobs import JobLost, claim_job, liveness, stale_after, sweep_stale

log = logging.getLogger(__name__)


class SpecError(ValueError):
    """A project spec that cannot be used, with a readable reason."""


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str
    role: MembershipRole


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
    routing_policy: RoutingPolicy = Field(
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


def project_create(*, spec: ProjectSpec, created_by: User | None) -> Project:
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
        _record_project_created(project)
    return project


def project_add(*, project: Project, by: User | None) -> Project:
    """Save a project built elsewhere (the admin's form) with version 1 of its schema and
    guidelines, as `project_create` makes one."""
    with transaction.atomic():
        project.created_by = project.created_by or by
        project.save()
        SchemaVersion.objects.create(project=project, version=project.schema_version, schema=project.schema)
        GuidelinesVersion.objects.create(project=project, version=project.guidelines_version, text=project.guidelines)
        _record_project_created(project)
    return project


def _record_project_created(project: Project) -> None:
    audit.record(
        project.created_by,
        "project.create",
        project=project,
        target=project,
        details={"slug": project.slug, "schema": project.schema},
    )


def project_set_schema(*, project: Project, schema: JudgmentSchema, by: User | None) -> Project:
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


def project_set_guidelines(*, project: Project, text: str, by: User | None) -> Project:
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
    by: User,
    request: HttpRequest | None = None,
) -> Project:
    """A curator's edit of the schema and guidelines (the project's settings page): each that
    changed becomes a new version through `project_set_schema` / `project_set_guidelines`, as the
    admin's edits do, and the change is in the audit log."""
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
        record_settings_changed(project=after, changes=changes, by=by, request=request)
    return after


def record_settings_changed(
    *, project: Project, changes: dict[str, Any], by: User | None, request: HttpRequest | None = None
) -> None:
    """The one `project.settings` event, for any service that changes a project's settings (the
    texts here, the routing settings in `models_srv.services`); nothing changed, nothing recorded.
    Call it inside the change's transaction."""
    if changes:
        audit.record(by, "project.settings", project=project, target=project, details=changes, request=request)


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
        full = overlap_rule.full_q(overlap)
        items.filter(full, status=Item.Status.OPEN).update(status=Item.Status.DONE)
        items.filter(~full, status=Item.Status.DONE).update(status=Item.Status.OPEN)
    return locked


# ---------------------------------------------------------------------------------------------
# Members. Each change runs in one transaction with the project row locked, so two curators
# demoting each other at once cannot leave the project without one.


class MembershipError(ValueError):
    """A membership change that cannot be made, with a reason to show."""


def _lock(project: Project) -> Project:
    return Project.objects.select_for_update().get(pk=project.pk)


def _curator_count(project: Project) -> int:
    return Membership.objects.filter(project=project, role=Membership.Role.CURATOR).count()


def _check_role(role: str) -> None:
    if role not in Membership.Role.values:
        raise MembershipError(f"role must be one of {', '.join(Membership.Role.values)}")


def _record_member_added(membership: Membership, by: Any, request: HttpRequest | None) -> None:
    details = {"user": membership.user.get_username(), "role": membership.role}
    audit.record(by, "membership.add", project=membership.project, target=membership, details=details, request=request)


def _record_role_changed(membership: Membership, old: str, by: Any, request: HttpRequest | None) -> None:
    details = {"user": membership.user.get_username(), "from": old, "to": membership.role}
    audit.record(
        by, "membership.change", project=membership.project, target=membership, details=details, request=request
    )


def membership_set(*, project: Project, user: User, role: MembershipRole | str) -> Membership:
    """Seed a membership without an actor (a spec's members, the demo, commands): not an audited
    action, as the members a project is created with are part of its `project.create` event.
    A curator's changes go through `member_add`, `member_set_role` and `member_remove`."""
    _check_role(role)
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def member_add(
    *, project: Project, username: str, role: str, by: User, request: HttpRequest | None = None
) -> Membership:
    from django.contrib.auth import get_user_model

    username = username.strip()
    _check_role(role)
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise MembershipError(f"There is no user named {username!r}; check the spelling or create the account first.")
    if not user.is_active:
        raise MembershipError(f"The account {username!r} is deactivated.")
    with transaction.atomic():
        _lock(project)
        existing = Membership.objects.filter(project=project, user=user).first()
        if existing is not None:
            raise MembershipError(f"{username} is already a member ({existing.role}); change the role in the list.")
        membership = Membership.objects.create(project=project, user=user, role=role)
        _record_member_added(membership, by, request)
    return membership


def member_set_role(*, membership: Membership, role: str, by: User, request: HttpRequest | None = None) -> Membership:
    _check_role(role)
    with transaction.atomic():
        project = _lock(membership.project)
        current = Membership.objects.select_related("user", "project").get(pk=membership.pk)
        if current.role == role:
            return current
        if current.role == Membership.Role.CURATOR and _curator_count(project) <= 1:
            raise MembershipError(
                f"{current.user.username} is the project's last curator; make someone else curator first."
            )
        old, current.role = current.role, role
        current.save(update_fields=["role"])
        _record_role_changed(current, old, by, request)
    return current


def member_remove(*, membership: Membership, by: User, request: HttpRequest | None = None) -> None:
    """Remove a member; the items they hold go back to the queue (the membership's delete
    receiver gives back the leases, however a membership is deleted)."""
    with transaction.atomic():
        project = _lock(membership.project)
        current = Membership.objects.select_related("user").filter(pk=membership.pk).first()
        if current is None:
            return  # removed already (a double click)
        if current.role == Membership.Role.CURATOR and _curator_count(project) <= 1:
            raise MembershipError(f"{current.user.username} is the project's last curator and cannot be removed.")
        details: dict[str, str | int] = {"user": current.user.username, "role": current.role}
        target = ("annotation.membership", current.pk, str(current))
        held = Assignment.objects.filter(
            annotator_id=current.user_id, item__project=project, state=Assignment.State.LEASED
        ).count()
        if held:
            details["leases_released"] = held
        current.delete()
        audit.record(by, "membership.remove", project=project, target=target, details=details, request=request)


# ---------------------------------------------------------------------------------------------
# Import jobs: an upload (page or API) becomes a job; a Celery task runs it.


def import_job_create(
    *,
    project: Project,
    upload: IO[bytes],
    name: str,
    source: ImportJobSource,
    created_by: User | None,
    fmt: str = "",
) -> ImportJob:
    """Store the upload and queue its import once the transaction commits."""
    from annotation.tasks import run_import_job

    job = ImportJob(project=project, created_by=created_by, source=source, original_name=name[:255], format=fmt)
    job.file.save(Path(name).name[-100:] or "upload", File(upload), save=False)
    with transaction.atomic():
        job.save()
        audit.record(
            created_by,
            "import.start",
            project=project,
            target=("annotation.importjob", job.uuid, job.original_name or "(file)"),
            details={"source": job.source, "file": job.original_name, "format": job.format},
        )
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


# ---------------------------------------------------------------------------------------------
# API tokens (the model and the bearer authentication are in the accounts app).


def token_create(*, user: User, name: str, scopes: Iterable[str] | str) -> tuple[ApiToken, str]:
    """Store a new token (only its hash) and return it with its key, which is never shown again."""
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise TokenError("a token needs a name of 1 to 100 characters")
    key = ApiToken.new_key()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, key_hash=ApiToken.hash_key(key), scopes=parse_scopes(scopes)
        )
        audit.record(user, "token.create", target=token, details={"name": token.name, "scopes": token.scopes})
    return token, key


def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token at once; revoking twice keeps the first time (and records one event)."""
    with transaction.atomic():
        row = ApiToken.objects.select_for_update().select_related("user").get(pk=token.pk)
        if row.revoked_at is None:
            row.revoked_at = timezone.now()
            row.save(update_fields=["revoked_at"])
            audit.record(row.user, "token.revoke", target=row, details={"name": row.name, "scopes": row.scopes})
    token.refresh_from_db()
    return token


def token_delete(*, token: ApiToken, by: User | None = None) -> None:
    """Delete a token (the admin); a revoked token stays listed, so revoking is the usual way."""
    with transaction.atomic():
        row = ApiToken.objects.select_for_update().select_related("user").filter(pk=token.pk).first()
        if row is None:
            return
        target = ("accounts.apitoken", row.pk, str(row))
        row.delete()
        audit.record(by, "token.delete", target=target)
