"""The audit log: each admin and curation action leaves one event (who, what, which object, from
where) in the same transaction as the action; curators read their project's log, filtered and
paginated; the Django admin shows every event, read-only."""

from __future__ import annotations

import io

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import reverse

from accounts.models import ApiToken
from annotation import audit
from annotation.importing import import_items
from annotation.models import AuditEvent, Item, Project
from curation import services as curation_services
from curation.models import ExportSnapshot
from models_srv import services as rm_services
from models_srv.models import RewardModelVersion
from tests.conftest import jsonl, pair_row


def client_for(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def events(**filters) -> list[tuple[str, str]]:
    return list(AuditEvent.objects.filter(**filters).order_by("id").values_list("action", "actor_name"))


def test_project_creation_and_imports_are_recorded(curator, make_project, django_capture_on_commit_callbacks) -> None:
    project = make_project("audited", curator=curator)
    assert events(project=project) == [("project.create", "carol")]
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "items.jsonl"
    client_for(curator).post(reverse("annotation:import_upload", args=[project.slug]), {"file": upload})
    event = AuditEvent.objects.get(action="import.start")
    assert (event.actor_name, event.project, event.target_repr) == ("carol", project, "items.jsonl")
    assert event.details["source"] == "upload"


def test_curation_actions_and_their_undo_are_recorded_in_the_same_transaction(project: Project, curator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    item = Item.objects.get()
    action = curation_services.curation_action_apply(item=item, actor=curator, action="drop", reason="off-topic")
    curation_services.curation_action_undo(action=action, actor=curator)
    assert events(project=project, action__startswith="curation.") == [
        ("curation.apply", "carol"),
        ("curation.undo", "carol"),
    ]
    applied = AuditEvent.objects.get(action="curation.apply")
    assert applied.details == {"action": "drop", "action_id": action.id, "reason": "off-topic"}
    assert applied.target_type == "annotation.item" and applied.target_id == str(item.id)
    item.is_gold, item.gold_answer = True, {"pairwise": {"choice": "A", "strength": 1}}
    item.save()
    with pytest.raises(curation_services.CurationError):
        curation_services.curation_action_apply(item=item, actor=curator, action="requeue")
    assert AuditEvent.objects.filter(action="curation.apply").count() == 1  # the refused one left none


def test_exports_reward_models_and_routing_settings_are_recorded(project: Project, curator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(i, label="A") for i in range(4)]))
    snapshot = curation_services.export_create(project=project, user=curator, filters={}, formats="raw", enqueue=False)
    curation_services.export_reproduce(snapshot=snapshot, user=curator, enqueue=False)
    exports = AuditEvent.objects.filter(action="export.create").order_by("id")
    assert [e.target_id for e in exports] == [str(s.pk) for s in ExportSnapshot.objects.order_by("id")]
    assert exports[1].details["reproduces"] == str(snapshot.code)

    version = rm_services.training_start(project=project, config={}, created_by=curator, enqueue=False)
    RewardModelVersion.objects.filter(pk=version.pk).update(status="succeeded")
    version.refresh_from_db()
    c = client_for(curator)
    c.post(reverse("models_srv:current", args=[version.uuid]))
    assert events(project=project, action__startswith="reward_model.") == [
        ("reward_model.train", "carol"),
        ("reward_model.make_current", "carol"),
    ]
    c.post(
        reverse("models_srv:routing_run", args=[project.slug]),
        {"routing_policy": "all_ai", "budget_percent": "40", "calibration_percent": "5"},
    )
    settings_event = AuditEvent.objects.get(action="project.settings")
    assert settings_event.details["routing_policy"] == ["all_human", "all_ai"]
    assert settings_event.details["human_budget"] == [1.0, 0.4]


