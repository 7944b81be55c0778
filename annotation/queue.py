"""The human annotation queue: leasing the next item, submitting, skipping, flagging, expiring.

Invariants, kept under row locks inside one transaction per call:
- an item never has more than its overlap of human judgments plus live leases
  (`Item.human_count + Item.leased_count <= project.overlap + Item.extra_overlap`; a curator who
  sends an item back for another look raises `extra_overlap`);
- an annotator is never handed the same item twice (and the database refuses a second
  assignment row for the same item and annotator);
- a lease that runs out returns its slot to the queue (`reap_expired_leases`, run before every
  hand-out and by a periodic task);
- submitting the same assignment twice stores one judgment.

Responses are shown in a per-assignment random order (`Assignment.response_order`, stored display
position -> stored index). Answers arrive in display order and are mapped back to the stored
order here, so position bias can be measured and undone and the client cannot mislabel it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, Subquery
from django.utils import timezone

from annotation.models import Assignment, Item, Judgment, Labeler, Project
from annotation.schema import JudgmentSchema, PayloadError


class QueueError(Exception):
    """An action on an assignment that cannot be carried out, with a reason to show."""


@dataclass(frozen=True)
class Submitted:
    judgment: Judgment
    created: bool


def human_labeler(user: AbstractBaseUser) -> Labeler:
    """The user's labeler row, created on first use (safe when two requests race to create it)."""
    labeler = Labeler.objects.filter(user=user).first()
    if labeler is not None:
        return labeler
    try:
        with transaction.atomic():
            return Labeler.objects.create(user=user, kind=Labeler.Kind.HUMAN, name=user.get_username())
    except IntegrityError:
        return Labeler.objects.get(user=user)


_last_reap = 0.0
REAP_EVERY_SECONDS = 2.0


def reap_expired_leases_throttled() -> None:
    """Reap at most every REAP_EVERY_SECONDS per process (plus the periodic task), so a busy
    queue does not pay an extra transaction on every hand-out."""
    global _last_reap
    now = time.monotonic()
    if now - _last_reap >= REAP_EVERY_SECONDS:
        _last_reap = now
        reap_expired_leases()


def reap_expired_leases(now: Any = None) -> int:
    """Expire leases past their time and give their slots back. Safe to run concurrently:
    each lease is flipped by exactly one UPDATE, and only flipped leases give a slot back."""
    now = now or timezone.now()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE annotation_assignment SET state = %s, finished_at = %s "
                "WHERE state = %s AND expires_at <= %s RETURNING item_id",
                [Assignment.State.EXPIRED, now, Assignment.State.LEASED, now],
            )
            item_ids = [row[0] for row in cursor.fetchall()]
        for item_id in item_ids:
            Item.objects.filter(id=item_id, leased_count__gt=0).update(leased_count=F("leased_count") - 1)
    return len(item_ids)


def next_assignment(*, project: Project, user: AbstractBaseUser, rng: random.Random | None = None) -> Assignment | None:
    """The annotator's live lease in this project, or a new one, or None when nothing is left."""
    rng = rng or random.Random()
    reap_expired_leases_throttled()
    assignment = _lease_next_retrying(project, user, rng)
    if assignment is None and reap_expired_leases() > 0:
        assignment = _lease_next_retrying(project, user, rng)  # an expired lease may have freed a slot
    return assignment


def _lease_next_retrying(project: Project, user: AbstractBaseUser, rng: random.Random) -> Assignment | None:
    """Two requests of one annotator (two tabs) can pick the same item at once: a pick whose
    snapshot predates the other's commit still sees the item as never handed to them. The database
    refuses the second assignment row; the hand-out is then rolled back whole and tried again,
    and finds the other request's lease."""
    for attempt in range(3):
        try:
            return _lease_next(project, user, rng)
        except IntegrityError:
            if attempt == 2:
                raise
    return None


def _lease_next(project: Project, user: AbstractBaseUser, rng: random.Random) -> Assignment | None:
    now = timezone.now()
    with transaction.atomic():
        live = (
            Assignment.objects.select_related("item")
            .filter(annotator=user, item__project=project, state=Assignment.State.LEASED, expires_at__gt=now)
            .order_by("leased_at")
            .first()
        )
        if live is not None:
            return live
        want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
        item = (_pick(project, user, gold=True) if want_gold else None) or _pick(project, user, gold=False)
        if item is None:
            return None
        order = list(range(item.num_responses))
        rng.shuffle(order)
        assignment = Assignment.objects.create(
            item=item,
            annotator=user,
            response_order=order,
            is_gold=item.is_gold,
            leased_at=now,
            expires_at=now + timedelta(seconds=project.lease_seconds),
        )
    assignment.item = item
    return assignment


