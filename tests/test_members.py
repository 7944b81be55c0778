"""The members page: curators (and site admins) add members by username, change roles and remove
members; the last curator stays; everyone else gets 404; every change is in the audit log."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import AuditEvent, Membership, Project


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _membership(project: Project, user) -> Membership:
    return Membership.objects.get(project=project, user=user)


def test_curator_sees_members_with_their_roles(project: Project, curator, annotator) -> None:
    response = client_for(curator).get(reverse("annotation:members", args=[project.slug]))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-member="carol"' in body and 'data-member="alice"' in body
    assert body.count('<option value="curator" selected>') == 1
    assert (
        reverse("annotation:members", args=[project.slug])
        in client_for(curator).get(reverse("annotation:project", args=[project.slug])).content.decode()
    )


@pytest.mark.parametrize("who", ["annotator", "outsider", "anonymous"])
def test_only_curators_and_site_admins_reach_the_members_page(project: Project, request, who: str) -> None:
    c = Client() if who == "anonymous" else client_for(request.getfixturevalue(who))
    url = reverse("annotation:members", args=[project.slug])
    response = c.get(url)
    if who == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    else:
        assert response.status_code == 404
    post = c.post(reverse("annotation:member_add", args=[project.slug]), {"username": "oscar", "role": "curator"})
    assert post.status_code in (302, 404) and not Membership.objects.filter(user__username="oscar").exists()


def test_a_site_admin_manages_members_of_any_project(project: Project, make_user) -> None:
    admin = make_user("root", superuser=True)
    make_user("dave")
    c = client_for(admin)
    assert c.get(reverse("annotation:members", args=[project.slug])).status_code == 200
    c.post(reverse("annotation:member_add", args=[project.slug]), {"username": "dave", "role": "annotator"})
    assert Membership.objects.filter(project=project, user__username="dave", role="annotator").exists()


def test_add_change_and_remove_through_htmx(project: Project, curator, make_user) -> None:
    dave = make_user("dave")
    c = client_for(curator)
    hx = {"HTTP_HX_REQUEST": "true"}
    added = c.post(
        reverse("annotation:member_add", args=[project.slug]), {"username": "dave", "role": "annotator"}, **hx
    )
    assert added.status_code == 200
    assert "<html" not in added.content.decode() and 'data-member="dave"' in added.content.decode()
    m = _membership(project, dave)
    changed = c.post(reverse("annotation:member_role", args=[project.slug, m.id]), {"role": "curator"}, **hx)
    assert changed.status_code == 200
    assert _membership(project, dave).role == "curator"
    removed = c.post(reverse("annotation:member_remove", args=[project.slug, m.id]), **hx)
    assert removed.status_code == 200 and 'data-member="dave"' not in removed.content.decode()
    assert not Membership.objects.filter(project=project, user=dave).exists()
    actions = list(AuditEvent.objects.filter(project=project).order_by("id").values_list("action", "actor_name"))
    assert actions[-3:] == [
        ("membership.add", "carol"),
        ("membership.change", "carol"),
        ("membership.remove", "carol"),
    ]
    change = AuditEvent.objects.get(action="membership.change")
    assert change.details == {"user": "dave", "from": "annotator", "to": "curator"}
    assert change.ip == "127.0.0.1"


def test_without_htmx_a_change_redirects_back_to_the_page(project: Project, curator, make_user) -> None:
    make_user("dave")
    response = client_for(curator).post(
        reverse("annotation:member_add", args=[project.slug]), {"username": "dave", "role": "annotator"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("annotation:members", args=[project.slug])


def test_clear_errors_for_unknown_users_members_and_bad_roles(project: Project, curator, annotator) -> None:
    c = client_for(curator)
    url = reverse("annotation:member_add", args=[project.slug])
    unknown = c.post(url, {"username": "nobody", "role": "annotator"})
    assert unknown.status_code == 400
    assert "There is no user named &#x27;nobody&#x27;" in unknown.content.decode()
    again = c.post(url, {"username": "alice", "role": "curator"}, HTTP_HX_REQUEST="true")
    assert again.status_code == 200  # htmx swaps only 2xx: the panel shows the error
    assert "alice is already a member (annotator)" in again.content.decode()
    bad_role = c.post(url, {"username": "alice", "role": "owner"})
    assert bad_role.status_code == 400 and "Select a valid choice" in bad_role.content.decode()
    assert _membership(project, annotator).role == "annotator"


def test_the_last_curator_can_be_neither_removed_nor_demoted(project: Project, curator) -> None:
    c = client_for(curator)
    mine = _membership(project, curator)
    removed = c.post(reverse("annotation:member_remove", args=[project.slug, mine.id]))
    assert removed.status_code == 409 and "last curator" in removed.content.decode()
    demoted = c.post(reverse("annotation:member_role", args=[project.slug, mine.id]), {"role": "annotator"})
    assert demoted.status_code == 409 and "last curator" in demoted.content.decode()
    assert _membership(project, curator).role == "curator"
    assert not AuditEvent.objects.filter(action__startswith="membership.").exists()


def test_a_curator_who_steps_down_is_sent_to_the_project_page(project: Project, curator, annotator) -> None:
    c = client_for(curator)
    other = _membership(project, annotator)
    c.post(reverse("annotation:member_role", args=[project.slug, other.id]), {"role": "curator"})
    mine = _membership(project, curator)
    response = c.post(
        reverse("annotation:member_role", args=[project.slug, mine.id]), {"role": "annotator"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 204
    assert response["HX-Redirect"] == reverse("annotation:project", args=[project.slug])
    assert c.get(reverse("annotation:members", args=[project.slug])).status_code == 404


def test_another_projects_membership_ids_answer_404(project: Project, make_project, outsider) -> None:
    theirs = make_project("theirs", curator=outsider)
    c = client_for(outsider)  # curator of "theirs", using its own slug with p1's membership ids
    for m in Membership.objects.filter(project=project):
        for name, data in (("member_role", {"role": "annotator"}), ("member_remove", {})):
            assert c.post(reverse(f"annotation:{name}", args=[theirs.slug, m.id]), data).status_code == 404
    assert Membership.objects.filter(project=project).count() == 2


def test_removing_an_annotator_returns_their_leased_items_to_the_queue_at_once(
    make_project, curator, annotator, make_user
) -> None:
    """A removed annotator's live leases end with the membership (not when they run out, 15
    minutes later by default): the item goes to the next annotator, and the removed one's page
    can no longer submit it. Their leases in other projects stay."""
    from annotation import queue
    from annotation.importing import import_items
    from annotation.models import Assignment, Item
    from annotation.services import membership_set
    from tests.conftest import jsonl, pair_row

    project = make_project("p1", curator=curator, overlap=1)
    other = make_project("p2", curator=curator)
    bob = make_user("bob")
    for p in (project, other):
        import_items(project=p, fileobj=jsonl([pair_row(1)]))
        membership_set(project=p, user=annotator, role=Membership.Role.ANNOTATOR)
        membership_set(project=p, user=bob, role=Membership.Role.ANNOTATOR)
    held = queue.next_assignment(project=project, user=annotator)
    kept = queue.next_assignment(project=other, user=annotator)
    assert queue.next_assignment(project=project, user=bob) is None  # overlap 1: the item is held

    removed = client_for(curator).post(
        reverse("annotation:member_remove", args=[project.slug, _membership(project, annotator).id])
    )
    assert removed.status_code == 302

    held.refresh_from_db()
    assert held.state == Assignment.State.EXPIRED and held.finished_at is not None
    assert Item.objects.get(id=held.item_id).leased_count == 0
    kept.refresh_from_db()
    assert kept.state == Assignment.State.LEASED
    assert AuditEvent.objects.get(action="membership.remove").details == {
        "user": "alice",
        "role": "annotator",
        "leases_released": 1,
    }
    handed = queue.next_assignment(project=project, user=bob)
    assert handed is not None and handed.item_id == held.item_id
    submit = client_for(annotator).post(
        reverse("annotation:submit", args=[held.uuid]),
        {"payload": '{"pairwise": {"choice": "A", "strength": 1}}', "time_ms": "1000"},
    )
    assert submit.status_code == 404
    assert not held.item.judgments.exists()


def test_a_membership_deleted_elsewhere_gives_back_its_leases_too(make_project, curator, annotator) -> None:
    """The admin's delete (or an account's) does not go through the members page: the items the
    member held go back to the queue all the same."""
    from annotation import queue
    from annotation.importing import import_items
    from annotation.models import Assignment
    from annotation.services import membership_set
    from tests.conftest import jsonl, pair_row

    project = make_project("p1", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    held = queue.next_assignment(project=project, user=annotator)
    Membership.objects.filter(project=project, user=annotator).delete()
    assert Assignment.objects.get(id=held.id).state == Assignment.State.EXPIRED
