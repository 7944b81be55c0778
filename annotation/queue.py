"""The human annotation queue: leasing the next item, submitting, skipping, flagging, expiring.

Invariants, kept under row locks inside one transaction per call:
- an item never has more than its overlap of human judgments plus live leases
  (`Item.human_count + Item.leased_count <= project.overlap + Item.extra_overlap`; a curator who
  sends an item back for another look raises `extra_overlap`);
- an annotator is never handed the same item twice (and the database refuses a second
  assignment row for the same item and annotator), with one exception: an annotator whose lease
  on an item ran out gets that item back, on the same assignment row leased anew (same uuid and
  display order, so a page still open on it answers it), when no item they never had is left for
  them. Otherwise two annotators who each let one lease run out would both be told "nothing
  left" while the item waits for an answer nobody can give;
- a lease that runs out returns its slot to the queue (`reap_expired_leases`, run before every
  hand-out and by a periodic task);
- submitting the same assignment twice stores one judgment.

Responses are shown in a per-assignment random order (`Assignment.response_order`, stored display
position -> stored index). Answers arrive in display order and are mapped back to the stored
order here, so position bias can be measured and undone and the client cannot mislabel it.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from annotation import rows
from annotation.models import Assignment, Item, Judgment, Labeler, Project, SchemaVersion
from annotation.rows import Rows
from annotation.schema import JudgmentSchema, PayloadError

logger = logging.getLogger(__name__)


class QueueError(Exception):
    """An action on an assignment that cannot be carried out, with a reason to show."""


@dataclass(frozen=True)
class Submitted:
    judgment: Judgment
    created: bool
    stats: AnnotatorDay | None = None  # the annotator's counts after this submit (None on a repeat)


@dataclass(frozen=True)
class AnnotatorDay:
    """An annotator's counts in one project (`AnnotatorStats`), with "today" already reset when
    the stored day is over."""

    judged: int = 0
    judged_today: int = 0
    skipped_today: int = 0
    time_today_ms: int = 0

    @classmethod
    def from_row(cls, row: tuple[Any, ...] | None, today: date) -> AnnotatorDay:
        if row is None:
            return cls()
        day, judged, judged_today, skipped_today, time_today_ms = row
        if str(day) != today.isoformat():  # SQLite returns the day as text
            return cls(judged=judged)
        return cls(judged, judged_today, skipped_today, time_today_ms)


_STATS_UPSERT_SQL = """
INSERT INTO annotation_annotatorstats
    (project_id, user_id, day, judged, judged_today, skipped_today, time_today_ms)
{source}
ON CONFLICT (project_id, user_id) DO UPDATE SET
    judged = annotation_annotatorstats.judged + excluded.judged,
    judged_today = CASE WHEN annotation_annotatorstats.day = excluded.day
        THEN annotation_annotatorstats.judged_today ELSE 0 END + excluded.judged_today,
    skipped_today = CASE WHEN annotation_annotatorstats.day = excluded.day
        THEN annotation_annotatorstats.skipped_today ELSE 0 END + excluded.skipped_today,
    time_today_ms = CASE WHEN annotation_annotatorstats.day = excluded.day
        THEN annotation_annotatorstats.time_today_ms ELSE 0 END + excluded.time_today_ms,
    day = excluded.day