_PICK_SQL = """
WITH picked AS (
    SELECT i.id FROM annotation_item i
    WHERE i.project_id = %(project)s AND i.status = 'open' AND i.is_gold = %(gold)s {human_slots}
      AND NOT EXISTS (
          SELECT 1 FROM annotation_assignment a
          WHERE a.item_id = i.id AND a.annotator_id + 0 = %(annotator)s
          OFFSET 0
      )
    ORDER BY i.priority DESC, i.id
    LIMIT 1
    FOR UPDATE OF i SKIP LOCKED
)
UPDATE annotation_item SET leased_count = annotation_item.leased_count + 1
FROM picked WHERE annotation_item.id = picked.id
RETURNING annotation_item.*
"""
# Routed to humans (the router sent the rest to AI), with a free slot of the item's overlap.
_HUMAN_SLOTS = "AND i.route IN ('human', 'both') AND i.human_count < %(overlap)s + i.extra_overlap - i.leased_count"


def _pick(project: Project, user: AbstractBaseUser, *, gold: bool) -> Item | None:
    """One indexed statement: the best open item with a free slot this annotator has never had,
    locked with FOR UPDATE SKIP LOCKED (concurrent hand-outs never wait on or share a row) and its
    lease counted (`leased_count + 1`) in the same statement, which returns the updated row.

    "Never had" is checked item by item through the item's few assignments: `OFFSET 0` keeps
    PostgreSQL from turning it into an anti-join and `annotator_id + 0` from probing the
    annotator's index. Left to itself, with statistics not yet gathered on a fresh project, the
    planner scanned all of the annotator's assignments for every candidate item: 80-90 ms per
    hand-out after 1,000 judgments, growing with the square of the annotator's history."""
    if connection.vendor == "postgresql":
        sql = _PICK_SQL.format(human_slots="" if gold else _HUMAN_SLOTS)
        params = {"project": project.pk, "gold": gold, "annotator": user.pk, "overlap": project.overlap}
        rows = list(Item.objects.raw(sql, params))
        return rows[0] if rows else None
    # The embedded SQLite default: the same query through the ORM, then the counter.
    seen = Assignment.objects.filter(item=OuterRef("pk"), annotator=user)
    qs = Item.objects.filter(project=project, status=Item.Status.OPEN, is_gold=gold).exclude(Exists(seen))
    if not gold:
        qs = qs.filter(route__in=[Item.Route.HUMAN, Item.Route.BOTH])
        qs = qs.filter(human_count__lt=project.overlap + F("extra_overlap") - F("leased_count"))
    item = qs.order_by("-priority", "id").first()
    if item is not None:
        Item.objects.filter(id=item.id).update(leased_count=F("leased_count") + 1)
        item.leased_count += 1
    return item


def to_stored_order(payload: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """Map an answer given in display order onto the stored order of the responses."""
    if not isinstance(payload, dict):
        raise PayloadError("a judgment payload is a JSON object")
    n = len(order)
    out = dict(payload)
    pairwise = payload.get("pairwise")
    if isinstance(pairwise, dict) and pairwise.get("choice") in ("A", "B"):
        shown = 0 if pairwise["choice"] == "A" else 1
        out["pairwise"] = {**pairwise, "choice": "AB"[order[shown]]}
    for key in ("ranking", "rubric"):
        values = payload.get(key)
        if isinstance(values, list):
            if len(values) != n:
                raise PayloadError(f"{key} must give one entry per response ({n})")
            stored: list[Any] = [None] * n
            for shown, value in enumerate(values):
                stored[order[shown]] = value
            out[key] = stored
    spans = payload.get("spans")
    if isinstance(spans, list):
        mapped = []
        for mark in spans:
            if not isinstance(mark, dict) or not isinstance(mark.get("response"), int) or not 0 <= mark["response"] < n:
                raise PayloadError("each span names a response shown on screen")
            mapped.append({**mark, "response": order[mark["response"]]})
        out["spans"] = mapped
    return out


def gold_score(schema: JudgmentSchema, answer: dict[str, Any], gold: dict[str, Any]) -> float | None:
    """Agreement of an answer with the gold answer, 0..1, averaged over the parts gold gives."""
    parts: list[float] = []
    if gold.get("pairwise") and answer.get("pairwise"):
        parts.append(1.0 if answer["pairwise"]["choice"] == gold["pairwise"]["choice"] else 0.0)
    if gold.get("ranking") and answer.get("ranking"):
        g, a = gold["ranking"], answer["ranking"]
        pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g)) if g[i] != g[j]]
        if pairs:
            parts.append(sum((g[i] < g[j]) == (a[i] < a[j]) for i, j in pairs) / len(pairs))
    if gold.get("rubric") and answer.get("rubric") and schema.rubric:
        spans = {a.name: a.scale.max - a.scale.min for a in schema.rubric.aspects}
        errors = [
            abs(ratings[name] - answer["rubric"][i].get(name, ratings[name])) / spans[name]
            for i, ratings in enumerate(gold["rubric"])
            for name in ratings
            if name in spans
        ]
        if errors:
            parts.append(1.0 - sum(errors) / len(errors))
    return sum(parts) / len(parts) if parts else None


