"""32 threads asking for work at once on a project with overlap 2 (real PostgreSQL, real row locks)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connection, connections

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row


@pytest.mark.django_db(transaction=True)
def test_32_threads_never_overfill_an_item_nor_repeat_one_for_an_annotator(make_user, make_project) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL")
    project = make_project("busy", overlap=2)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(40)]))
    users = [make_user(f"c{i}") for i in range(8)]
    for u in users:
        membership_set(project=project, user=u, role=Membership.Role.ANNOTATOR)
    barrier = threading.Barrier(32)
    handed: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(user) -> None:
        try:
            barrier.wait()
            while (a := queue.next_assignment(project=project, user=user)) is not None:
                with lock:
                    handed.append((a.item_id, user.id))
                queue.submit(assignment_id=a.id, user=user, payload={"pairwise": {"choice": "B", "strength": 1}})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(users[i % 8],)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    per_item = Counter(item for item, _ in set(handed))
    assert max(per_item.values()) == 2
    assert Counter(Assignment.objects.values_list("item_id", flat=True)).most_common(1)[0][1] == 2
    assert len(set(handed)) == len({(i, u) for i, u in handed}) == Assignment.objects.count() == 80
    assert Judgment.objects.count() == 80
    assert set(Item.objects.values_list("status", "human_count", "leased_count")) == {("done", 2, 0)}


def _one_annotator(make_project, make_user, slug: str, *, items: int):
    """A project with overlap 2 and `items` pairs, and one annotator of it (PostgreSQL only)."""
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL")
    project = make_project(slug, overlap=2)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(items)]))
    user = make_user(slug)
    membership_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
    return project, user


@pytest.mark.django_db(transaction=True)
def test_one_annotator_asking_from_16_threads_at_once_keeps_the_lease_counts_exact(make_user, make_project) -> None:
    """Same-annotator races take the hand-out's ON CONFLICT path (a pick whose snapshot predates
    the other request's assignment): the refused row must count nothing on the item."""
    project, user = _one_annotator(make_project, make_user, "tabs", items=10)
    barrier = threading.Barrier(16)
    got: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            a = queue.next_assignment(project=project, user=user)
            got.append(a.item_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert len(got) == 16
    leased = Counter(Assignment.objects.filter(state="leased").values_list("item_id", flat=True))
    assert set(got) == set(leased)  # every answer is a lease that exists
    assert max(leased.values()) == 1  # never one item twice to the annotator
    counts = dict(Item.objects.filter(project=project).values_list("id", "leased_count"))
    assert all(counts[item] == leased.get(item, 0) for item in counts)


@pytest.mark.django_db(transaction=True)
def test_one_lease_submitted_from_16_threads_at_once_stores_one_judgment(make_user, make_project) -> None:
    """A double click times sixteen: every submit answers with the same judgment, stored once, and
    the item is counted once (the optimistic write's gate, then the locking path, under real locks)."""
    project, user = _one_annotator(make_project, make_user, "clicks", items=3)
    lease = queue.next_assignment(project=project, user=user)
    barrier = threading.Barrier(16)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def click(k: int) -> None:
        try:
            barrier.wait()
            payload = {"pairwise": {"choice": "AB"[k % 2], "strength": 1}}
            done = queue.submit(assignment_uuid=lease.uuid, user=user, payload=payload)
            results.append((done.judgment.id, done.created))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=click, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    judgment = Judgment.objects.get()
    assert {j for j, _ in results} == {judgment.id} and sum(created for _, created in results) == 1
    item = Item.objects.get(id=lease.item_id)
    assert (item.human_count, item.leased_count) == (1, 0)
    assert Assignment.objects.get(id=lease.id).state == "submitted"


@pytest.mark.django_db(transaction=True)
def test_the_queue_statements_are_prepared_and_the_orm_binds_on_the_client(make_user, make_project) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    if connection.settings_dict["OPTIONS"].get("prepare_threshold") is None:
        pytest.skip("turned off (DB_PREPARED_STATEMENTS=0)")
    from django.db.backends.postgresql.base import ServerBindingCursor

    from annotation import rows

    project = make_project("prepared", overlap=1)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(10)]))
    user = make_user("prep")
    membership_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
    for _ in range(7):
        a = queue.next_assignment(project=project, user=user)
        queue.submit(assignment_id=a.id, user=user, payload={"pairwise": {"choice": "A", "strength": 1}})
    with connection.cursor() as c:
        assert not isinstance(c.cursor, ServerBindingCursor)  # the ORM: no 65,535-parameter cap
        c.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [r[0] for r in c.fetchall()]
    with rows.cursor() as c:
        assert isinstance(c.cursor, ServerBindingCursor)
    assert any("WITH live AS" in s for s in prepared), prepared  # the hand-out
    assert any("UPDATE annotation_assignment SET state = 'submitted'" in s for s in prepared), prepared  # the submit
