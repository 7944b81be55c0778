"""The queue's hand-written statements on PostgreSQL, and the row shapes they read and return.

Why these are raw SQL, and what each statement guarantees, is said once, in the package's
docstring (`annotation/queue/__init__.py`). Here are the texts; they are built at import from the
models' metadata (`rows.Rows`) and the overlap rule (`annotation.overlap`), so a column or the rule
changes in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db import connection

from annotation import overlap
from annotation.models import Assignment, Item, Project
from annotation.rows import Rows


def statements_apply() -> bool:
    """Whether the database runs the statements here (PostgreSQL); elsewhere the queue takes its
    ORM path (`portable.py`). The one place that decides."""
    return connection.vendor == "postgresql"


A = Rows(Assignment, "a")
I = Rows(Item, "i")  # noqa: E741 - the item table's alias in every statement
P = Rows(Project, "p")
LEASED = Assignment.State.LEASED.value
EXPIRED = Assignment.State.EXPIRED.value
SUBMITTED = Assignment.State.SUBMITTED.value
MAX_RESPONSES = 16  # JudgmentSchema.response_count_error


# ---------------------------------------------------------------------------------------------
# The annotator's counts in a project (`AnnotatorStats`): one upsert per submit or skip.

STATS_COLUMNS = ("day", "judged", "judged_today", "skipped_today", "time_today_ms")


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


STATS_UPSERT = """
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
STATS_ROW = "%(project)s, %(user)s, %(day)s, %(judged)s, %(judged)s, %(skipped)s, %(time_ms)s"
BUMP_STATS = STATS_UPSERT.format(source=f"VALUES ({STATS_ROW})")
READ_STATS = (
    "SELECT day, judged, judged_today, skipped_today, time_today_ms FROM annotation_annotatorstats "
    "WHERE project_id = %s AND user_id = %s"
)


# ---------------------------------------------------------------------------------------------
# Leases that end: flip the matching live leases to expired, returning their items.

EXPIRE = "UPDATE annotation_assignment SET state = %s, finished_at = %s WHERE state = %s AND {where} RETURNING item_id"


# ---------------------------------------------------------------------------------------------
# The hand-out: one statement, the live lease if the annotator has one, else a pick, the new
# assignment and its count on the item, with the annotator's counts beside.

LIVE_CTE = f"""live AS (
    SELECT a.id FROM annotation_assignment a JOIN annotation_item i ON i.id = a.item_id
    WHERE a.annotator_id = %(annotator)s AND a.state = '{LEASED}' AND a.expires_at > %(now)s
      AND i.project_id = %(project)s AND i.status <> 'dropped'
    ORDER BY a.leased_at
    LIMIT 1
)"""  # noqa: S608 - a constant
# One candidate: the best open item with a free slot this annotator has never had, locked with
# FOR UPDATE SKIP LOCKED (concurrent hand-outs never wait on or share a row). "Never had" is
# checked item by item through the item's few assignments: `OFFSET 0` keeps PostgreSQL from
# turning it into an anti-join and `annotator_id + 0` from probing the annotator's index. Left to
# itself, with statistics not yet gathered on a fresh project, the planner scanned all of the
# annotator's assignments for every candidate item, growing with the square of the annotator's
# history. `NOT EXISTS (SELECT 1 FROM live)` is evaluated once, before any item is read.
CANDIDATE = """
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
HUMAN_SLOTS = f"AND i.route IN ('human', 'both') AND {overlap.free_slot_sql('i')}"
# The last resort: an item whose lease this annotator let run out, with a free slot, reached from
# the annotator's expired assignments (the `assignment_annotator_state` index), so it costs a probe
# per expired lease. The caller's `also` makes it run only when nothing fresh was found. Both rows
# are locked with SKIP LOCKED, so the hand-out never waits on the assignment (a late submit of
# that lease locks it, then the item: waiting here, item held, could deadlock with it).
AGAIN = f"""
    SELECT a.id AS relet_id FROM annotation_assignment a JOIN annotation_item i ON i.id = a.item_id
    WHERE NOT EXISTS (SELECT 1 FROM live) {{also}}
      AND a.annotator_id = %(annotator)s AND a.state = '{EXPIRED}'
      AND i.project_id = %(project)s AND i.status = 'open' AND i.is_gold = false {HUMAN_SLOTS}
    ORDER BY i.priority DESC, i.id
    LIMIT 1
    FOR UPDATE OF a, i SKIP LOCKED"""  # noqa: S608 - constants
# Whether a hand-out could find anything now: a live lease of the annotator (another request of
# theirs committed one since), or a candidate, locked or not.
_UNLOCKED = CANDIDATE.replace("FOR UPDATE OF i SKIP LOCKED", "")
ANY_LEFT = """WITH {live}
SELECT EXISTS (SELECT 1 FROM live) OR EXISTS ({human}) OR EXISTS ({again})
    OR (%(gold)s AND EXISTS ({gold}))""".format(  # noqa: S608
    live=LIVE_CTE,
    human=_UNLOCKED.format(also="", gold="false", human_slots=HUMAN_SLOTS),
    again=AGAIN.replace("FOR UPDATE OF a, i SKIP LOCKED", "").format(also=""),
    gold=_UNLOCKED.format(also="", gold="true", human_slots=""),
)
_PICK_HUMAN = (
    "human AS (" + CANDIDATE.format(also="", gold="false", human_slots=HUMAN_SLOTS) + "),\n"  # noqa: S608 - constants
    "again AS (" + AGAIN.format(also="AND NOT EXISTS (SELECT 1 FROM human)") + "),\n"
    "picked AS (SELECT * FROM human)"
)
_PICK_GOLD_FIRST = (
    "gold AS (" + CANDIDATE.format(also="", gold="true", human_slots="") + "),\n"  # noqa: S608 - constants
    "human AS ("
    + CANDIDATE.format(also="AND NOT EXISTS (SELECT 1 FROM gold)", gold="false", human_slots=HUMAN_SLOTS)
    + "),\nagain AS ("
    + AGAIN.format(also="AND NOT EXISTS (SELECT 1 FROM gold) AND NOT EXISTS (SELECT 1 FROM human)")
    + "),\npicked AS (SELECT * FROM gold UNION ALL SELECT * FROM human)"
)
# The display order: a random permutation of 0..15 from Python's rng, of which the item's
# num_responses smallest values, in their order, are a uniformly random order of its responses.
ORDER = (
    "(SELECT jsonb_agg(x ORDER BY o) FROM unnest(%(perm)s::int[]) WITH ORDINALITY u(x, o) WHERE x < p.num_responses)"
)
_MADE = Rows(Assignment, "made")
_BUMPED = Rows(Item, "bumped")
_NEXT = """
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
_NEXT_CACHE: dict[tuple[bool, str, str], str] = {}


