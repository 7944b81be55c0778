"""The queue at its edges: answers of the wrong shape, site admins annotating, late answers without a
timer, a schema or guidelines changed while an item is out, an item dropped while leased, the
overlap changed mid-way (through the admin), gold rubrics answered in part."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership, Project
from annotation.schema import JudgmentSchema
from annotation.services import membership_set, project_set_guidelines, project_set_schema
from curation.services import curation_action_apply
from tests.conftest import jsonl, pair_row

PW = {"pairwise": {"choice": "A", "strength": 1}}


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _submit(c: Client, assignment: Assignment, payload: dict, **extra: str):
    data = {"payload": json.dumps(payload), **extra}
    return c.post(reverse("annotation:submit", args=[assignment.uuid]), data, HTTP_HX_REQUEST="true")


def test_a_pairwise_answer_to_an_item_of_three_responses_is_refused_not_a_crash(
    make_project, make_user, curator
) -> None:
    project = make_project("rk", schema={"ranking": {"k": 3}}, curator=curator)
    import_items(project=project, fileobj=jsonl([{"id": "k1", "prompt": "p", "responses": ["a", "b", "c"]}]))
    alice = make_user("a1")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    lease = queue.next_assignment(project=project, user=alice)
    Assignment.objects.filter(id=lease.id).update(response_order=[2, 0, 1])
    response = _submit(client_for(alice), lease, {**PW, "ranking": [1, 2, 3]})
    assert response.status_code == 422
    assert "2 responses" in response.content.decode()
    assert not Judgment.objects.exists()


def test_a_site_admin_who_is_not_a_member_can_answer_and_skip_what_they_are_handed(
    make_project, make_user, curator
) -> None:
    project = make_project("adm", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    root = make_user("root", superuser=True)
    c = client_for(root)
    assert c.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200
    first = Assignment.objects.get(annotator=root)
    assert _submit(c, first, PW, time_ms="1500").status_code == 200
    assert Judgment.objects.get(assignment=first).time_spent_ms <= 1500
    second = Assignment.objects.get(annotator=root, state="leased")
    skipped = c.post(reverse("annotation:skip", args=[second.uuid]), HTTP_HX_REQUEST="true")
    assert skipped.status_code == 200
    assert Assignment.objects.get(id=second.id).state == "skipped"
    assert Item.objects.filter(project=project).values_list("leased_count", flat=True).distinct().get() == 0


def test_a_late_answer_without_a_timer_counts_at_most_the_lease_as_time_spent(make_project, make_user, curator) -> None:
    project = make_project("late", curator=curator, lease_seconds=600)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice = make_user("a2")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    lease = queue.next_assignment(project=project, user=alice)
    long_ago = timezone.now() - timedelta(days=50)  # past the column's range, were it counted whole
    Assignment.objects.filter(id=lease.id).update(leased_at=long_ago, expires_at=long_ago + timedelta(minutes=10))
    response = _submit(client_for(alice), lease, PW)  # no time_ms: a page without script
    assert response.status_code == 200
    assert Judgment.objects.get().time_spent_ms == 600_000


def test_an_answer_is_checked_against_and_records_the_schema_and_guidelines_it_was_shown_under(
    make_project, make_user, curator
) -> None:
    project = make_project("ver", curator=curator, schema={"pairwise": {"strengths": ["better", "much better"]}})
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    alice = make_user("a3")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    c = client_for(alice)
    assert c.get(reverse("annotation:annotate", args=[project.slug])).status_code == 200
    shown = Assignment.objects.get(annotator=alice)
    assert (shown.schema_version, shown.guidelines_version) == (1, 1)
    # While the page is open, the curator adds a strength level and rewrites the guidelines.
    three = JudgmentSchema.model_validate({"pairwise": {"strengths": ["slightly", "better", "much better"]}})
    project_set_schema(project=project, schema=three, by=curator)
    project_set_guidelines(project=project, text="New rules", by=curator)
    # Strength 3 exists only in the new schema: the page showed the old one, so it is refused.
    refused = _submit(c, shown, {"pairwise": {"choice": "A", "strength": 3}})
    assert refused.status_code == 422
    # The answer the page allowed ("much better", 2 under v1) is stored as made under v1.
    assert _submit(c, shown, {"pairwise": {"choice": "A", "strength": 2}}).status_code == 200
    first = Judgment.objects.get(assignment=shown)
    assert (first.schema_version, first.guidelines_version) == (1, 1)
    # The next item is shown under the new versions, and its answer records them.
    following = Assignment.objects.get(annotator=alice, state="leased")
    assert (following.schema_version, following.guidelines_version) == (2, 2)
    assert _submit(c, following, {"pairwise": {"choice": "B", "strength": 3}}).status_code == 200
    second = Judgment.objects.get(assignment=following)
    assert (second.schema_version, second.guidelines_version) == (2, 2)


def test_a_lease_shown_again_after_a_schema_change_takes_the_new_versions(make_project, make_user, curator) -> None:
    project = make_project("again", curator=curator, schema={"pairwise": {"allow_tie": False}})
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice = make_user("a4")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    lease = queue.next_assignment(project=project, user=alice)
    assert lease.schema_version == 1
    project = project_set_schema(
        project=project, schema=JudgmentSchema.model_validate({"pairwise": {"allow_tie": True}}), by=curator
    )
    again = queue.next_assignment(project=project, user=alice)  # a reload shows it with the new controls
    assert again.id == lease.id and again.schema_version == 2
    assert Assignment.objects.get(id=lease.id).schema_version == 2
    judgment = queue.submit(
        assignment_id=lease.id, user=alice, payload={"pairwise": {"choice": "tie", "strength": 0}}
    ).judgment
    assert judgment.schema_version == 2


def test_dropping_a_leased_item_ends_the_lease_and_refuses_a_late_answer(make_project, make_user, curator) -> None:
    project = make_project("drop", curator=curator, overlap=2)
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    alice = make_user("a5")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    lease = queue.next_assignment(project=project, user=alice)
    curation_action_apply(item=lease.item, actor=curator, action="drop", reason="broken prompt")
    item = Item.objects.get(id=lease.item_id)
    assert (item.status, item.leased_count) == ("dropped", 0)
    assert Assignment.objects.get(id=lease.id).state == "expired"
    response = _submit(client_for(alice), lease, PW)
    assert response.status_code == 422 and "withdrew" in response.content.decode()
    assert not Judgment.objects.exists()
    following = queue.next_assignment(project=project, user=alice)
    assert following is not None and following.item_id != lease.item_id


def _admin_post(admin, project: Project, **changes: str):
    c = client_for(admin)
    url = reverse("admin:annotation_project_change", args=[project.pk])
    form = c.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "schema"}
    data.update(
        {
            "schema": json.dumps(project.schema),
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            **changes,
        }
    )
    data.pop("created_by", None)
    return c.post(url, data)


@pytest.fixture
def staff(make_user):
    root = make_user("root", superuser=True)
    root.is_staff = True
    root.save()
    return root


def test_the_admin_versions_schema_and_guidelines_and_settles_items_when_the_overlap_changes(
    make_project, make_user, curator, staff
) -> None:
    project = make_project("ovl", curator=curator, overlap=1)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(3)]))
    alice, bob = make_user("a6"), make_user("b6")
    for u in (alice, bob):
        membership_set(project=project, user=u, role=Membership.Role.ANNOTATOR)
    for _ in range(2):
        lease = queue.next_assignment(project=project, user=alice)
        queue.submit(assignment_id=lease.id, user=alice, payload=PW)
    assert Item.objects.filter(status="done").count() == 2

    unchanged = _admin_post(staff, project, name="Renamed")
    assert unchanged.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.schema_version, project.guidelines_version) == ("Renamed", 1, 1)

    raised = _admin_post(staff, project, overlap="2", guidelines="Read twice.")
    assert raised.status_code == 302
    project.refresh_from_db()
    assert (project.overlap, project.guidelines_version, project.guidelines) == (2, 2, "Read twice.")
    assert Item.objects.filter(status="open").count() == 3  # the two done items want a second judgment
    got = []
    while (lease := queue.next_assignment(project=project, user=bob)) is not None:
        got.append(lease.item_id)
        queue.submit(assignment_id=lease.id, user=bob, payload=PW)
    assert len(got) == 3

    lowered = _admin_post(staff, project, overlap="1", schema='{"pairwise": {"allow_tie": false}}')
    assert lowered.status_code == 302
    project.refresh_from_db()
    assert project.overlap == 1 and project.schema_version == 2
    assert project.schema_versions.get(version=2).schema == project.schema
    assert Item.objects.filter(status="done").count() == 3
    assert queue.next_assignment(project=project, user=alice) is None

    bad = _admin_post(staff, project, schema='{"pairwise": {"strengths": "loud"}}')
    assert bad.status_code == 200 and "strengths" in str(bad.context["adminform"].form.errors)


def test_a_gold_rubric_answered_in_part_is_scored_on_the_ratings_given() -> None:
    schema = JudgmentSchema.model_validate(
        {"rubric": {"aspects": [{"name": "h", "scale": {"min": 1, "max": 5}}], "required": False}}
    )
    gold = {"rubric": [{"h": 1}, {"h": 5}]}
    assert queue.gold_score(schema, {"rubric": [{}, {}]}, gold) is None
    assert queue.gold_score(schema, {"rubric": [{"h": 1}, {}]}, gold) == 1.0
    assert queue.gold_score(schema, {"rubric": [{}, {"h": 1}]}, gold) == 0.0


def test_annotators_see_a_reference_not_the_external_id_and_the_admin_finds_it(
    make_project, make_user, curator, staff
) -> None:
    project = make_project("ref", curator=curator)
    import_items(
        project=project, fileobj=jsonl([{**pair_row(1), "id": "gold-check-1"}, {**pair_row(2), "id": "gpt4-chosen"}])
    )
    alice = make_user("a7")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    seen = set()
    c = client_for(alice)
    for _ in range(2):
        body = c.get(reverse("annotation:annotate", args=[project.slug])).content.decode()
        lease = Assignment.objects.get(annotator=alice, state="leased")
        assert "gold-check" not in body and "gpt4-chosen" not in body
        assert f"Item {lease.item.uuid.hex[:8]}" in body
        seen.add(lease.item.uuid.hex[:8])
        queue.submit(assignment_id=lease.id, user=alice, payload=PW)
    found = client_for(staff).get(reverse("admin:annotation_item_changelist"), {"q": seen.pop()})
    assert found.status_code == 200 and found.context["cl"].result_count == 1


def test_an_item_dropped_again_by_an_undo_ends_its_lease_and_refuses_the_answer(
    make_project, make_user, curator
) -> None:
    from curation.services import curation_action_undo

    project = make_project("undo", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    alice = make_user("a8")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    item = Item.objects.get()
    curation_action_apply(item=item, actor=curator, action="drop")
    requeued = curation_action_apply(item=item, actor=curator, action="requeue")
    lease = queue.next_assignment(project=project, user=alice)
    assert lease is not None and lease.item_id == item.id
    curation_action_undo(action=requeued, actor=curator)  # back to dropped
    assert Item.objects.get().status == "dropped"
    assert Assignment.objects.get(id=lease.id).state == "expired"
    response = _submit(client_for(alice), lease, PW)
    assert response.status_code == 422 and "withdrew" in response.content.decode()


def test_a_live_lease_on_a_dropped_item_is_neither_served_again_nor_answered(make_project, make_user, curator) -> None:
    """However an item came to be dropped under a live lease (an admin edit, a race with the drop),
    the optimistic submit hands it to the locking path, which refuses it."""
    project = make_project("race", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2)]))
    alice = make_user("a9")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    lease = queue.next_assignment(project=project, user=alice)
    Item.objects.filter(id=lease.item_id).update(status="dropped")  # the lease stays live
    response = _submit(client_for(alice), lease, PW)
    assert response.status_code == 422 and "withdrew" in response.content.decode()
    following = queue.next_assignment(project=project, user=alice)
    assert following is not None and following.item_id != lease.item_id


def test_the_next_item_brings_the_guidelines_anew_when_they_changed_since_the_page_opened(
    make_project, make_user, curator
) -> None:
    project = make_project("gl", curator=curator, guidelines="Old rules.")
    import_items(project=project, fileobj=jsonl([pair_row(1), pair_row(2), pair_row(3)]))
    alice = make_user("a10")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    c = client_for(alice)
    page = c.get(reverse("annotation:annotate", args=[project.slug])).content.decode()
    assert 'data-version="1"' in page and "Old rules." in page
    lease = Assignment.objects.get(annotator=alice)
    same = c.post(
        reverse("annotation:submit", args=[lease.uuid]),
        {"payload": json.dumps(PW)},
        HTTP_HX_REQUEST="true",
        HTTP_X_GUIDELINES_VERSION="1",
    )
    assert "hx-swap-oob" not in same.content.decode()
    project_set_guidelines(project=project, text="New rules.", by=curator)
    lease = Assignment.objects.get(annotator=alice, state="leased")
    changed = c.post(
        reverse("annotation:submit", args=[lease.uuid]),
        {"payload": json.dumps(PW)},
        HTTP_HX_REQUEST="true",
        HTTP_X_GUIDELINES_VERSION="1",
    ).content.decode()
    assert 'id="guidelines"' in changed and 'hx-swap-oob="true"' in changed and "New rules." in changed
    following = Assignment.objects.get(annotator=alice, state="leased")
    assert following.guidelines_version == 2


def test_the_admin_refuses_an_overlap_out_of_range_and_a_project_it_adds_has_version_one(staff, make_project) -> None:
    project = make_project("rng")
    bad = _admin_post(staff, project, overlap="60")
    assert bad.status_code == 200 and "1 to 50" in str(bad.context["adminform"].form.errors)
    c = client_for(staff)
    added = c.post(
        reverse("admin:annotation_project_add"),
        {
            "slug": "added",
            "name": "Added",
            "schema": '{"pairwise": {}}',
            "guidelines": "Be careful.",
            "overlap": "1",
            "human_budget": "1",
            "calibration_share": "0.1",
            "gold_rate": "0",
            "lease_seconds": "900",
            "routing_policy": "all_human",
            "autotrain_after": "0",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert added.status_code == 302, added.context["adminform"].form.errors if added.context else ""
    made = Project.objects.get(slug="added")
    assert made.schema_versions.get(version=1).schema == made.schema
    assert made.guidelines_versions.get(version=1).text == "Be careful."
