"""The annotation queue: overlap, leases, gold items, skip and flag, idempotent submits, bias controls."""

from __future__ import annotations

import os
import random
from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership, Project
from annotation.queue import handout, leases, submitting
from annotation.schema import PayloadError
from annotation.services import membership_set, project_set_guidelines, project_set_schema
from tests.conftest import RUBRIC_SCHEMA, jsonl, pair_row

PW = {"pairwise": {"choice": "A", "strength": 1}}


@pytest.fixture
def team(make_user, make_project, curator):
    project = make_project("q", curator=curator, overlap=2)
    users = [make_user(f"ann{i}") for i in range(3)]
    for u in users:
        membership_set(project=project, user=u, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(3)]))
    return project, users


def test_each_item_gets_exactly_overlap_judgments_and_nobody_sees_it_twice(team) -> None:
    project, users = team
    served: dict[str, list[str]] = {}
    for _ in range(5):
        for u in users:
            a = queue.next_assignment(project=project, user=u)
            if a is None:
                continue
            served.setdefault(a.item.external_id, []).append(u.username)
            queue.submit(assignment_id=a.id, user=u, payload=PW)
    assert sorted(served) == ["r0", "r1", "r2"]
    for names in served.values():
        assert len(names) == 2 and len(set(names)) == 2
    assert all(i.human_count == 2 and i.status == "done" and i.leased_count == 0 for i in Item.objects.all())
    assert all(queue.next_assignment(project=project, user=u) is None for u in users)


def test_a_live_lease_is_resumed_not_duplicated(team) -> None:
    project, (alice, *_) = team
    first = queue.next_assignment(project=project, user=alice)
    again = queue.next_assignment(project=project, user=alice)
    assert first.id == again.id
    assert Assignment.objects.filter(annotator=alice).count() == 1


def test_an_expired_lease_returns_the_item_to_the_queue(make_user, make_project, curator) -> None:
    project = make_project("lease", curator=curator, overlap=1, lease_seconds=60)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice, bob = make_user("a1"), make_user("b1")
    lease = queue.next_assignment(project=project, user=alice)
    assert queue.next_assignment(project=project, user=bob) is None  # the only slot is leased
    Assignment.objects.filter(id=lease.id).update(
        leased_at=timezone.now() - timedelta(minutes=5), expires_at=timezone.now() - timedelta(minutes=4)
    )
    bobs = queue.next_assignment(project=project, user=bob)
    assert bobs is not None and bobs.item_id == lease.item_id
    assert Assignment.objects.get(id=lease.id).state == "expired"
    assert Item.objects.get().leased_count == 1
    # Alice answers late: the slot went to Bob, so her answer is refused with a reason.
    with pytest.raises(queue.QueueError, match="went to another annotator"):
        queue.submit(assignment_id=lease.id, user=alice, payload=PW)
    queue.submit(assignment_id=bobs.id, user=bob, payload=PW)
    assert Judgment.objects.count() == 1


def test_a_late_answer_is_kept_when_the_slot_is_still_free(make_user, make_project, curator) -> None:
    project = make_project("late", curator=curator, overlap=1, lease_seconds=60)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice = make_user("a2")
    lease = queue.next_assignment(project=project, user=alice)
    Assignment.objects.filter(id=lease.id).update(
        leased_at=timezone.now() - timedelta(minutes=5), expires_at=timezone.now() - timedelta(minutes=4)
    )
    queue.submit(assignment_id=lease.id, user=alice, payload=PW)
    item = Item.objects.get()
    assert (item.human_count, item.leased_count, item.status) == (1, 0, "done")


def test_submitting_twice_stores_one_judgment(team) -> None:
    project, (alice, *_) = team
    a = queue.next_assignment(project=project, user=alice)
    first = queue.submit(assignment_id=a.id, user=alice, payload=PW, time_spent_ms=1200)
    second = queue.submit(assignment_id=a.id, user=alice, payload={"pairwise": {"choice": "B", "strength": 2}})
    assert first.created and not second.created
    assert first.judgment.id == second.judgment.id
    assert Judgment.objects.count() == 1
    assert Item.objects.get(id=a.item_id).human_count == 1


