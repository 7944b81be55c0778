"""The queue's two implementations make the same decisions: the PostgreSQL statements
(`annotation/queue/sql.py`) and the ORM path the embedded SQLite default takes
(`annotation/queue/portable.py`). The same script of hand-outs, submits, skips and leases that run
out is played twice from the same state with the same random draws, once through each, and every
hand-out, judgment and count must come out the same."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership
from annotation.queue import sql
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row

GOLD = {"pairwise": {"choice": "A", "strength": 1}}


class _UndoError(Exception):
    """Carries a run's record out of the savepoint it is rolled back with."""


@pytest.fixture
def world(make_user, make_project, curator):
    project = make_project("parity", curator=curator, overlap=2, gold_rate=0.3, lease_seconds=600)
    rows = [pair_row(i) for i in range(8)] + [pair_row(100 + i, gold_answer=GOLD) for i in range(2)]
    import_items(project=project, fileobj=jsonl(rows))
    # Priorities with ties (served by id among equals), one item the router sent to AI only.
    for external_id, priority in {"r1": 2.0, "r3": 2.0, "r5": 5.0, "r6": 1.0}.items():
        Item.objects.filter(project=project, external_id=external_id).update(priority=priority)
    Item.objects.filter(project=project, external_id="r7").update(route=Item.Route.AI)
    users = [make_user(f"par{i}") for i in range(3)]
    for u in users:
        membership_set(project=project, user=u, role=Membership.Role.ANNOTATOR)
    assert Item.objects.filter(project=project, is_gold=True).count() == 2
    return project, users


def _play(project, users, *, statements: bool, monkeypatch, seed: int) -> dict[str, Any]:
    """Run the script through one implementation inside a savepoint, return what happened, and
    roll the database back to the state it started from."""
    monkeypatch.setattr(sql, "statements_apply", lambda: statements)
    rng, script = random.Random(seed), random.Random(seed + 1)
    handed: list[tuple[Any, ...]] = []
    try:
        with transaction.atomic():
            for _ in range(12):
                for user in users:
                    a = queue.next_assignment(project=project, user=user, rng=rng)
                    if a is None:
                        handed.append((user.username, None))
                        continue
                    draw = script.random()
                    action = "submit" if draw < 0.6 else "skip" if draw < 0.75 else "expire" if draw < 0.9 else "keep"
                    handed.append((user.username, a.item.external_id, tuple(a.response_order), a.is_gold, action))
                    if action == "submit":
                        choice = "A" if script.random() < 0.5 else "B"
                        payload = {"pairwise": {"choice": choice, "strength": 1}}
                        queue.submit(assignment_id=a.id, user=user, payload=payload)
                    elif action == "skip":
                        queue.skip(assignment_id=a.id, user=user, reason="unsure")
                    elif action == "expire":  # walks away: the lease runs out and is reaped
                        past = timezone.now() - timedelta(seconds=1)
                        Assignment.objects.filter(id=a.id).update(
                            leased_at=past - timedelta(seconds=600), expires_at=past
                        )
                        assert queue.reap_expired_leases() == 1
                    # else: keeps the lease, and is handed it again next round
            record = {
                "handed": handed,
                "items": sorted(
                    Item.objects.filter(project=project).values_list(
                        "external_id", "human_count", "leased_count", "status"
                    )
                ),
                "assignments": sorted(
                    Assignment.objects.filter(item__project=project).values_list(
                        "item__external_id", "annotator__username", "state", "response_order"
                    ),
                    key=repr,
                ),
                "judgments": sorted(
                    Judgment.objects.filter(item__project=project).values_list(
                        "item__external_id", "labeler__user__username", "payload", "gold_score"
                    ),
                    key=repr,
                ),
            }
            raise _UndoError(record)
    except _UndoError as undo:
        return undo.args[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_statements_and_the_orm_path_hand_out_the_same_for_the_same_state(world, monkeypatch, seed) -> None:
    project, users = world
    on_postgresql = _play(project, users, statements=True, monkeypatch=monkeypatch, seed=seed)
    through_orm = _play(project, users, statements=False, monkeypatch=monkeypatch, seed=seed)
    assert on_postgresql == through_orm
    handed = [h for h in on_postgresql["handed"] if h[1] is not None]
    # The script reached every branch: gold items, a queue that ran dry for someone, a lease kept
    # and handed again, and a lease that ran out relet to the same annotator.
    assert any(h[3] for h in handed)
    assert any(h[1] is None for h in on_postgresql["handed"])
    expired_before, kept_before, relet, resumed = set(), set(), 0, 0
    for user, item, _, _, action in handed:
        relet += (user, item) in expired_before
        resumed += (user, item) in kept_before
        if action == "expire":
            expired_before.add((user, item))
        elif action == "keep":
            kept_before.add((user, item))
    assert relet > 0 and resumed > 0
    assert on_postgresql["judgments"] and not Judgment.objects.exists()  # both runs rolled back


def test_the_orm_path_is_the_one_taken_when_the_statements_do_not_apply(world, monkeypatch) -> None:
    """The parity above means something only if switching really changes the path taken."""
    project, (alice, *_) = world
    taken: list[str] = []
    real_lease_next = queue.portable.lease_next

    def spy(*args: Any, **kwargs: Any) -> Any:
        taken.append("orm")
        return real_lease_next(*args, **kwargs)

    monkeypatch.setattr(queue.portable, "lease_next", spy)
    assert queue.next_assignment(project=project, user=alice) is not None
    assert taken == []
    monkeypatch.setattr(sql, "statements_apply", lambda: False)
    assert queue.next_assignment(project=project, user=alice) is not None
    assert taken == ["orm"]