RETURNING day, judged, judged_today, skipped_today, time_today_ms
"""
_STATS_ROW = "%(project)s, %(user)s, %(day)s, %(judged)s, %(judged)s, %(skipped)s, %(time_ms)s"
_BUMP_STATS_SQL = _STATS_UPSERT_SQL.format(source=f"VALUES ({_STATS_ROW})")


def bump_stats(
    *, project_id: int, user_id: int, now: Any, judged: int = 0, skipped: int = 0, time_ms: int = 0
) -> AnnotatorDay:
    """Count a submit or skip in the annotator's stats (one upsert, in the caller's transaction)."""
    today = now.date()
    params = {"project": project_id, "user": user_id, "day": today, "judged": judged, "skipped": skipped}
    row = rows.fetch_one(_BUMP_STATS_SQL, {**params, "time_ms": time_ms})
    return AnnotatorDay.from_row(row, today)


def read_stats(*, project_id: int, user_id: int) -> AnnotatorDay:
    row = rows.fetch_one(
        "SELECT day, judged, judged_today, skipped_today, time_today_ms FROM annotation_annotatorstats "
        "WHERE project_id = %s AND user_id = %s",
        [project_id, user_id],
    )
    return AnnotatorDay.from_row(row, timezone.now().date())


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
    return _expire_leases("expires_at <= %s", [now], now, exclusive=True)


def release_leases(*, project_id: int, user_id: int) -> int:
    """End this annotator's live leases in the project now (they left it), so their items go back
    to the queue at once rather than when the leases run out. A submit racing with this either
    lands first (its judgment stands) or finds the lease ended; the two meet on the assignment's
    row lock, taken in the order a submit takes it (assignment, then item)."""
    now = timezone.now()
    where = "annotator_id = %s AND item_id IN (SELECT id FROM annotation_item WHERE project_id = %s)"
    return _expire_leases(where, [user_id, project_id], now)


def release_item_leases(*, item_id: int) -> int:
    """End the live leases on an item a curator withdrew (dropped), so nobody goes on answering
    it. Call it before locking the item: rows are locked assignment first, then item, as a
    submit locks them."""
    return _expire_leases("item_id = %s", [item_id], timezone.now())


# One reaper at a time (per database): two sweeping the same expired leases in different orders
# could deadlock; the one that finds the lock taken leaves the work to the other.
_REAPER_LOCK = 0x7072_6566_6C6F_6F70 & 0x7FFF_FFFF_FFFF_FFFF  # "prefloop"


def _expire_leases(where: str, params: list[Any], now: Any, *, exclusive: bool = False) -> int:
    """Flip the matching live leases to expired and give their slots back, items in id order (the
    order every multi-item writer here takes). The reaper (`exclusive`) runs one at a time and is
    best effort: one that loses a deadlock to another writer leaves its work to the next sweep
    rather than fail the request it runs in."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                if exclusive and connection.vendor == "postgresql":
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_REAPER_LOCK])
                    if not cursor.fetchone()[0]:
                        return 0
                cursor.execute(
                    "UPDATE annotation_assignment SET state = %s, finished_at = %s "  # noqa: S608 - `where` is ours
                    f"WHERE state = %s AND {where} RETURNING item_id",
                    [Assignment.State.EXPIRED, now, Assignment.State.LEASED, *params],
                )
                item_ids = sorted(row[0] for row in cursor.fetchall())
            for item_id in item_ids:
                Item.objects.filter(id=item_id, leased_count__gt=0).update(leased_count=F("leased_count") - 1)
    except OperationalError as exc:
        if not exclusive or getattr(exc.__cause__, "sqlstate", None) != "40P01":  # deadlock_detected
            raise
        logger.warning("lease reaper lost a deadlock; the next sweep will reap")
        return 0
    return len(item_ids)


@dataclass(frozen=True)
class Handout:
    """What a hand-out found: the annotator's lease (None when nothing is left for them) and, where
    the same statement read them, their counts in the project."""

    assignment: Assignment | None
    stats: AnnotatorDay | None = None


def next_assignment(*, project: Project, user: AbstractBaseUser, rng: random.Random | None = None) -> Assignment | None:
    """The annotator's live lease in this project, or a new one, or None when nothing is left."""
    return hand_out(project=project, user=user, rng=rng).assignment


# One generator per process, seeded anew in each forked worker (gunicorn forks after import), so
# workers never share a sequence of display orders; seeding a new one per hand-out from the OS's
# entropy took 2 % of an annotation loop.
_RNG = random.Random()
os.register_at_fork(after_in_child=_RNG.seed)


def hand_out(*, project: Project, user: AbstractBaseUser, rng: random.Random | None = None) -> Handout:
    """`next_assignment`, with the annotator's counts when they came with it."""
    rng = rng or _RNG
    reap_expired_leases_throttled()
    handout = _lease_next_retrying(project, user, rng)
    if handout.assignment is None and reap_expired_leases() > 0:
        handout = _lease_next_retrying(project, user, rng)  # an expired lease may have freed a slot
    return handout