def test_answers_are_mapped_from_display_order_to_stored_order(make_user, make_project, curator) -> None:
    project = make_project("order", schema=RUBRIC_SCHEMA, curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice = make_user("a3")
    a = queue.next_assignment(project=project, user=alice)
    Assignment.objects.filter(id=a.id).update(response_order=[1, 0])  # B was shown on the left
    shown_left = "Answer B1"
    payload = {
        "pairwise": {"choice": "A", "strength": 2},  # the left one, i.e. stored response 1
        "rubric": [{"helpfulness": 5}, {"helpfulness": 1}],
        "spans": [{"response": 0, "start": 0, "end": 6, "category": "factual"}],
        "justification": "left is better",
    }
    j = queue.submit(assignment_id=a.id, user=alice, payload=payload).judgment
    assert j.payload["pairwise"] == {"choice": "B", "strength": 2}
    assert j.payload["rubric"] == [{"helpfulness": 1}, {"helpfulness": 5}]
    assert j.payload["spans"][0]["response"] == 1
    assert Item.objects.get().responses[1]["text"][0:6] == shown_left[0:6]
    assert j.response_order == [1, 0]


def test_response_order_is_randomized_per_assignment(make_user, make_project, curator) -> None:
    project = make_project("rand", schema={"ranking": {"k": 4}}, curator=curator, overlap=1)
    rows = [{"id": f"k{i}", "prompt": "p", "responses": ["a", "b", "c", "d"]} for i in range(30)]
    import_items(project=project, fileobj=jsonl(rows))
    alice = make_user("a4")
    orders = set()
    rng = random.Random(7)
    for _ in range(30):
        a = queue.next_assignment(project=project, user=alice, rng=rng)
        orders.add(tuple(a.response_order))
        queue.skip(assignment_id=a.id, user=alice)
    assert len(orders) > 10


def test_invalid_answers_are_refused_and_the_lease_kept(team) -> None:
    project, (alice, *_) = team
    a = queue.next_assignment(project=project, user=alice)
    with pytest.raises(PayloadError):
        queue.submit(assignment_id=a.id, user=alice, payload={"pairwise": {"choice": "A", "strength": 9}})
    assert Assignment.objects.get(id=a.id).state == "leased"
    assert queue.next_assignment(project=project, user=alice).id == a.id


def test_skip_and_flag_are_recorded_and_give_the_slot_back(team) -> None:
    project, (alice, *_) = team
    a = queue.next_assignment(project=project, user=alice)
    queue.skip(assignment_id=a.id, user=alice, reason="not sure")
    a.refresh_from_db()
    assert (a.state, a.skip_reason, a.flagged) == ("skipped", "not sure", False)
    b = queue.next_assignment(project=project, user=alice)
    assert b.item_id != a.item_id  # never the same item twice, skipped ones included
    with pytest.raises(queue.QueueError, match="why"):
        queue.skip(assignment_id=b.id, user=alice, flag=True)
    queue.skip(assignment_id=b.id, user=alice, reason="prompt is cut off", flag=True)
    b.refresh_from_db()
    assert (b.state, b.flagged, b.flag_reason) == ("skipped", True, "prompt is cut off")
    assert Item.objects.get(id=b.item_id).leased_count == 0
    with pytest.raises(queue.QueueError, match="skipped"):
        queue.submit(assignment_id=b.id, user=alice, payload=PW)


def test_gold_items_are_mixed_in_and_scored_silently(make_user, make_project, curator) -> None:
    project = make_project("gold", curator=curator, overlap=1, gold_rate=0.5)
    rows = [pair_row(i) for i in range(10)] + [
        pair_row(100 + i, gold_answer={"pairwise": {"choice": "B", "strength": 1}}) for i in range(10)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    alice = make_user("a5")
    rng = random.Random(1)
    gold_seen = 0
    while (a := queue.next_assignment(project=project, user=alice, rng=rng)) is not None:
        order = a.response_order
        shown_b_is_stored_b = order[1] == 1
        answer = {"pairwise": {"choice": "B" if shown_b_is_stored_b else "A", "strength": 1}}
        j = queue.submit(assignment_id=a.id, user=alice, payload=answer).judgment
        if a.is_gold:
            gold_seen += 1
            assert j.gold_score == 1.0
        else:
            assert j.gold_score is None
    assert 3 <= gold_seen <= 10  # about one gold item per regular one at a rate of 0.5
    # Once the regular work is done the queue is empty: gold items are checks, never work of their own.
    assert Item.objects.filter(is_gold=False, status="done").count() == 10
    assert Item.objects.filter(is_gold=True, status="open").count() == 10  # gold stays available


def test_judgments_record_schema_and_guidelines_versions(team, curator) -> None:
    from annotation.schema import JudgmentSchema

    project, (alice, *_) = team
    project = project_set_guidelines(project=project, text="New rules", by=curator)
    project = project_set_schema(
        project=project, schema=JudgmentSchema.model_validate({"pairwise": {"allow_tie": False}}), by=curator
    )
    a = queue.next_assignment(project=project, user=alice)
    j = queue.submit(assignment_id=a.id, user=alice, payload=PW, time_spent_ms=999_999_999).judgment
    assert (j.schema_version, j.guidelines_version) == (2, 2)
    assert j.time_spent_ms <= (timezone.now() - a.leased_at).total_seconds() * 1000  # capped by the lease


def test_imported_labels_do_not_count_toward_overlap(make_user, make_project, curator) -> None:
    project: Project = make_project("imp", curator=curator, overlap=2)
    import_items(project=project, fileobj=jsonl([pair_row(1, label="A"), pair_row(2)]))
    assert Item.objects.get(external_id="r1").human_count == 0
    alice, bob = make_user("a6"), make_user("b6")
    got = []
    for u in (alice, bob):
        while (a := queue.next_assignment(project=project, user=u)) is not None:
            got.append((u.username, a.item.external_id))
            queue.submit(assignment_id=a.id, user=u, payload=PW)
    assert sorted(got) == [("a6", "r1"), ("a6", "r2"), ("b6", "r1"), ("b6", "r2")]
    assert {(i.human_count, i.status) for i in Item.objects.filter(project=project)} == {(2, "done")}


def test_annotator_progress_is_kept_by_submit_and_skip_and_starts_again_each_day(project, annotator) -> None:
    from annotation.models import AnnotatorStats
    from annotation.selectors import annotator_progress

    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(5)]))
    answer = {"pairwise": {"choice": "A", "strength": 1}}
    for _ in range(3):
        a = queue.next_assignment(project=project, user=annotator)
        submitted = queue.submit(assignment_id=a.id, user=annotator, payload=answer, time_spent_ms=2000)
    assert (submitted.stats.judged, submitted.stats.judged_today) == (3, 3)
    assert queue.submit(assignment_id=a.id, user=annotator, payload=answer).stats is None  # a repeat counts nothing
    a = queue.next_assignment(project=project, user=annotator)
    queue.skip(assignment_id=a.id, user=annotator, reason="unclear")
    spent = sum(Judgment.objects.filter(labeler__user=annotator).values_list("time_spent_ms", flat=True))
    p = annotator_progress(annotator, project)
    assert (p["mine"], p["today"], p["skipped_today"]) == (3, 3, 1)
    assert p["avg_seconds"] == round(spent / 3 / 1000, 1)
    # A new day: today's counts start from zero, the total carries on.
    AnnotatorStats.objects.filter(project=project, user=annotator).update(day=timezone.now().date() - timedelta(days=1))
    p = annotator_progress(annotator, project)
    assert (p["mine"], p["today"], p["skipped_today"], p["avg_seconds"]) == (3, 0, 0, 0)
    b = queue.next_assignment(project=project, user=annotator)
    queue.submit(assignment_id=b.id, user=annotator, payload=answer)
    p = annotator_progress(annotator, project)
    assert (p["mine"], p["today"], p["skipped_today"]) == (4, 1, 0)
    assert AnnotatorStats.objects.get(project=project, user=annotator).day == timezone.now().date()


