"""Leases that end before an answer: run out (the reaper), or ended early because the annotator
left the project or a curator withdrew the item. Each gives its slot on the item back."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from annotation.models import Assignment, Item
from annotation.queue import sql

logger = logging.getLogger(__name__)

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


def give_back_slot(item_id: int) -> None:
    """One lease fewer counted on the item (never below zero)."""
    Item.objects.filter(id=item_id, leased_count__gt=0).update(leased_count=F("leased_count") - 1)


# One reaper at a time (per database): two sweeping the same expired leases in different orders
# could deadlock; the one that finds the lock taken leaves the work to the other.
REAPER_LOCK = 0x7072_6566_6C6F_6F70 & 0x7FFF_FFFF_FFFF_FFFF  # "prefloop"


def _expire_leases(where: str, params: list[Any], now: Any, *, exclusive: bool = False) -> int:
    """Flip the matching live leases to expired and give their slots back, items in id order (the
    order every multi-item writer here takes). The reaper (`exclusive`) runs one at a time and is
    best effort: one that loses a deadlock to another writer leaves its work to the next sweep
    rather than fail the request it runs in."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                if exclusive and connection.vendor == "postgresql":
                    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [REAPER_LOCK])
                    if not cursor.fetchone()[0]:
                        return 0
                cursor.execute(
                    sql.EXPIRE.format(where=where), [Assignment.State.EXPIRED, now, Assignment.State.LEASED, *params]
                )
                item_ids = sorted(row[0] for row in cursor.fetchall())
            for item_id in item_ids:
                give_back_slot(item_id)
    except OperationalError as exc:
        if not exclusive or getattr(exc.__cause__, "sqlstate", None) != "40P01":  # deadlock_detected
            raise
        logger.warning("lease reaper lost a deadlock; the next sweep will reap")
        return 0
    return len(item_ids)