def next_sql(gold_first: bool, cols: str, values: str) -> str:
    """The hand-out statement for a new assignment's column and value lists (`rows.insert_parts`)."""
    key = (gold_first, cols, values)
    sql = _NEXT_CACHE.get(key)
    if sql is None:
        sql = _NEXT_CACHE[key] = _NEXT.format(
            live=LIVE_CTE,
            picks=_PICK_GOLD_FIRST if gold_first else _PICK_HUMAN,
            cols=cols,
            values=values,
            a_returned=", ".join(f'"{f.column}"' for f in A.fields),
            i_returned=", ".join(f'annotation_item."{f.column}"' for f in I.fields),
            stats=", ".join(STATS_COLUMNS),
            made=_MADE.columns,
            bumped=_BUMPED.columns,
            a=A.columns,
            i=I.columns,
            stats_out=", ".join(f"stats.{c}" for c in STATS_COLUMNS),
        )
    return sql


# ---------------------------------------------------------------------------------------------
# The submit: read the assignment with its item, project and the annotator's labeler in one trip
# (`by` picks it by id or uuid; the locking path appends FOR UPDATE OF a, i), then write.

SUBMIT_READ = f"""
SELECT {A.columns}, {I.columns}, {P.columns},
       (SELECT l.id FROM annotation_labeler l WHERE l.user_id = %s)
FROM annotation_assignment a
JOIN annotation_item i ON i.id = a.item_id
JOIN annotation_project p ON p.id = i.project_id
WHERE a.annotator_id = %s AND {{by}}
"""  # noqa: S608 - columns from the models' metadata
BY_ID = "a.id = %s"
BY_UUID = "a.uuid = %s"
BY_UUID_MEMBER = (
    "a.uuid = %s AND EXISTS (SELECT 1 FROM annotation_membership m WHERE m.project_id = p.id AND m.user_id = %s)"
)
# A submit's writes, one statement for the optimistic and the locking path. The assignment is
# closed only while it is still this annotator's and in the state the caller found (`from_state`;
# with `live_only`, also unexpired): the gate, `a`. The judgment, the item's counts and the
# annotator's stats are written only through the gate's row, so an assignment that changed since
# it was read writes nothing. The item's counts are raised from their current values under its
# row lock; a lease (`release` = 1) gives its slot back, a lease the reaper already expired has
# none to give. Rows are locked in one order: the assignment, then the item (`i` reads `a`), then
# the annotator's stats (`s` reads `i`).
_FULL_AFTER = overlap.full_sql("annotation_item", human_count="annotation_item.human_count + 1")
SUBMIT_GATED = f"""
WITH a AS (
    UPDATE annotation_assignment SET state = '{SUBMITTED}', finished_at = %(now)s
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
                       AND {_FULL_AFTER}
                      THEN '{Item.Status.DONE.value}' ELSE annotation_item.status END
    FROM a WHERE annotation_item.id = a.item_id
    RETURNING annotation_item.human_count, annotation_item.leased_count, annotation_item.status
),
s AS ({STATS_UPSERT.format(source=f"SELECT {STATS_ROW} FROM i")})
SELECT j.id, i.human_count, i.leased_count, i.status, {", ".join(f"s.{c}" for c in STATS_COLUMNS)}
FROM j, i, s
"""  # noqa: S608 - constants; the judgment's columns come from the model's metadata
