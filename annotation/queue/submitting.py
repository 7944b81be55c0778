"""The annotator's answer to a lease: submit (store one judgment, idempotently) or skip.

A submit on PostgreSQL first tries the optimistic path (an unlocked read, then one gated
statement: `sql.SUBMIT_GATED`); whatever that cannot decide, and every submit elsewhere, takes the
locking path (the same read with FOR UPDATE OF a, i, the checks under the locks, then the same
statement on PostgreSQL or `portable.write_submit`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation import overlap, rows
from annotation.models import Assignment, Item, Judgment, Labeler, Project, SchemaVersion
from annotation.queue import portable, sql
from annotation.queue.answers import gold_score, to_stored_order
from annotation.queue.leases import give_back_slot
from annotation.queue.sql import AnnotatorDay
from annotation.schema import JudgmentSchema, PayloadError

MAX_TIME_SPENT_MS = 2**31 - 1  # the column's range (24.8 days)


class QueueError(Exception):
    """An action on an assignment that cannot be carried out, with a reason to show."""


class NoSuchAssignmentError(QueueError):
    """Not this annotator's assignment (or not in a project they belong to)."""


@dataclass(frozen=True)
class Submitted:
    judgment: Judgment
    created: bool
    stats: AnnotatorDay | None = None  # the annotator's counts after this submit (None on a repeat)


def submit(
    *,
    assignment_id: int | None = None,
    assignment_uuid: Any = None,
    user: User,
    payload: dict[str, Any],
    time_spent_ms: int | None = None,
) -> Submitted:
    """Store the annotator's judgment for this assignment (by id, or by the uuid the page holds:
    then the annotator must still be a member of its project). Idempotent: a second submit of the
    same assignment returns the first judgment unchanged. Inside a caller's transaction it takes
    no savepoint: a refusal (QueueError, PayloadError) leaves that transaction usable, but a
    database error inside it spoils the caller's whole transaction.

    On PostgreSQL the usual case, a live lease answered once, takes two statements and no explicit
    transaction (`_submit_optimistic`); everything else (a repeat, a skipped item, a lease that ran
    out, a lease that changed in between) goes through the locking path below."""
    if assignment_uuid is not None and getattr(user, "is_superuser", False):  # site admins reach every project
        by, params = sql.BY_UUID, [_UUID_FIELD.get_db_prep_value(assignment_uuid, connection)]
    elif assignment_uuid is not None:
        by, params = sql.BY_UUID_MEMBER, [_UUID_FIELD.get_db_prep_value(assignment_uuid, connection), user.pk]
    else:
        by, params = sql.BY_ID, [assignment_id]
    read = sql.SUBMIT_READ.format(by=by)
    params = [user.pk, user.pk, *params]
    if sql.statements_apply():
        done = _submit_optimistic(read, params, user, payload, time_spent_ms)
        if done is not None:
            return done
    if connection.features.has_select_for_update_of:
        read += " FOR UPDATE OF a, i"
    # No savepoint: inside a caller's transaction this is part of it. A refusal is raised after
    # the block, so it happens before any write and leaves the caller's transaction usable.
    with transaction.atomic(savepoint=False):
        try:
            return _submit_locked(read, params, user, payload, time_spent_ms)
        except (QueueError, PayloadError) as exc:
            refused = exc
    raise refused


_UUID_FIELD = Assignment._meta.get_field("uuid")


def _load_for_submit(read: str, params: list[Any]) -> Assignment:
    """The assignment with its item and project, and the annotator's labeler id: one trip."""
    row = rows.fetch_one(read, params)
    if row is None:
        raise NoSuchAssignmentError("no such assignment")
    assignment = sql.A.load(row)
    assignment.item = sql.I.load(row, sql.A.width)
    assignment.item.project = sql.P.load(row, sql.A.width + sql.I.width)
    assignment.labeler_id = row[-1]  # type: ignore[attr-defined]  # carried to _judgment_fields
    return assignment


