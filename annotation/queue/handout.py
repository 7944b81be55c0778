"""The hand-out: the annotator's live lease in a project, else a new one, else nothing.

`hand_out` draws the random parts (gold first or not, the display order) and hands them to one of
two implementations of the same pick: one statement on PostgreSQL (`_lease_pg`, the text in
`sql.py`), the ORM elsewhere (`portable.lease_next`, the embedded SQLite default).
`tests/test_queue_parity.py` holds the two to the same hand-outs for the same state and draws.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError
from django.utils import timezone

from annotation import rows
from annotation.models import Assignment, Project
from annotation.queue import portable, sql
from annotation.queue.leases import reap_expired_leases, reap_expired_leases_throttled
from annotation.queue.sql import AnnotatorDay


@dataclass(frozen=True)
class Handout:
    """What a hand-out found: the annotator's lease (None when nothing is left for them) and, where
    the same statement read them, their counts in the project."""

    assignment: Assignment | None
    stats: AnnotatorDay | None = None


@dataclass(frozen=True)
class Draw:
    """The random parts of a hand-out: whether a gold item is tried first, and a permutation of
    0..MAX_RESPONSES-1 whose values below an item's response count, in order, are its display
    order (a uniformly random order of its responses)."""

    gold_first: bool
    perm: list[int]

    @classmethod
    def make(cls, project: Project, rng: random.Random) -> Draw:
        gold_first = project.gold_rate > 0 and rng.random() < project.gold_rate
        perm = list(range(sql.MAX_RESPONSES))
        rng.shuffle(perm)
        return cls(gold_first, perm)

    def order(self, num_responses: int) -> list[int]:
        return [x for x in self.perm if x < num_responses]


# One generator per process, seeded anew in each forked worker (gunicorn forks after import), so
# workers never share a sequence of display orders; seeding a new one per hand-out from the OS's
# entropy cost measurable time on the hot path.
_RNG = random.Random()
os.register_at_fork(after_in_child=_RNG.seed)


def next_assignment(*, project: Project, user: User, rng: random.Random | None = None) -> Assignment | None:
    """The annotator's live lease in this project, or a new one, or None when nothing is left."""
    return hand_out(project=project, user=user, rng=rng).assignment


def hand_out(*, project: Project, user: User, rng: random.Random | None = None) -> Handout:
    """`next_assignment`, with the annotator's counts when they came with it."""
    rng = rng or _RNG
    reap_expired_leases_throttled()
    handout = _lease(project, user, Draw.make(project, rng))
    if handout.assignment is None and reap_expired_leases() > 0:
        handout = _lease(project, user, Draw.make(project, rng))  # an expired lease may have freed a slot
    return handout


def _lease(project: Project, user: User, draw: Draw) -> Handout:
    """One hand-out, one draw for every try (an empty queue does not raise the rate of gold items).

    Two requests of one annotator (two tabs) can pick the same item at once: a pick whose snapshot
    predates the other's commit still sees the item as never handed to them, and the database
    refuses the second assignment row. On PostgreSQL the statement's INSERT then does nothing (ON
    CONFLICT DO NOTHING, and the item's lease is only counted for a row that went in) and comes
    back empty, so an empty answer is asked once more, and that finds the other request's lease.
    An answer that is empty again while something is left (the candidates' rows were locked by
    other hand-outs still in flight, which SKIP LOCKED passes by, or another request of the
    annotator's committed a lease since) is asked again after a short pause, three times at most.
    Elsewhere the hand-out is rolled back whole and tried again."""
    if sql.statements_apply():
        handout = _lease_pg(project, user, draw)
        for pause in (0.0, 0.005, 0.02, 0.05):
            if handout.assignment is not None:
                break
            if pause and not _anything_left(project, user, draw.gold_first):
                break  # empty because nothing is left, not because others held the rows a moment
            time.sleep(pause)
            handout = _lease_pg(project, user, draw)
        return handout
    for attempt in range(3):
        try:
            found = portable.lease_next(project, user, draw.gold_first, draw.order, timezone.now())
            return Handout(_shown_now(found, project) if found is not None else None)
        except IntegrityError:
            if attempt == 2:
                raise
    return Handout(None)


def _lease_pg(project: Project, user: User, draw: Draw) -> Handout:
    now = timezone.now()
    given = {
        "uuid": uuid.uuid4(),
        "annotator_id": user.pk,
        "state": sql.LEASED,
        "leased_at": now,
        "expires_at": now + timedelta(seconds=project.lease_seconds),
        "schema_version": project.schema_version,
        "guidelines_version": project.guidelines_version,
    }
    exprs = {"item_id": "p.id", "is_gold": "p.is_gold", "response_order": sql.ORDER}
    cols, values, params = rows.insert_parts(Assignment, given, exprs)
    params.update(annotator=user.pk, project=project.pk, now=now, overlap=project.overlap, perm=draw.perm)
    row = rows.fetch_one(sql.next_sql(draw.gold_first, cols, values), params)
    if row is None:
        return Handout(None)
    assignment = sql.A.load(row)
    assignment.item = sql.I.load(row, sql.A.width)
    stats_row = row[sql.A.width + sql.I.width :]
    stats = AnnotatorDay.from_row(stats_row if stats_row[0] is not None else None, now.date())
    return Handout(_shown_now(assignment, project), stats)


def _anything_left(project: Project, user: User, gold: bool) -> bool:
    params = {"project": project.pk, "annotator": user.pk, "now": timezone.now(), "overlap": project.overlap}
    row = rows.fetch_one(sql.ANY_LEFT, {**params, "gold": gold})
    return bool(row and row[0])


def _shown_now(assignment: Assignment, project: Project) -> Assignment:
    """A lease about to be shown again (a reload, the next page of a resumed session) under a
    schema or guidelines that changed since it was handed out: the page now shows the project's
    current ones, so the lease records those. A page still open on the old ones keeps its answer
    checked against the old schema until it is shown anew."""
    shown = (project.schema_version, project.guidelines_version)
    if (assignment.schema_version, assignment.guidelines_version) != shown:
        Assignment.objects.filter(pk=assignment.pk, state=Assignment.State.LEASED).update(
            schema_version=shown[0], guidelines_version=shown[1]
        )
        assignment.schema_version, assignment.guidelines_version = shown
    return assignment