def test_annotator_stats_migration_counts_existing_work(project, annotator) -> None:
    import importlib

    from django.apps import apps

    from annotation.models import AnnotatorStats

    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(4)]))
    answer = {"pairwise": {"choice": "A", "strength": 1}}
    done = []
    for _ in range(3):
        a = queue.next_assignment(project=project, user=annotator)
        queue.submit(assignment_id=a.id, user=annotator, payload=answer)
        done.append(a)
    a = queue.next_assignment(project=project, user=annotator)
    queue.skip(assignment_id=a.id, user=annotator)
    Assignment.objects.filter(id=done[0].id).update(finished_at=timezone.now() - timedelta(days=2))
    Judgment.objects.filter(assignment__in=done).update(time_spent_ms=1500)
    AnnotatorStats.objects.all().delete()
    migration = importlib.import_module("annotation.migrations.0009_annotator_stats")
    migration.backfill(apps, None)
    row = AnnotatorStats.objects.get(project=project, user=annotator)
    assert (row.judged, row.judged_today, row.skipped_today, row.time_today_ms) == (3, 2, 1, 3000)


def _between_read_and_write(monkeypatch, action) -> None:
    """Run `action` once, after the optimistic submit has read the lease and before it writes."""
    real, done = submitting._judgment_fields, []

    def fields(*args, **kwargs):
        if not done:
            done.append(1)
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(submitting, "_judgment_fields", fields)