def _submit_optimistic(
    read: str, params: list[Any], user: User, payload: dict[str, Any], time_spent_ms: int | None
) -> Submitted | None:
    """The usual submit on PostgreSQL, a live lease answered once: read without locking, check and
    validate, then one statement that writes only if the lease is still live and this annotator's.
    Two statements and no explicit transaction, where the locking path takes five round trips
    (BEGIN, the locking read, the writes, COMMIT). None when the locking path must decide: the
    lease was not live when read (a repeat, a skip, a lease that ran out) or changed before the
    write (a second submit or the reaper got there first)."""
    assignment = _load_for_submit(read, params)
    now = timezone.now()
    if assignment.state != Assignment.State.LEASED or assignment.expires_at <= now:
        return None
    if assignment.item.status == Item.Status.DROPPED:
        return None  # withdrawn by a curator: the locking path refuses it with the reason
    fields = _judgment_fields(assignment, user, payload, time_spent_ms, now)
    return _submit_gated(assignment, fields, user, found=Assignment.State.LEASED, live_only=True, now=now)


def _submit_locked(
    read: str, params: list[Any], user: User, payload: dict[str, Any], time_spent_ms: int | None
) -> Submitted:
    assignment = _load_for_submit(read, params)
    if assignment.state == Assignment.State.SUBMITTED:
        first = Judgment.objects.get(assignment=assignment)
        first.item = assignment.item
        return Submitted(first, created=False)
    if assignment.state == Assignment.State.SKIPPED:
        raise QueueError("this item was skipped; it can no longer be answered")
    item = assignment.item  # locked with the assignment
    if item.status == Item.Status.DROPPED:
        raise QueueError("a curator withdrew this item from the queue; it can no longer be answered")
    now = timezone.now()
    found = assignment.state
    lease_live = found == Assignment.State.LEASED
    if lease_live and assignment.expires_at <= now:
        # Expired but not reaped yet: reap it here, under the item lock.
        lease_live = False
        item.leased_count = max(0, item.leased_count - 1)
    if not lease_live and not item.is_gold and not overlap.has_free_slot(item.project.overlap, item):
        raise QueueError("the lease on this item ran out and it went to another annotator")
    fields = _judgment_fields(assignment, user, payload, time_spent_ms, now)
    if sql.statements_apply():
        done = _submit_gated(assignment, fields, user, found=found, live_only=False, now=now)
        if done is None:  # not under the locks just taken: the state the gate asks for is the one found
            raise QueueError("this item changed while it was being answered; please submit again")
        return done
    judgment = portable.write_submit(assignment, fields, lease_live=lease_live, now=now)
    stats = bump_stats(project_id=item.project_id, user_id=user.pk, now=now, judged=1, time_ms=fields["time_spent_ms"])
    return Submitted(judgment, created=True, stats=stats)


def _submit_gated(
    assignment: Assignment, fields: dict[str, Any], user: User, *, found: str, live_only: bool, now: Any
) -> Submitted | None:
    """Run `sql.SUBMIT_GATED`; None when its gate found the assignment changed."""
    item = assignment.item
    cols, values, judgment_params = rows.insert_parts(Judgment, fields)
    write_params = {
        "now": now,
        "assignment": assignment.pk,
        "user": user.pk,
        "from_state": found,
        "live_only": live_only,
        "release": 1 if found == Assignment.State.LEASED else 0,
        "overlap": item.project.overlap,
        "project": item.project_id,
        "day": now.date(),
        "judged": 1,
        "skipped": 0,
        "time_ms": fields["time_spent_ms"],
    }
    row = rows.fetch_one(sql.SUBMIT_GATED.format(cols=cols, values=values), {**write_params, **judgment_params})
    if row is None:
        return None
    judgment_id, item.human_count, item.leased_count, item.status = row[:4]
    assignment.state, assignment.finished_at = Assignment.State.SUBMITTED, now
    judgment = Judgment(id=judgment_id, **fields)
    judgment._state.adding = False
    judgment.item = item
    return Submitted(judgment, created=True, stats=AnnotatorDay.from_row(row[4:], now.date()))


def schema_at(project: Project, version: int | None) -> tuple[int, JudgmentSchema]:
    """The project's schema version and schema as they were at `version`: the current ones
    without a query, and where that version was not kept (or None is asked for)."""
    if version is not None and version != project.schema_version:
        stored = SchemaVersion.objects.filter(project_id=project.pk, version=version).values_list("schema", flat=True)
        data = stored.first()
        if data is not None:
            return version, JudgmentSchema.model_validate(data)
    return project.schema_version, project.judgment_schema


