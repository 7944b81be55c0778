"""The human annotation queue: handing out the next item, submitting, skipping, leases that end.

Invariants, kept under row locks inside one statement or transaction per call:
- an item never has more than its overlap of human judgments plus live leases
  (`annotation.overlap`: an item wants `project.overlap + Item.extra_overlap` human judgments,
  and `human_count + leased_count` never passes that);
- an annotator is never handed the same item twice (the database refuses a second assignment
  row for the same item and annotator), with one exception: an annotator whose lease on an item
  ran out gets that item back, on the same assignment row leased anew (same uuid and display
  order, so a page still open on it answers it), when no item they never had is left for them.
  Otherwise two annotators who each let one lease run out would both be told "nothing left"
  while the item waits for an answer nobody can give;
- a lease that runs out returns its slot to the queue (`reap_expired_leases`, run before a
  hand-out at most every two seconds per process, and by a periodic task);
- submitting the same assignment twice stores one judgment;
- rows are locked in one order everywhere: assignment, then item, then the annotator's stats.

Modules, by job:
- `handout.py`   the next lease: `hand_out` / `next_assignment`, the random draws;
- `submitting.py` the answer: `submit` (optimistic, then locking), `skip`, the annotator's counts;
- `answers.py`   an answer mapped from display to stored order, and its gold score;
- `leases.py`    leases that end: the reaper, an annotator leaving, an item withdrawn;
- `sql.py`       the PostgreSQL statements' texts and the row shapes they return;
- `portable.py`  the same hand-out and submit through the ORM, for every other database.

Why raw SQL, and only here. The ORM compiled each statement anew, about 1 ms of Python per
statement on the 2-core benchmark machine, more than PostgreSQL took to run it, and an annotation
loop (hand-out + submit) is the one path that runs thousands of times an hour. So on PostgreSQL
the hand-out and the submit are fixed statements, written once in `sql.py`, run through
`annotation/rows.py` (model rows loaded with the ORM's own converters, statements prepared on the
server after five runs) and the backend in `config/postgresql/` (a health check without a round
trip, psycopg's C timestamp loader). What each statement guarantees:
- `sql.next_sql` (the hand-out, one statement): the annotator's live lease if they hold one;
  else the best candidate (gold first when drawn; then open, routed to humans, with a free slot,
  never had by this annotator; then their expired lease on such an item, relet), locked FOR
  UPDATE SKIP LOCKED, so concurrent hand-outs never wait on each other nor take one row twice;
  the new assignment goes in with ON CONFLICT DO NOTHING and the item's lease is counted only for
  a row that went in; the annotator's counts come back beside it.
- `sql.ANY_LEFT`: whether an empty hand-out was empty because nothing is left, or because other
  hand-outs held the last candidates a moment (then it is asked again, three times at most).
- `sql.SUBMIT_READ` (+ FOR UPDATE OF a, i on the locking path): the assignment, its item and
  project and the annotator's labeler in one trip, only the annotator's own (and, by uuid, only
  while they are a member of the project).
- `sql.SUBMIT_GATED`: closes the assignment only if it is still in the state that was read (and,
  optimistically, unexpired); the judgment, the item's counts (done when full) and the
  annotator's stats are written only through that gate's row, so a lease that changed since it
  was read (a second submit, the reaper) writes nothing and the locking path decides.
- `sql.EXPIRE`: each lease is flipped by exactly one UPDATE, and only a flipped lease gives its
  slot back; the reaper holds an advisory lock, so two never sweep at once.
- `sql.BUMP_STATS` / `sql.STATS_UPSERT`: the annotator's day counts in one upsert, reset when the
  stored day is over (also used on SQLite, which has the same upsert).

The SQLite path. The embedded default (`make run` without DATABASE_URL) runs on SQLite, which has
no SKIP LOCKED, no FOR UPDATE and takes one writer at a time. There the same decisions are made
through the ORM in `portable.py`, one implementation, with the same random draws
(`handout.Draw`); `tests/test_queue_parity.py` runs both implementations on the same state on
PostgreSQL and asserts the same hand-outs, and `tests/test_embedded_annotate.py` runs the flow on
SQLite through the views.

One submit, top to bottom (the htmx request of the annotate page):
  annotation/views.py:assignment_submit      parse the answer and the timer
  -> annotation/queue/submitting.py:submit   read (sql.SUBMIT_READ), check, validate
                                             (answers.to_stored_order, schema), write
                                             (sql.SUBMIT_GATED); the annotator's counts back
  -> annotation/queue/handout.py:hand_out    the next lease (sql.next_sql), counts beside
  -> annotation/selectors.py:annotator_progress   the progress strip from those counts
  -> annotation/item_html.py:response        the item area rendered (Jinja2), sent back
Each step is called from the view and calls only down (to `sql`, `rows`, `answers`), never back
into a module already left.
"""

from annotation.queue.answers import gold_score, to_stored_order
from annotation.queue.handout import Handout, hand_out, next_assignment
from annotation.queue.leases import reap_expired_leases, release_item_leases, release_leases
from annotation.queue.sql import AnnotatorDay
from annotation.queue.submitting import (
    NoSuchAssignmentError,
    QueueError,
    Submitted,
    bump_stats,
    human_labeler,
    schema_at,
    skip,
    submit,
)

__all__ = [
    "AnnotatorDay",
    "Handout",
    "NoSuchAssignmentError",
    "QueueError",
    "Submitted",
    "bump_stats",
    "gold_score",
    "hand_out",
    "human_labeler",
    "next_assignment",
    "reap_expired_leases",
    "release_item_leases",
    "release_leases",
    "schema_at",
    "skip",
    "submit",
    "to_stored_order",
]
