"""Signal receivers, only where Django offers no other hook: logins and failed logins (auth's
signals, which also count for the login throttle), Django admin changes (mirrored from the admin's
own LogEntry), and a deleted membership's leases given back however it was deleted (the members
page, the admin, a deleted account's cascade). Connected in AnnotationConfig.ready().
Every other audit event is recorded explicitly by the service that makes the write
(`annotation.services`, `curation.services`, `models_srv.services`).

A receiver runs inside the transaction of the save that sent it, so a rolled-back write leaves
no event behind.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db.models.signals import post_delete, post_save
from django.http import HttpRequest

from annotation import audit
from annotation.models import Membership, Project

_ADMIN_ACTIONS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    from accounts.login import login_succeeded

    login_succeeded(user.get_username())
    audit.record(user, "auth.login", target=user, request=request)


def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    from accounts.login import login_blocked, login_failed

    username = str(credentials.get("username", ""))[:150]
    if login_blocked(request, username):
        login_failed(request, username)
        return  # attempts during a lockout are refused unread and not logged one by one
    locked = login_failed(request, username)
    audit.record(None, "auth.login_failed", details={"username": username}, request=request)
    if locked:
        audit.record(None, "auth.login_locked", details={"username": username}, request=request)


def on_membership_deleted(sender: Any, instance: Membership, **kwargs: Any) -> None:
    """Whoever leaves a project (the members page, the admin, a deleted account) gives back the
    items they hold: their live leases there end now, not when they run out."""
    from annotation import queue

    queue.release_leases(project_id=instance.project_id, user_id=instance.user_id)


def _admin_project(entry: LogEntry) -> Project | None:
    """The project an admin change concerns: the project itself or the edited object's project."""
    model = entry.content_type.model_class() if entry.content_type_id else None
    if model is None:
        return None
    if model is Project:
        return Project.objects.filter(pk=entry.object_id).first()
    if any(f.name == "project" and f.is_relation for f in model._meta.get_fields()):
        project_id = model._default_manager.filter(pk=entry.object_id).values_list("project", flat=True).first()
        return Project.objects.filter(pk=project_id).first() if project_id else None
    return None


def on_admin_log(sender: Any, instance: LogEntry, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if not created or raw:
        return
    ct = instance.content_type if instance.content_type_id else None
    label = f"{ct.app_label}.{ct.model}" if ct else ""
    try:
        project = _admin_project(instance)
    except (ValueError, TypeError):  # an object id that is not a key of its model
        project = None
    audit.record(
        instance.user,
        _ADMIN_ACTIONS.get(instance.action_flag, "admin.change"),
        project=project,
        target=(label, instance.object_id or "", instance.object_repr),
        details={"message": instance.get_change_message()},
    )


def connect() -> None:
    uid = "annotation.audit."
    user_logged_in.connect(on_login, dispatch_uid=uid + "login")
    user_login_failed.connect(on_login_failed, dispatch_uid=uid + "login_failed")
    post_save.connect(on_admin_log, sender=LogEntry, dispatch_uid=uid + "admin")
    post_delete.connect(on_membership_deleted, sender=Membership, dispatch_uid="annotation.queue.membership_delete")
