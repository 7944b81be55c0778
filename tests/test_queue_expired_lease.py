"""An expired lease does not lock its annotator out: when no item they never had is left, the
annotator whose lease ran out gets the item back (the same assignment, leased anew), and the item
is answered once. Leases are made to run out by moving their expiry into the past."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row

PW = {"pairwise": {"choice": "A", "strength": 1}}


def _run_out(assignment: Assignment) -> None:
    past = timezone.now() - timedelta(seconds=1)
    Assignment.objects.filter(id=assignment.id).update(leased_at=past - timedelta(seconds=10), expires_at=past)


@pytest.fixture
def one_item(make_user, make_project, curator):
    project = make_project("lapse", curator=curator, overlap=1, lease_seconds=10)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice, bob = make_user("alice"), make_user("bob")
    for u in (alice, bob):
        membership_set(project=project, user=u, role=Membership.Role.ANNOTATOR)
    return project, alice, bob


def test_each_annotator_whose_lease_ran_out_gets_the_item_back_and_it_is_answered_once(one_item) -> None:
    project, alice, bob = one_item
    first = queue.next_assignment(project=project, user=alice)
    _run_out(first)
    taken = queue.next_assignment(project=project, user=bob)  # bob never had it: his first
    assert taken is not None and taken.item_id == first.item_id
    _run_out(taken)

    back = queue.next_assignment(project=project, user=alice)
    assert back is not None and back.item_id == first.item_id
    assert (back.id, back.uuid, back.response_order) == (first.id, first.uuid, first.response_order)
    assert back.state == "leased" and back.expires_at > timezone.now() and back.finished_at is None
    assert queue.next_assignment(project=project, user=bob) is None  # alice holds the only slot
    _run_out(back)

    again = queue.next_assignment(project=project, user=bob)
    assert again is not None and again.id == taken.id
    done = queue.submit(assignment_uuid=again.uuid, user=bob, payload=PW)
    assert done.created
    assert queue.submit(assignment_uuid=again.uuid, user=bob, payload=PW).created is False

    item = Item.objects.get(project=project)
    assert (item.status, item.human_count, item.leased_count) == ("done", 1, 0)
    assert Judgment.objects.filter(item=item).count() == 1
    assert queue.next_assignment(project=project, user=alice) is None
    assert queue.next_assignment(project=project, user=bob) is None
    assert Assignment.objects.filter(item=item).count() == 2  # one row per annotator, never a second


def test_the_page_left_open_on_the_expired_lease_answers_it_once_it_is_leased_again(one_item) -> None:
    project, alice, _ = one_item
    first = queue.next_assignment(project=project, user=alice)
    _run_out(first)
    assert queue.reap_expired_leases() == 1
    back = queue.next_assignment(project=project, user=alice)
    assert back.id == first.id
    queue.submit(assignment_uuid=first.uuid, user=alice, payload=PW)  # the uuid the old page holds
    item = Item.objects.get(project=project)
    assert (item.status, item.human_count, item.leased_count) == ("done", 1, 0)
    assert Judgment.objects.get(item=item).assignment_id == first.id


def test_an_item_never_had_comes_before_one_whose_lease_ran_out(make_user, make_project, curator) -> None:
    project = make_project("lapse2", curator=curator, overlap=1, lease_seconds=10)
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    alice = make_user("alice")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    first = queue.next_assignment(project=project, user=alice)
    _run_out(first)
    fresh = queue.next_assignment(project=project, user=alice)
    assert fresh.item_id != first.item_id
    queue.submit(assignment_id=fresh.id, user=alice, payload=PW)
    back = queue.next_assignment(project=project, user=alice)
    assert back is not None and back.id == first.id


def test_a_skipped_item_does_not_come_back(one_item) -> None:
    project, alice, _ = one_item
    first = queue.next_assignment(project=project, user=alice)
    queue.skip(assignment_id=first.id, user=alice)
    assert queue.next_assignment(project=project, user=alice) is None
