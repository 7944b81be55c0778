"""The audit log: one append-only row per admin or curation action (who, what, on which object,
from where). Each action is recorded by one service function, inside the write's own
transaction, so an action that rolls back leaves no event behind; only logins and Django admin
changes are recorded by receivers (`annotation.signals`), where Django offers no other hook.
`tests/test_audit_services.py` holds both rules.

Action names are dotted slugs, listed in ACTIONS (the audit page filters by them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.http import HttpRequest

from annotation.models import AuditEvent, Project

ACTIONS = {
    "auth.login": "Logged in",
    "auth.login_failed": "Failed login",
    "auth.login_locked": "Login locked after too many failures",
    "admin.add": "Added in the admin",
    "admin.change": "Changed in the admin",
    "admin.delete": "Deleted in the admin",
    "project.create": "Created the project",
    "project.settings": "Changed project settings",
    "membership.add": "Added a member",
    "membership.change": "Changed a member's role",
    "membership.remove": "Removed a member",
    "import.start": "Started an import",
    "curation.apply": "Applied a curation action",
    "curation.undo": "Undid a curation action",
    "export.create": "Created an export",
    "reward_model.train": "Started reward-model training",
    "reward_model.make_current": "Made a reward model current",
    "ai_labeler.audit": "Started a judge audit of an AI labeler",
    "crossfit.start": "Started cross-fitting",
    "token.create": "Created an API token",
    "token.revoke": "Revoked an API token",
    "token.delete": "Deleted an API token",
}


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address (see config.security.client_ip for proxies)."""
    if request is None:
        return None
    from config.security import client_ip as ip_of

    return ip_of(request)


def record(
    actor: Any,
    action: str,
    *,
    project: Project | None = None,
    target: models.Model | tuple[str, object, str] | None = None,
    details: Mapping[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AuditEvent:
    """Append one event. `target` is a model instance or (type, id, repr); `actor` a user or None."""
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    target_type, target_id, target_repr = "", "", ""
    if isinstance(target, models.Model):
        target_type, target_id, target_repr = target._meta.label_lower, str(target.pk), str(target)
    elif target is not None:
        target_type, target_id, target_repr = str(target[0]), str(target[1]), str(target[2])
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor is not None else "",
        action=action,
        project=project,
        target_type=target_type[:100],
        target_id=target_id[:64],
        target_repr=target_repr[:200],
        details=json.loads(json.dumps(dict(details or {}), cls=DjangoJSONEncoder)),
        ip=client_ip(request),
    )