def test_a_submit_whose_lease_is_answered_in_between_returns_that_judgment(team, monkeypatch) -> None:
    """The other submit of the same lease (another tab, a retry) gets there between this one's read
    and its write: the gated write writes nothing, and the locking path returns the first judgment."""
    project, (alice, *_) = team
    a = queue.next_assignment(project=project, user=alice)
    first: list[queue.Submitted] = []
    _between_read_and_write(monkeypatch, lambda: first.append(queue.submit(assignment_id=a.id, user=alice, payload=PW)))
    second = queue.submit(assignment_id=a.id, user=alice, payload={"pairwise": {"choice": "B", "strength": 2}})
    assert first[0].created and not second.created and second.judgment.id == first[0].judgment.id
    assert Judgment.objects.get().payload["pairwise"]["strength"] == 1
    item = Item.objects.get(id=a.item_id)
    assert (item.human_count, item.leased_count) == (1, 0)


def test_a_submit_whose_lease_is_reaped_in_between_goes_through_the_locking_path(
    make_user, make_project, curator, monkeypatch
) -> None:
    project = make_project("reaped", curator=curator, overlap=1, lease_seconds=60)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice, bob = make_user("a3"), make_user("b3")
    lease = queue.next_assignment(project=project, user=alice)

    def expire_and_give_to_bob() -> None:
        past = timezone.now() - timedelta(seconds=1)
        Assignment.objects.filter(id=lease.id).update(leased_at=past - timedelta(seconds=60), expires_at=past)
        assert queue.reap_expired_leases() == 1
        assert queue.next_assignment(project=project, user=bob) is not None

    _between_read_and_write(monkeypatch, expire_and_give_to_bob)
    with pytest.raises(queue.QueueError, match="went to another annotator"):
        queue.submit(assignment_id=lease.id, user=alice, payload=PW)
    assert not Judgment.objects.exists()
    item = Item.objects.get()
    assert (item.human_count, item.leased_count, item.status) == (0, 1, "open")  # bob's lease only
    assert Assignment.objects.get(id=lease.id).state == "expired"


def test_forked_workers_do_not_share_a_sequence_of_display_orders() -> None:
    """gunicorn forks its workers after importing the app: each reseeds the queue's generator."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first draw, to the parent
        os.write(write, repr(handout._RNG.random()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child = float(os.read(read, 64))
    os.close(read)
    assert child != handout._RNG.random()  # without the reseed, the child drew the parent's next number


@pytest.mark.django_db(transaction=True)  # each reap commits, as outside a test, and frees its lock
def test_one_reaper_at_a_time_and_the_other_leaves_the_work_to_it(make_user, make_project, curator) -> None:
    import psycopg
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("advisory locks are PostgreSQL's")
    project = make_project("reap", curator=curator, lease_seconds=60)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    lease = queue.next_assignment(project=project, user=make_user("r1"))
    past = timezone.now() - timedelta(minutes=5)
    Assignment.objects.filter(id=lease.id).update(leased_at=past, expires_at=past + timedelta(seconds=60))
    s = connection.settings_dict
    dsn = f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER']} dbname={s['NAME']}"
    with psycopg.connect(dsn) as other:  # another process's reaper, mid-sweep
        assert other.execute("SELECT pg_try_advisory_xact_lock(%s)", [leases.REAPER_LOCK]).fetchone()[0]
        assert queue.reap_expired_leases() == 0
        assert Assignment.objects.get(id=lease.id).state == "leased"
    assert queue.reap_expired_leases() == 1
    assert Assignment.objects.get(id=lease.id).state == "expired"