def _judgment_fields(
    assignment: Assignment, user: User, payload: dict[str, Any], time_spent_ms: int | None, now: Any
) -> dict[str, Any]:
    """The judgment's fields: the answer mapped to the stored order and validated against the
    schema (PayloadError otherwise), its gold score, the versions it was made under, the time."""
    item = assignment.item
    project = item.project
    schema_version, schema = schema_at(project, assignment.schema_version)
    stored = to_stored_order(payload, assignment.response_order)
    parsed = schema.validate_payload(stored, item.response_texts)
    canonical = parsed.model_dump(exclude_none=True)
    elapsed_ms = int((now - assignment.leased_at).total_seconds() * 1000)
    if time_spent_ms is None:
        # No timer from the page (a form without script): the time since the lease began, but
        # not beyond the lease, for an answer sent after it ran out holds idle time too.
        spent = min(elapsed_ms, project.lease_seconds * 1000)
    else:
        spent = max(0, min(int(time_spent_ms), elapsed_ms))
    spent = min(spent, MAX_TIME_SPENT_MS)
    return {
        "uuid": uuid.uuid4(),
        "item_id": item.pk,
        "labeler_id": assignment.labeler_id or human_labeler(user).pk,  # type: ignore[attr-defined]
        "assignment_id": assignment.pk,
        "payload": canonical,
        "schema_version": schema_version,
        "guidelines_version": assignment.guidelines_version or project.guidelines_version,
        "response_order": assignment.response_order,
        "time_spent_ms": spent,
        "gold_score": gold_score(schema, canonical, item.gold_answer or {}) if item.is_gold else None,
        "created_at": now,
    }


def human_labeler(user: User) -> Labeler:
    """The user's labeler row, created on first use (safe when two requests race to create it)."""
    labeler = Labeler.objects.filter(user_id=user.pk).first()
    if labeler is not None:
        return labeler
    try:
        with transaction.atomic():
            return Labeler.objects.create(user_id=user.pk, kind=Labeler.Kind.HUMAN, name=user.get_username())
    except IntegrityError:
        return Labeler.objects.get(user_id=user.pk)


def bump_stats(
    *, project_id: int, user_id: int, now: Any, judged: int = 0, skipped: int = 0, time_ms: int = 0
) -> AnnotatorDay:
    """Count a submit or skip in the annotator's stats (one upsert, in the caller's transaction)."""
    today = now.date()
    params = {"project": project_id, "user": user_id, "day": today, "judged": judged, "skipped": skipped}
    row = rows.fetch_one(sql.BUMP_STATS, {**params, "time_ms": time_ms})
    return AnnotatorDay.from_row(row, today)


def skip(*, assignment_id: int, user: User, reason: str = "", flag: bool = False) -> Assignment:
    """Give the item back without answering; with `flag`, also report it (the reason is required)."""
    reason = reason.strip()[:500]
    if flag and not reason:
        raise QueueError("say why you flag this item")
    with transaction.atomic():
        assignment = Assignment.objects.select_for_update().filter(id=assignment_id, annotator_id=user.pk).first()
        if assignment is None:
            raise QueueError("no such assignment")
        if assignment.state in (Assignment.State.SUBMITTED, Assignment.State.SKIPPED):
            return assignment
        gives_back_slot = assignment.state == Assignment.State.LEASED
        assignment.state = Assignment.State.SKIPPED
        assignment.finished_at = timezone.now()
        project_id = Item.objects.filter(id=assignment.item_id).values_list("project_id", flat=True).get()
        bump_stats(project_id=project_id, user_id=user.pk, now=assignment.finished_at, skipped=1)
        assignment.skip_reason = reason if not flag else ""
        assignment.flagged = flag
        assignment.flag_reason = reason if flag else ""
        assignment.save(update_fields=["state", "finished_at", "skip_reason", "flagged", "flag_reason"])
        if gives_back_slot:
            give_back_slot(assignment.item_id)
    return assignment
