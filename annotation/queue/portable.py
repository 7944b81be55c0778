"""The queue through the ORM: the hand-out's pick and the submit's writes on databases other than
PostgreSQL (the embedded SQLite default that `make run` starts).

The same decisions as the PostgreSQL statements in `sql.py`, in plain Django: no row locks (SQLite
takes one writer at a time), no SKIP LOCKED, counts worked out in Python. Only `handout` and
`submitting` call in here, and only where `sql.statements_apply()` says no (not PostgreSQL);
`tests/test_queue_parity.py` runs both on the same state and asserts the same hand-outs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet

from annotation import overlap
from annotation.models import Assignment, Item, Judgment, Project


def lease_next(
    project: Project, user: User, gold_first: bool, order: Callable[[int], list[int]], now: datetime
) -> Assignment | None:
    """The annotator's live lease; else, in one transaction, the pick (a gold item first when
    `gold_first`, else the best open item with a free slot they never had, else their expired
    lease on such an item) leased with its count on the item; or None. `order(n)` is the display
    order of an item with n responses."""
    live = (
        Assignment.objects.filter(annotator_id=user.pk, state=Assignment.State.LEASED, expires_at__gt=now)
        .filter(item__project=project)
        .exclude(item__status=Item.Status.DROPPED)
        .select_related("item")
        .order_by("leased_at")
        .first()
    )
    if live is not None:
        return live
    with transaction.atomic():
        item = (_pick(project, user, gold=True) if gold_first else None) or _pick(project, user, gold=False)
        if item is None:
            return _lease_again(project, user, now)
        assignment = Assignment.objects.create(
            uuid=uuid.uuid4(),
            item=item,
            annotator_id=user.pk,
            state=Assignment.State.LEASED,
            response_order=order(item.num_responses),
            is_gold=item.is_gold,
            leased_at=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
            schema_version=project.schema_version,
            guidelines_version=project.guidelines_version,
        )
    return assignment


def _open_for_humans(project: Project) -> QuerySet[Item]:
    """Open non-gold items routed to humans with a free slot of their overlap (`sql.HUMAN_SLOTS`)."""
    qs = Item.objects.filter(project=project, status=Item.Status.OPEN, is_gold=False)
    return qs.filter(overlap.free_slot_q(project.overlap), route__in=[Item.Route.HUMAN, Item.Route.BOTH])


def _pick(project: Project, user: User, *, gold: bool) -> Item | None:
    """The best open item (gold, or for humans with a free slot) this annotator never had, its
    lease counted (`sql.CANDIDATE`)."""
    seen = Assignment.objects.filter(item=OuterRef("pk"), annotator_id=user.pk)
    if gold:
        qs = Item.objects.filter(project=project, status=Item.Status.OPEN, is_gold=True)
    else:
        qs = _open_for_humans(project)
    item = qs.exclude(Exists(seen)).order_by("-priority", "id").first()
    if item is not None:
        Item.objects.filter(id=item.id).update(leased_count=F("leased_count") + 1)
        item.leased_count += 1
    return item


def _lease_again(project: Project, user: User, now: datetime) -> Assignment | None:
    """The annotator's expired lease on the best open item with a free slot, leased anew (the
    same row, uuid and display order), its lease counted on the item; or None (`sql.AGAIN`)."""
    again = (
        Assignment.objects.filter(
            annotator_id=user.pk, state=Assignment.State.EXPIRED, item__in=_open_for_humans(project)
        )
        .select_related("item")
        .order_by("-item__priority", "item_id")
        .first()
    )
    if again is None:
        return None
    fields = {
        "state": Assignment.State.LEASED,
        "leased_at": now,
        "expires_at": now + timedelta(seconds=project.lease_seconds),
        "finished_at": None,
        "schema_version": project.schema_version,
        "guidelines_version": project.guidelines_version,
    }
    if not Assignment.objects.filter(id=again.id, state=Assignment.State.EXPIRED).update(**fields):
        return None
    Item.objects.filter(id=again.item_id).update(leased_count=F("leased_count") + 1)
    for name, value in fields.items():
        setattr(again, name, value)
    again.item.leased_count += 1
    return again


def write_submit(assignment: Assignment, fields: dict[str, Any], *, lease_live: bool, now: datetime) -> Judgment:
    """Store the judgment, close the assignment and count the judgment on the item (done when
    full), in the caller's transaction, which holds the rows (`sql.SUBMIT_GATED`)."""
    item = assignment.item
    judgment = Judgment.objects.create(**fields)
    assignment.state, assignment.finished_at = Assignment.State.SUBMITTED, now
    Assignment.objects.filter(pk=assignment.pk).update(state=assignment.state, finished_at=now)
    item.human_count += 1
    if lease_live:
        item.leased_count = max(0, item.leased_count - 1)
    if not item.is_gold and item.status == Item.Status.OPEN and overlap.is_full(item.project.overlap, item):
        item.status = Item.Status.DONE
    Item.objects.filter(pk=item.pk).update(
        human_count=item.human_count, leased_count=item.leased_count, status=item.status
    )
    judgment.item = item
    return judgment