class NoSuchAssignmentError(QueueError):
    """Not this annotator's assignment (or not in a project they belong to)."""


def submit(
    *,
    assignment_id: int | None = None,
    assignment_uuid: Any = None,
    user: AbstractBaseUser,
    payload: dict[str, Any],
    time_spent_ms: int | None = None,
) -> Submitted:
    """Store the annotator's judgment for this assignment (by id, or by the uuid the page holds:
    then the annotator must still be a member of its project). Idempotent: a second submit of the
    same assignment returns the first judgment unchanged."""
    mine = Assignment.objects.filter(annotator=user)
    if assignment_uuid is not None:
        mine = mine.filter(uuid=assignment_uuid, item__project__memberships__user=user)
    else:
        mine = mine.filter(id=assignment_id)
    with transaction.atomic():
        assignment = (
            mine.select_for_update(of=("self", "item"))
            .select_related("item__project")
            .annotate(labeler_id=Subquery(Labeler.objects.filter(user=user).values("id")[:1]))  # same trip
            .first()
        )
        if assignment is None:
            raise NoSuchAssignmentError("no such assignment")
        if assignment.state == Assignment.State.SUBMITTED:
            first = Judgment.objects.get(assignment=assignment)
            first.item = assignment.item
            return Submitted(first, created=False)
        if assignment.state == Assignment.State.SKIPPED:
            raise QueueError("this item was skipped; it can no longer be answered")
        item = assignment.item  # locked with the assignment
        project = item.project
        now = timezone.now()
        lease_live = assignment.state == Assignment.State.LEASED
        if lease_live and assignment.expires_at <= now:
            # Expired but not reaped yet: reap it here, under the item lock.
            lease_live = False
            item.leased_count = max(0, item.leased_count - 1)
        if (
            not lease_live
            and not item.is_gold
            and item.human_count + item.leased_count >= project.overlap + item.extra_overlap
        ):
            raise QueueError("the lease on this item ran out and it went to another annotator")
        schema = project.judgment_schema
        stored = to_stored_order(payload, assignment.response_order)
        parsed = schema.validate_payload(stored, item.response_texts)
        canonical = parsed.model_dump(exclude_none=True)
        elapsed_ms = int((now - assignment.leased_at).total_seconds() * 1000)
        spent = elapsed_ms if time_spent_ms is None else max(0, min(int(time_spent_ms), elapsed_ms))
        judgment = Judgment.objects.create(
            item=item,
            labeler_id=assignment.labeler_id or human_labeler(user).pk,
            assignment=assignment,
            payload=canonical,
            schema_version=project.schema_version,
            guidelines_version=project.guidelines_version,
            response_order=assignment.response_order,
            time_spent_ms=spent,
            gold_score=gold_score(schema, canonical, item.gold_answer) if item.is_gold else None,
        )
        assignment.state = Assignment.State.SUBMITTED
        assignment.finished_at = now
        assignment.save(update_fields=["state", "finished_at"])
        item.human_count += 1
        if lease_live:
            item.leased_count = max(0, item.leased_count - 1)
        if (
            not item.is_gold
            and item.status == Item.Status.OPEN
            and item.human_count >= project.overlap + item.extra_overlap
        ):
            item.status = Item.Status.DONE
        item.save(update_fields=["human_count", "leased_count", "status"])
    return Submitted(judgment, created=True)


def skip(*, assignment_id: int, user: AbstractBaseUser, reason: str = "", flag: bool = False) -> Assignment:
    """Give the item back without answering; with `flag`, also report it (the reason is required)."""
    reason = reason.strip()[:500]
    if flag and not reason:
        raise QueueError("say why you flag this item")
    with transaction.atomic():
        assignment = Assignment.objects.select_for_update().filter(id=assignment_id, annotator=user).first()
        if assignment is None:
            raise QueueError("no such assignment")
        if assignment.state in (Assignment.State.SUBMITTED, Assignment.State.SKIPPED):
            return assignment
        gives_back_slot = assignment.state == Assignment.State.LEASED
        assignment.state = Assignment.State.SKIPPED
        assignment.finished_at = timezone.now()
        assignment.skip_reason = reason if not flag else ""
        assignment.flagged = flag
        assignment.flag_reason = reason if flag else ""
        assignment.save(update_fields=["state", "finished_at", "skip_reason", "flagged", "flag_reason"])
        if gives_back_slot:
            Item.objects.filter(id=assignment.item_id, leased_count__gt=0).update(leased_count=F("leased_count") - 1)
    return assignment
