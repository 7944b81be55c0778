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