def test_api_tokens_created_revoked_and_deleted_are_recorded(curator) -> None:
    from annotation.services import token_create, token_delete, token_revoke

    token, _ = token_create(user=curator, name="nightly", scopes=["read"])
    token_revoke(token=token)
    token_revoke(token=token)  # revoked already: no second event
    token_delete(token=token)
    assert not ApiToken.objects.exists()
    assert events(action__startswith="token.") == [
        ("token.create", "carol"),
        ("token.revoke", "carol"),
        ("token.delete", ""),
    ]


def test_admin_changes_are_mirrored_from_the_admin_log(project: Project, make_user) -> None:
    admin = make_user("root", superuser=True)
    admin.is_staff = True
    admin.save()
    c = client_for(admin)
    url = reverse("admin:annotation_project_change", args=[project.pk])
    form = c.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "schema"}
    data.update(
        {
            "schema": '{"pairwise": {}}',
            "name": "Renamed",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        }
    )
    data.pop("created_by", None)
    response = c.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert LogEntry.objects.filter(action_flag=CHANGE).count() == 1
    event = AuditEvent.objects.get(action="admin.change")
    assert (event.actor_name, event.project, event.target_type) == ("root", project, "annotation.project")
    assert "name" in event.details["message"].lower()


def test_an_admin_log_entry_for_an_object_with_a_project_finds_the_project(project: Project, curator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    item = Item.objects.get()
    LogEntry.objects.create(
        user=curator,
        content_type=ContentType.objects.get_for_model(Item),
        object_id=str(item.pk),
        object_repr=str(item),
        action_flag=CHANGE,
        change_message="edited",
    )
    event = AuditEvent.objects.get(action="admin.change")
    assert event.project == project and event.target_id == str(item.pk)


def test_logins_and_failed_logins_are_recorded(project: Project, annotator) -> None:
    from django.core.cache import cache

    cache.clear()
    c = Client()
    c.post(reverse("login"), {"username": "alice", "password": "wrong"})
    c.post(reverse("login"), {"username": "alice", "password": "alice-pw-123"})
    failed = AuditEvent.objects.get(action="auth.login_failed")
    assert failed.details == {"username": "alice"} and failed.actor is None and failed.ip == "127.0.0.1"
    assert AuditEvent.objects.filter(action="auth.login", actor=annotator).exists()
    cache.clear()


def test_curators_read_their_projects_log_filtered_and_paginated(
    project: Project, curator, annotator, outsider
) -> None:
    for i in range(audit_page_size() + 5):
        audit.record(curator, "curation.apply", project=project, target=("annotation.item", i, f"item {i}"))
    audit.record(curator, "export.create", project=project, target=("curation.exportsnapshot", 1, "<b>export</b>"))
    c = client_for(curator)
    url = reverse("annotation:audit", args=[project.slug])
    first = c.get(url).content.decode()
    assert first.count('data-action="') == audit_page_size()
    assert "&lt;b&gt;export&lt;/b&gt;" in first and "<b>export</b>" not in first
    assert "page 1 of 2" in first
    filtered = c.get(url, {"action": "export.create"}).content.decode()
    assert filtered.count('data-action="export.create"') == 1 and 'data-action="curation.apply"' not in filtered
    second = c.get(url, {"action": "curation.apply", "page": 2}).content.decode()
    assert second.count('data-action="curation.apply"') == 5
    for user in (annotator, outsider):
        assert client_for(user).get(url).status_code == 404


def audit_page_size() -> int:
    from annotation.members import AUDIT_PAGE_SIZE

    return AUDIT_PAGE_SIZE


def test_the_admin_lists_every_event_read_only(project: Project, make_user) -> None:
    admin = make_user("root", superuser=True)
    admin.is_staff = True
    admin.save()
    event = audit.record(admin, "project.settings", project=project, target=project)
    c = client_for(admin)
    assert c.get(reverse("admin:annotation_auditevent_changelist")).status_code == 200
    assert c.get(reverse("admin:annotation_auditevent_change", args=[event.pk])).status_code == 200  # a view page
    assert c.get(reverse("admin:annotation_auditevent_add")).status_code == 403
    assert c.post(reverse("admin:annotation_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()
