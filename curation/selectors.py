"""Reads of the curation app. Lookups on behalf of a user check access here and answer 404
(never 403) for anything the user may not see; access reuses `annotation.selectors`.

An item's effective curation state is its latest action (by creation time) that is not undone;
`at` asks "as of that moment": actions made after it, and undos made after it, do not count.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from annotation.models import Item, Project
from annotation.selectors import User, project_for_user, projects_for_user
from curation.models import CurationAction, ExportSnapshot


def _effective(at: datetime | None) -> Q:
    if at is None:
        return Q(undone_at__isnull=True)
    return Q(created_at__lte=at) & (Q(undone_at__isnull=True) | Q(undone_at__gt=at))


def curation_states(
    *, project: Project | None = None, item_ids: Iterable[int] | None = None, at: datetime | None = None
) -> dict[int, CurationAction]:
    """{item id: its effective action} for the items of `project` and/or `item_ids` that have one."""
    if project is None and item_ids is None:
        raise ValueError("give a project or item ids")
    qs = CurationAction.objects.filter(_effective(at))
    if project is not None:
        qs = qs.filter(project=project)
    if item_ids is not None:
        qs = qs.filter(item_id__in=list(item_ids))
    latest = CurationAction.objects.filter(_effective(at), item=OuterRef("item")).order_by("-created_at", "-id")
    qs = qs.filter(id=Subquery(latest.values("id")[:1])).select_related("actor")
    return {a.item_id: a for a in qs}


def effective_action_kinds(*, item_ids: list[int], at: datetime | None = None) -> dict[int, str]:
    """{item id: action kind} of the effective actions of these items (one cheap query)."""
    rows = (
        CurationAction.objects.filter(_effective(at), item_id__in=item_ids)
        .order_by("item_id", "created_at", "id")
        .values_list("item_id", "action")
    )
    return dict(rows)  # the last (newest) action of each item wins


def item_curation_state(item: Item, at: datetime | None = None) -> CurationAction | None:
    return curation_states(item_ids=[item.id], at=at).get(item.id)


def with_curation_state(items: QuerySet[Item], at: datetime | None = None) -> QuerySet[Item]:
    """Annotate `curation_state` (drop / flip / accept / requeue or None) and `curation_action_id`."""
    latest = CurationAction.objects.filter(_effective(at), item=OuterRef("pk")).order_by("-created_at", "-id")
    return items.annotate(
        curation_state=Subquery(latest.values("action")[:1]),
        curation_action_id=Subquery(latest.values("id")[:1]),
    )


def curation_history(item: Item) -> list[CurationAction]:
    """Every action on the item, newest first, undone ones included."""
    return list(CurationAction.objects.filter(item=item).select_related("actor", "undone_by"))


def curation_action_for_user(user: User, action_id: int) -> CurationAction:
    """A curation action of a project the user curates, else 404."""
    action = (
        CurationAction.objects.select_related("project", "item")
        .filter(id=action_id, project__in=projects_for_user(user))
        .first()
    )
    if action is None:
        raise Http404("No such curation action.")
    project_for_user(user, action.project.slug, curator=True)
    return action


def export_get_for_user(user: User, code: object) -> ExportSnapshot:
    """The export if the user curates its project, else 404 (a malformed code too)."""
    try:
        code = uuid.UUID(str(code))
    except ValueError:
        raise Http404("No such export.") from None
    snapshot = (
        ExportSnapshot.objects.select_related("project", "created_by", "source_snapshot")
        .filter(code=code, project__in=projects_for_user(user))
        .first()
    )
    if snapshot is None:
        raise Http404("No such export.")
    project_for_user(user, snapshot.project.slug, curator=True)
    return snapshot


def exports_for_project(project: Project, limit: int = 20) -> list[ExportSnapshot]:
    return list(ExportSnapshot.objects.filter(project=project).select_related("created_by")[:limit])