def _lease_next_retrying(project: Project, user: AbstractBaseUser, rng: random.Random) -> Handout:
    """Two requests of one annotator (two tabs) can pick the same item at once: a pick whose
    snapshot predates the other's commit still sees the item as never handed to them. The database
    refuses the second assignment row. On PostgreSQL the hand-out's INSERT then does nothing (ON
    CONFLICT DO NOTHING, and the item's lease is only counted for a row that went in) and comes
    back empty, so an empty answer is asked once more, and that finds the other request's lease.
    An answer that is empty again while something is left (the candidates' rows were locked by
    other hand-outs still in flight, which SKIP LOCKED passes by, or another request of the
    annotator's committed a lease since) is asked again after a short pause, three times at most.
    Elsewhere the hand-out is rolled back whole and tried again."""
    if connection.vendor == "postgresql":
        # One draw for both tries, so an empty queue does not raise the rate of gold items.
        gold_first = project.gold_rate > 0 and rng.random() < project.gold_rate
        perm = list(range(MAX_RESPONSES))
        rng.shuffle(perm)
        handout = _lease_next_pg(project, user, gold_first, perm)
        for pause in (0.0, 0.005, 0.02, 0.05):
            if handout.assignment is not None:
                break
            if pause and not _anything_left(project, user, gold_first):
                break  # empty because nothing is left, not because others held the rows a moment
            time.sleep(pause)
            handout = _lease_next_pg(project, user, gold_first, perm)
        return handout
    for attempt in range(3):
        try:
            return Handout(_lease_next(project, user, rng))
        except IntegrityError:
            if attempt == 2:
                raise
    return Handout(None)


_A = Rows(Assignment, "a")
_I = Rows(Item, "i")
_P = Rows(Project, "p")
_LEASED = Assignment.State.LEASED.value
MAX_RESPONSES = 16  # JudgmentSchema.response_count_error
MAX_TIME_SPENT_MS = 2**31 - 1  # the column's range (24.8 days)

_LIVE_SQL = f"""
SELECT {_A.columns}, {_I.columns}
FROM annotation_assignment a JOIN annotation_item i ON i.id = a.item_id
WHERE a.annotator_id = %s AND a.state = '{_LEASED}' AND a.expires_at > %s AND i.project_id = %s
  AND i.status <> 'dropped'
ORDER BY a.leased_at
LIMIT 1
"""  # noqa: S608 - columns from the models' metadata


def _lease_next(project: Project, user: AbstractBaseUser, rng: random.Random) -> Assignment | None:
    """The hand-out on databases other than PostgreSQL (the embedded SQLite default): the live
    lease, else a pick and a new assignment in one transaction."""
    now = timezone.now()
    row = rows.fetch_one(_LIVE_SQL, [user.pk, now, project.pk])
    if row is not None:
        live = _A.load(row)
        live.item = _I.load(row, _A.width)
        return _shown_now(live, project)
    with transaction.atomic():
        want_gold = project.gold_rate > 0 and rng.random() < project.gold_rate
        item = (_pick(project, user, gold=True) if want_gold else None) or _pick(project, user, gold=False)
        if item is None:
            return _lease_again(project, user, now)
        order = list(range(item.num_responses))
        rng.shuffle(order)
        fields = {
            "uuid": uuid.uuid4(),
            "item_id": item.pk,
            "annotator_id": user.pk,
            "state": _LEASED,
            "response_order": order,
            "is_gold": item.is_gold,
            "leased_at": now,
            "expires_at": now + timedelta(seconds=project.lease_seconds),
            "schema_version": project.schema_version,
            "guidelines_version": project.guidelines_version,
        }
        assignment = Assignment(id=rows.insert(Assignment, fields), **fields)
    assignment._state.adding = False
    assignment.item = item
    return assignment


def _lease_again(project: Project, user: AbstractBaseUser, now: Any) -> Assignment | None:
    """The annotator's expired lease on the best open item with a free slot, leased anew (the
    same row, uuid and display order), its lease counted on the item; or None. Only when no item
    they never had is left (the caller's transaction holds the pick)."""
    qs = _with_free_slot(Item.objects.filter(project=project, status=Item.Status.OPEN, is_gold=False), project)
    again = (
        Assignment.objects.filter(annotator=user, state=Assignment.State.EXPIRED, item__in=qs)
        .select_related("item")
        .order_by("-item__priority", "item_id")
        .first()
    )
    if again is None:
        return None
    fields = {
        "state": _LEASED,
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


def _with_free_slot(qs: Any, project: Project) -> Any:
    """Items routed to humans with a free slot of their overlap (the rule `_HUMAN_SLOTS` says in SQL)."""
    qs = qs.filter(route__in=[Item.Route.HUMAN, Item.Route.BOTH])
    return qs.filter(human_count__lt=project.overlap + F("extra_overlap") - F("leased_count"))


def _pick(project: Project, user: AbstractBaseUser, *, gold: bool) -> Item | None:
    """The best open item with a free slot this annotator has never had, its lease counted."""
    seen = Assignment.objects.filter(item=OuterRef("pk"), annotator=user)
    qs = Item.objects.filter(project=project, status=Item.Status.OPEN, is_gold=gold).exclude(Exists(seen))
    if not gold:
        qs = _with_free_slot(qs, project)
    item = qs.order_by("-priority", "id").first()
    if item is not None:
        Item.objects.filter(id=item.id).update(leased_count=F("leased_count") + 1)
        item.leased_count += 1
    return item


# The hand-out on PostgreSQL is one statement: the live lease if the annotator has one, else a
# pick, the new assignment and its count on the item, with the annotator's counts beside.
_LIVE_CTE = f"""live AS (
    SELECT a.id FROM annotation_assignment a JOIN annotation_item i ON i.id = a.item_id
    WHERE a.annotator_id = %(annotator)s AND a.state = '{_LEASED}' AND a.expires_at > %(now)s
      AND i.project_id = %(project)s AND i.status <> 'dropped'
    ORDER BY a.leased_at
    LIMIT 1
)"""  # noqa: S608 - a constant
# One candidate: the best open item with a free slot this annotator has never had, locked with
# FOR UPDATE SKIP LOCKED (concurrent hand-outs never wait on or share a row). "Never had" is
# checked item by item through the item's few assignments: `OFFSET 0` keeps PostgreSQL from
# turning it into an anti-join and `annotator_id + 0` from probing the annotator's index. Left to
# itself, with statistics not yet gathered on a fresh project, the planner scanned all of the
# annotator's assignments for every candidate item: 80-90 ms per hand-out after 1,000 judgments,
# growing with the square of the annotator's history. `NOT EXISTS (SELECT 1 FROM live)` is
# evaluated once, before any item is read.
_CANDIDATE = """
    SELECT i.id, i.num_responses, i.is_gold FROM annotation_item i
    WHERE NOT EXISTS (SELECT 1 FROM live) {also}
      AND i.project_id = %(project)s AND i.status = 'open' AND i.is_gold = {gold} {human_slots}
      AND NOT EXISTS (
          SELECT 1 FROM annotation_assignment a
          WHERE a.item_id = i.id AND a.annotator_id + 0 = %(annotator)s
          OFFSET 0
      )
    ORDER BY i.priority DESC, i.id
    LIMIT 1
    FOR UPDATE OF i SKIP LOCKED"""
# Routed to humans (the router sent the rest to AI), with a free slot of the item's overlap.
_HUMAN_SLOTS = "AND i.route IN ('human', 'both') AND i.human_count < %(overlap)s + i.extra_overlap - i.leased_count"
# The last resort: an item whose lease this annotator let run out, with a free slot, reached from
# the annotator's expired assignments (the `assignment_annotator_state` index), so it costs a probe
# per expired lease. The caller's `also` makes it run only when nothing fresh was found. Both rows
# are locked with SKIP LOCKED, so the hand-out never waits on the assignment (a late submit of
# that lease locks it, then the item: waiting here, item held, could deadlock with it).
_EXPIRED = Assignment.State.EXPIRED.value
_AGAIN = f"""
    SELECT a.id AS relet_id FROM annotation_assignment a JOIN annotation_item i ON i.id = a.item_id
    WHERE NOT EXISTS (SELECT 1 FROM live) {{also}}
      AND a.annotator_id = %(annotator)s AND a.state = '{_EXPIRED}'
      AND i.project_id = %(project)s AND i.status = 'open' AND i.is_gold = false {_HUMAN_SLOTS}
    ORDER BY i.priority DESC, i.id
    LIMIT 1
    FOR UPDATE OF a, i SKIP LOCKED"""  # noqa: S608 - constants
# Whether a hand-out could find anything now: a live lease of the annotator (another request of
# theirs committed one since), or a candidate, locked or not. A hand-out that came back empty
# while other hand-outs held the last candidates' rows (SKIP LOCKED passes them by) tries again.
_UNLOCKED = _CANDIDATE.replace("FOR UPDATE OF i SKIP LOCKED", "")
_ANY_LEFT_SQL = """WITH {live}
SELECT EXISTS (SELECT 1 FROM live) OR EXISTS ({human}) OR EXISTS ({again})
    OR (%(gold)s AND EXISTS ({gold}))""".format(  # noqa: S608
    live=_LIVE_CTE,
    human=_UNLOCKED.format(also="", gold="false", human_slots=_HUMAN_SLOTS),
    again=_AGAIN.replace("FOR UPDATE OF a, i SKIP LOCKED", "").format(also=""),
    gold=_UNLOCKED.format(also="", gold="true", human_slots=""),
)


def _anything_left(project: Project, user: AbstractBaseUser, gold: bool) -> bool:
    params = {
        "project": project.pk,
        "annotator": user.pk,
        "now": timezone.now(),
        "overlap": project.overlap,
        "gold": gold,
    }
    return bool(rows.fetch_one(_ANY_LEFT_SQL, params)[0])


_PICK_HUMAN = (
    "human AS (" + _CANDIDATE.format(also="", gold="false", human_slots=_HUMAN_SLOTS) + "),\n"  # noqa: S608 - constants
    "again AS (" + _AGAIN.format(also="AND NOT EXISTS (SELECT 1 FROM human)") + "),\n"
    "picked AS (SELECT * FROM human)"
)
_PICK_GOLD_FIRST = (
    "gold AS (" + _CANDIDATE.format(also="", gold="true", human_slots="") + "),\n"  # noqa: S608 - constants
    "human AS ("
    + _CANDIDATE.format(also="AND NOT EXISTS (SELECT 1 FROM gold)", gold="false", human_slots=_HUMAN_SLOTS)
    + "),\nagain AS ("
    + _AGAIN.format(also="AND NOT EXISTS (SELECT 1 FROM gold) AND NOT EXISTS (SELECT 1 FROM human)")
    + "),\npicked AS (SELECT * FROM gold UNION ALL SELECT * FROM human)"
)
# The display order: a random permutation of 0..15 from Python's rng, of which the item's
# num_responses smallest values, in their order, are a uniformly random order of its responses.
_ORDER_SQL = (
    "(SELECT jsonb_agg(x ORDER BY o) FROM unnest(%(perm)s::int[]) WITH ORDINALITY u(x, o) WHERE x < p.num_responses)"
)
_MADE = Rows(Assignment, "made")
_BUMPED = Rows(Item, "bumped")
_ASSIGNMENT_COLUMNS = ", ".join(f'"{f.column}"' for f in _A.fields)
_ITEM_COLUMNS = ", ".join(f'annotation_item."{f.column}"' for f in _I.fields)
_STATS_COLUMNS = ("day", "judged", "judged_today", "skipped_today", "time_today_ms")
_NEXT_SQL = """
WITH {live},
{picks},
inserted AS (
    INSERT INTO annotation_assignment ({cols}) SELECT {values} FROM picked p
    ON CONFLICT DO NOTHING
    RETURNING {a_returned}
),
relet AS (
    UPDATE annotation_assignment SET state = %(f_state)s, leased_at = %(f_leased_at)s,
        expires_at = %(f_expires_at)s, finished_at = NULL, schema_version = %(f_schema_version)s,
        guidelines_version = %(f_guidelines_version)s
    FROM again WHERE annotation_assignment.id = again.relet_id
    RETURNING {a_returned}
),
made AS (SELECT * FROM inserted UNION ALL SELECT * FROM relet),
bumped AS (
    UPDATE annotation_item SET leased_count = annotation_item.leased_count + 1
    FROM made WHERE annotation_item.id = made.item_id
    RETURNING {i_returned}
),
stats AS (
    SELECT {stats} FROM annotation_annotatorstats WHERE project_id = %(project)s AND user_id = %(annotator)s
)
SELECT {made}, {bumped}, {stats_out} FROM made JOIN bumped ON bumped.id = made.item_id LEFT JOIN stats ON true
UNION ALL
SELECT {a}, {i}, {stats_out} FROM live
    JOIN annotation_assignment a ON a.id = live.id JOIN annotation_item i ON i.id = a.item_id LEFT JOIN stats ON true
"""
_NEXT_SQL_CACHE: dict[tuple[bool, str, str], str] = {}


def _next_sql(gold_first: bool, cols: str, values: str) -> str:
    key = (gold_first, cols, values)
    sql = _NEXT_SQL_CACHE.get(key)
    if sql is None:
        sql = _NEXT_SQL_CACHE[key] = _NEXT_SQL.format(
            live=_LIVE_CTE,
            picks=_PICK_GOLD_FIRST if gold_first else _PICK_HUMAN,
            cols=cols,
            values=values,
            a_returned=_ASSIGNMENT_COLUMNS,
            i_returned=_ITEM_COLUMNS,
            stats=", ".join(_STATS_COLUMNS),
            made=_MADE.columns,
            bumped=_BUMPED.columns,
            a=_A.columns,
            i=_I.columns,
            stats_out=", ".join(f"stats.{c}" for c in _STATS_COLUMNS),
        )
    return sql


def _lease_next_pg(project: Project, user: AbstractBaseUser, gold_first: bool, perm: list[int]) -> Handout:
    now = timezone.now()
    given = {
        "uuid": uuid.uuid4(),
        "annotator_id": user.pk,
        "state": _LEASED,
        "leased_at": now,
        "expires_at": now + timedelta(seconds=project.lease_seconds),
        "schema_version": project.schema_version,
        "guidelines_version": project.guidelines_version,
    }
    exprs = {"item_id": "p.id", "is_gold": "p.is_gold", "response_order": _ORDER_SQL}
    cols, values, params = rows.insert_parts(Assignment, given, exprs)
    params.update(annotator=user.pk, project=project.pk, now=now, overlap=project.overlap, perm=perm)
    row = rows.fetch_one(_next_sql(gold_first, cols, values), params)
    if row is None:
        return Handout(None)
    assignment = _A.load(row)
    assignment.item = _I.load(row, _A.width)
    stats_row = row[_A.width + _I.width :]
    stats = AnnotatorDay.from_row(stats_row if stats_row[0] is not None else None, now.date())
    return Handout(_shown_now(assignment, project), stats)


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


def to_stored_order(payload: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """Map an answer given in display order onto the stored order of the responses."""
    if not isinstance(payload, dict):
        raise PayloadError("a judgment payload is a JSON object")
    n = len(order)
    out = dict(payload)
    pairwise = payload.get("pairwise")
    if isinstance(pairwise, dict) and pairwise.get("choice") in ("A", "B"):
        if n != 2:
            raise PayloadError(f"a pairwise answer needs an item with 2 responses; this one has {n}")
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
        # Only ratings the annotator gave are compared: an aspect left blank (where the schema
        # allows it) is neither right nor wrong, and an answer with none is not scored.
        errors = [
            abs(ratings[name] - given[name]) / spans[name]
            for ratings, given in zip(gold["rubric"], answer["rubric"], strict=False)
            for name in ratings
            if name in spans and isinstance(given, dict) and given.get(name) is not None
        ]
        if errors:
            parts.append(1.0 - sum(errors) / len(errors))
    return sum(parts) / len(parts) if parts else None


class NoSuchAssignmentError(QueueError):
    """Not this annotator's assignment (or not in a project they belong to)."""


_UUID_FIELD = Assignment._meta.get_field("uuid")
# The assignment with its item and project, locked, and the annotator's labeler id: one trip.
_SUBMIT_LOCK_SQL = f"""
SELECT {_A.columns}, {_I.columns}, {_P.columns},
       (SELECT l.id FROM annotation_labeler l WHERE l.user_id = %s)
FROM annotation_assignment a
JOIN annotation_item i ON i.id = a.item_id
JOIN annotation_project p ON p.id = i.project_id
WHERE a.annotator_id = %s AND {{by}}
"""  # noqa: S608 - columns from the models' metadata


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
    same assignment returns the first judgment unchanged. Inside a caller's transaction it takes
    no savepoint: a refusal (QueueError, PayloadError) leaves that transaction usable, but a
    database error inside it spoils the caller's whole transaction.

    On PostgreSQL the usual case, a live lease answered once, takes two statements and no explicit
    transaction (`_submit_optimistic`); everything else (a repeat, a skipped item, a lease that ran
    out, a lease that changed in between) goes through the locking path below."""
    if assignment_uuid is not None and user.is_superuser:  # site admins reach every project
        by, params = "a.uuid = %s", [_UUID_FIELD.get_db_prep_value(assignment_uuid, connection)]
    elif assignment_uuid is not None:
        by = "a.uuid = %s AND EXISTS (SELECT 1 FROM annotation_membership m WHERE m.project_id = p.id AND m.user_id = %s)"  # noqa: E501
        params = [_UUID_FIELD.get_db_prep_value(assignment_uuid, connection), user.pk]
    else:
        by, params = "a.id = %s", [assignment_id]
    sql = _SUBMIT_LOCK_SQL.format(by=by)
    if connection.vendor == "postgresql":
        done = _submit_optimistic(sql, [user.pk, user.pk, *params], user, payload, time_spent_ms)
        if done is not None:
            return done
    if connection.features.has_select_for_update_of:
        sql += " FOR UPDATE OF a, i"
    # No savepoint: inside a caller's transaction this is part of it. A refusal is raised after
    # the block, so it happens before any write and leaves the caller's transaction usable.
    with transaction.atomic(savepoint=False):
        try:
            return _submit_locked(sql, [user.pk, user.pk, *params], user, payload, time_spent_ms)
        except (QueueError, PayloadError) as exc:
            refused = exc
    raise refused


def _load_for_submit(sql: str, params: list[Any]) -> Assignment:
    row = rows.fetch_one(sql, params)
    if row is None:
        raise NoSuchAssignmentError("no such assignment")
    assignment = _A.load(row)
    assignment.item = _I.load(row, _A.width)
    assignment.item.project = _P.load(row, _A.width + _I.width)
    assignment.labeler_id = row[-1]
    return assignment


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
    assignment: Assignment, user: AbstractBaseUser, payload: dict[str, Any], time_spent_ms: int | None, now: Any
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
        "labeler_id": assignment.labeler_id or human_labeler(user).pk,
        "assignment_id": assignment.pk,
        "payload": canonical,
        "schema_version": schema_version,
        "guidelines_version": assignment.guidelines_version or project.guidelines_version,
        "response_order": assignment.response_order,
        "time_spent_ms": spent,
        "gold_score": gold_score(schema, canonical, item.gold_answer) if item.is_gold else None,
        "created_at": now,
    }


def _submit_locked(
    sql: str, params: list[Any], user: AbstractBaseUser, payload: dict[str, Any], time_spent_ms: int | None
) -> Submitted:
    assignment = _load_for_submit(sql, params)
    if assignment.state == Assignment.State.SUBMITTED:
        first = Judgment.objects.get(assignment=assignment)
        first.item = assignment.item
        return Submitted(first, created=False)
    if assignment.state == Assignment.State.SKIPPED:
        raise QueueError("this item was skipped; it can no longer be answered")
    item = assignment.item  # locked with the assignment
    if item.status == Item.Status.DROPPED:
        raise QueueError("a curator withdrew this item from the queue; it can no longer be answered")
    project = item.project
    now = timezone.now()
    found = assignment.state
    lease_live = found == Assignment.State.LEASED
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
    fields = _judgment_fields(assignment, user, payload, time_spent_ms, now)
    if connection.vendor == "postgresql":
        done = _submit_gated(assignment, fields, user, found=found, live_only=False, now=now)
        if done is None:  # not under the locks just taken: the state the gate asks for is the one found
            raise QueueError("this item changed while it was being answered; please submit again")
        return done
    spent = fields["time_spent_ms"]
    assignment.state = Assignment.State.SUBMITTED
    assignment.finished_at = now
    item.human_count += 1
    if lease_live:
        item.leased_count = max(0, item.leased_count - 1)
    if (
        not item.is_gold
        and item.status == Item.Status.OPEN
        and item.human_count >= project.overlap + item.extra_overlap
    ):
        item.status = Item.Status.DONE
    judgment_id, stats = _write_submit(fields, assignment, item, user, spent)
    judgment = Judgment(id=judgment_id, **fields)
    judgment._state.adding = False
    judgment.item = item
    return Submitted(judgment, created=True, stats=stats)


# A submit's writes after its judgment on databases other than PostgreSQL (the embedded SQLite
# default), with the counts the locking path worked out in Python.
_CLOSE_ASSIGNMENT_SQL = (
    "UPDATE annotation_assignment SET state = %(state)s, finished_at = %(now)s WHERE id = %(assignment)s"
)
_COUNT_ON_ITEM_SQL = (
    "UPDATE annotation_item SET human_count = %(human)s, leased_count = %(leased)s, status = %(status)s "
    "WHERE id = %(item)s"
)


def _write_submit(
    fields: dict[str, Any], assignment: Assignment, item: Item, user: AbstractBaseUser, spent: int
) -> tuple[int, AnnotatorDay]:
    """Store the judgment, close the assignment, count it on the item and in the annotator's
    stats: four statements, in the caller's transaction."""
    now = assignment.finished_at
    params = {
        "state": assignment.state,
        "now": now,
        "assignment": assignment.pk,
        "human": item.human_count,
        "leased": item.leased_count,
        "status": item.status,
        "item": item.pk,
        "project": item.project_id,
        "user": user.pk,
        "day": now.date(),
        "judged": 1,
        "skipped": 0,
        "time_ms": spent,
    }
    judgment_id = rows.insert(Judgment, fields)
    with connection.cursor() as cursor:
        cursor.execute(_CLOSE_ASSIGNMENT_SQL, params)
        cursor.execute(_COUNT_ON_ITEM_SQL, params)
    return judgment_id, AnnotatorDay.from_row(rows.fetch_one(_BUMP_STATS_SQL, params), now.date())


# A submit's writes on PostgreSQL, one statement for both paths. The assignment is closed only
# while it is still this annotator's and in the state the caller found (`from_state`; with
# `live_only`, also unexpired): the gate, `a`. The judgment, the item's counts and the annotator's
# stats are written only through the gate's row, so an assignment that changed since it was read
# writes nothing. The item's counts are raised from their current values under its row lock; a
# lease (`release` = 1) gives its slot back, a lease the reaper already expired has none to give.
# Rows are locked in one order: the assignment, then the item (`i` reads `a`), then the
# annotator's stats (`s` reads `i`).
_SUBMITTED = Assignment.State.SUBMITTED.value
_SUBMIT_GATED_SQL = f"""
WITH a AS (
    UPDATE annotation_assignment SET state = '{_SUBMITTED}', finished_at = %(now)s
    WHERE id = %(assignment)s AND annotator_id = %(user)s AND state = %(from_state)s
      AND (NOT %(live_only)s OR expires_at > %(now)s)
    RETURNING item_id
),
j AS (INSERT INTO annotation_judgment ({{cols}}) SELECT {{values}} FROM a RETURNING id),
i AS (
    UPDATE annotation_item SET
        human_count = annotation_item.human_count + 1,
        leased_count = GREATEST(annotation_item.leased_count - %(release)s, 0),
        status = CASE WHEN NOT annotation_item.is_gold AND annotation_item.status = '{Item.Status.OPEN.value}'
                       AND annotation_item.human_count + 1 >= %(overlap)s + annotation_item.extra_overlap
                      THEN '{Item.Status.DONE.value}' ELSE annotation_item.status END
    FROM a WHERE annotation_item.id = a.item_id
    RETURNING annotation_item.human_count, annotation_item.leased_count, annotation_item.status
),
s AS ({_STATS_UPSERT_SQL.format(source=f"SELECT {_STATS_ROW} FROM i")})
SELECT j.id, i.human_count, i.leased_count, i.status, {", ".join(f"s.{c}" for c in _STATS_COLUMNS)}
FROM j, i, s
"""  # noqa: S608 - constants; the judgment's columns come from the model's metadata


def _submit_optimistic(
    sql: str, params: list[Any], user: AbstractBaseUser, payload: dict[str, Any], time_spent_ms: int | None
) -> Submitted | None:
    """The usual submit on PostgreSQL, a live lease answered once: read without locking, check and
    validate, then one statement that writes only if the lease is still live and this annotator's.
    Two statements and no explicit transaction, where the locking path takes five round trips
    (BEGIN, the locking read, the writes, COMMIT). None when the locking path must decide: the
    lease was not live when read (a repeat, a skip, a lease that ran out) or changed before the
    write (a second submit or the reaper got there first)."""
    assignment = _load_for_submit(sql, params)
    now = timezone.now()
    if assignment.state != Assignment.State.LEASED or assignment.expires_at <= now:
        return None
    if assignment.item.status == Item.Status.DROPPED:
        return None  # withdrawn by a curator: the locking path refuses it with the reason
    fields = _judgment_fields(assignment, user, payload, time_spent_ms, now)
    return _submit_gated(assignment, fields, user, found=Assignment.State.LEASED, live_only=True, now=now)


def _submit_gated(
    assignment: Assignment, fields: dict[str, Any], user: AbstractBaseUser, *, found: str, live_only: bool, now: Any
) -> Submitted | None:
    """Run `_SUBMIT_GATED_SQL`; None when its gate found the assignment changed."""
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
    row = rows.fetch_one(_SUBMIT_GATED_SQL.format(cols=cols, values=values), {**write_params, **judgment_params})
    if row is None:
        return None
    judgment_id, item.human_count, item.leased_count, item.status = row[:4]
    assignment.state, assignment.finished_at = Assignment.State.SUBMITTED, now
    judgment = Judgment(id=judgment_id, **fields)
    judgment._state.adding = False
    judgment.item = item
    return Submitted(judgment, created=True, stats=AnnotatorDay.from_row(row[4:], now.date()))


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
        project_id = Item.objects.filter(id=assignment.item_id).values_list("project_id", flat=True).get()
        bump_stats(project_id=project_id, user_id=user.pk, now=assignment.finished_at, skipped=1)
        assignment.skip_reason = reason if not flag else ""
        assignment.flagged = flag
        assignment.flag_reason = reason if flag else ""
        assignment.save(update_fields=["state", "finished_at", "skip_reason", "flagged", "flag_reason"])
        if gives_back_slot:
            Item.objects.filter(id=assignment.item_id, leased_count__gt=0).update(leased_count=F("leased_count") - 1)
    return assignment
