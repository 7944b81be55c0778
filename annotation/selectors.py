"""Reads on behalf of a user. Every lookup of a project or job for a user goes through here,
and anything the user may not see answers 404 (never 403, so ids leak nothing)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict
from uuid import UUID

from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Sum, When
from django.db.models.functions import Coalesce, Least
from django.http import Http404
from django.utils import timezone

from annotation import overlap
from annotation.models import Assignment, ImportJob, Item, Judgment, LabelSource, Membership, Project, source_q
from annotation.queue.sql import READ_STATS, AnnotatorDay
from annotation.rows import Rows, fetch_one

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

# Whoever asks: a signed-in user, or the anonymous one (who sees nothing).
AnyUser = User | AnonymousUser


def projects_for_user(user: AnyUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def projects_curated_by(user: AnyUser) -> QuerySet[Project]:
    """The projects `user` curates (every project for a superuser): those whose curator pages,
    versions and runs `project_for_user(..., curator=True)` lets them open."""
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user, memberships__role=Membership.Role.CURATOR)


_PROJECT = Rows(Project, "p")
_PROJECT_SQL = f"SELECT {_PROJECT.columns} FROM annotation_project p WHERE p.slug = %s"  # noqa: S608
_MEMBER_SQL = " AND EXISTS (SELECT 1 FROM annotation_membership m WHERE m.project_id = p.id AND m.user_id = %s{role})"


def project_for_user(user: AnyUser, slug: str, *, curator: bool = False) -> Project:
    """The project if `user` belongs to it (as curator when `curator`), else 404. Every project
    page asks this, the annotate page on each item, so it is one statement written once."""
    if not user.is_authenticated:
        raise Http404("No such project.")
    sql = _PROJECT_SQL
    params: list[str | int] = [slug]
    if not user.is_superuser:
        sql += _MEMBER_SQL.format(role=f" AND m.role = '{Membership.Role.CURATOR.value}'" if curator else "")
        params.append(user.pk)
    row = fetch_one(sql, params)
    if row is None:
        raise Http404("No such project.")
    return _PROJECT.load(row)


def role_in(user: User, project: Project) -> str | None:
    if user.is_superuser:
        return Membership.Role.CURATOR
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def can_create_projects(user: AnyUser) -> bool:
    return user.is_authenticated and (user.is_superuser or user.has_perm("annotation.add_project"))


class ProjectCounts(TypedDict):
    item_count: int
    open_count: int


if TYPE_CHECKING:
    ListedProject = WithAnnotations[Project, ProjectCounts]  # a project with its counts


def project_list_for_user(user: AnyUser) -> QuerySet[ListedProject]:
    return (
        projects_for_user(user)
        .annotate(
            item_count=Count("items", distinct=True),
            open_count=Count("items", filter=Q(items__status=Item.Status.OPEN), distinct=True),
        )
        .order_by("name")
    )


def project_stats(project: Project) -> dict[str, object]:
    items = Item.objects.filter(project=project)
    by_status = dict(items.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    by_split = dict(items.values_list("split").annotate(n=Count("id")).values_list("split", "n"))
    judgments = Judgment.objects.filter(item__project=project)
    counts = judgments.aggregate(
        total=Count("id"),
        human=Count("id", filter=source_q(LabelSource.HUMAN)),
        imported=Count("id", filter=source_q(LabelSource.IMPORTED)),
        ai=Count("id", filter=source_q(LabelSource.AI)),
        items_judged=Count("item", distinct=True),
    )
    return {
        "items": sum(by_status.values()),
        "by_status": {s.label: by_status.get(s.value, 0) for s in Item.Status},
        "by_split": {s.label: by_split.get(s.value, 0) for s in Item.Split},
        "judgments": counts,
        "gold": items.filter(is_gold=True).count(),
    }


def import_jobs_for_project(project: Project, limit: int = 10) -> list[ImportJob]:
    return list(ImportJob.objects.filter(project=project).select_related("created_by")[:limit])


def import_job_for_user(user: AnyUser, job_uuid: UUID | str) -> ImportJob:
    job = ImportJob.objects.select_related("project").filter(uuid=job_uuid, project__in=projects_for_user(user)).first()
    if job is None:
        raise Http404("No such import.")
    project_for_user(user, job.project.slug, curator=True)
    return job


def assignment_for_user(user: User, assignment_uuid: UUID | str) -> Assignment:
    """The annotator's own assignment, else 404 (another annotator's uuid leaks nothing)."""
    found = Assignment.objects.select_related("item__project").filter(uuid=assignment_uuid, annotator=user)
    if not user.is_superuser:  # site admins reach every project; others only their projects
        found = found.filter(item__project__memberships__user=user)
    assignment = found.first()
    if assignment is None:
        raise Http404("No such assignment.")
    return assignment


PROJECT_TOTALS_SECONDS = 30


PROJECT_TOTALS_LOCAL_SECONDS = 5
_LOCAL_TOTALS: dict[int, tuple[float, dict[str, int]]] = {}


def project_totals(project: Project) -> dict[str, int]:
    """Items to judge and items done in the project, shared through the cache for half a minute:
    counting a 100,000-item project takes 100+ ms, too much for every hand-out. Each process also
    keeps what it read for a few seconds, so a hand-out does not fetch (and unpickle) it from the
    cache, a round trip to Redis in a deployment, every time."""
    now = time.monotonic()
    local = _LOCAL_TOTALS.get(project.pk)
    if local is not None and local[0] > now:
        return local[1]
    key = f"project-progress:{project.pk}"
    totals = cache.get(key)
    if totals is None:
        items = Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED)
        # Progress counts judgments, not only finished items: with an overlap of 2, one
        # annotator's answers finish no item, and a bar of finished items stayed at 0 for them.
        # This reads every row (about 110 ms for 100,000 items), once per half minute.
        wanted = overlap.wanted_expr(project.overlap)
        totals = items.aggregate(
            total=Count("id"),
            done=Count("id", filter=Q(status=Item.Status.DONE)),
            wanted=Coalesce(Sum(wanted), 0),
            collected=Coalesce(
                Sum(
                    Case(
                        When(status=Item.Status.DONE, then=wanted),
                        default=Least("human_count", wanted, output_field=IntegerField()),
                        output_field=IntegerField(),
                    )
                ),
                0,
            ),
        )
        cache.set(key, totals, timeout=PROJECT_TOTALS_SECONDS)
    if len(_LOCAL_TOTALS) >= 1024:
        _LOCAL_TOTALS.clear()
    _LOCAL_TOTALS[project.pk] = (now + PROJECT_TOTALS_LOCAL_SECONDS, totals)
    return totals


def annotator_stats(project_id: int, user_id: int) -> AnnotatorDay:
    """The annotator's counts in a project, which the queue keeps in one row (`AnnotatorStats`)."""
    row = fetch_one(READ_STATS, [project_id, user_id])
    return AnnotatorDay.from_row(row, timezone.now().date())


def annotator_progress(user: User, project: Project, stats: AnnotatorDay | None = None) -> dict[str, object]:
    """Progress bar and session stats for the annotate page: the project's totals (cached) and the
    annotator's counts (`annotator_stats`); a hand-out or submit passes the counts its statement
    returned as `stats`, so nothing is read again."""
    mine = stats if stats is not None else annotator_stats(project.pk, user.pk)
    totals = project_totals(project)
    total = totals["total"] or 0
    wanted = totals["wanted"] or 0
    return {
        "total": total,
        "done": totals["done"],
        "wanted": wanted,
        "collected": totals["collected"],
        "percent": round(100 * totals["collected"] / wanted) if wanted else 100,
        "mine": mine.judged,
        "today": mine.judged_today,
        "avg_seconds": round(mine.time_today_ms / mine.judged_today / 1000, 1) if mine.judged_today else 0,
        "skipped_today": mine.skipped_today,
    }


@dataclass(frozen=True)
class HomeProject:
    """A row of the home page: the project, its progress, the user's judgments and role."""

    project: Project
    item_count: int
    done_count: int
    percent: int
    my_count: int
    my_role: str | None


def home_projects_for_user(user: User) -> list[HomeProject]:
    """Projects with the project's progress and the user's own judgment count and role, in three
    queries."""
    projects = list(
        project_list_for_user(user).annotate(
            done_count=Count("items", filter=Q(items__status=Item.Status.DONE), distinct=True)
        )
    )
    mine = dict(
        Judgment.objects.filter(labeler__user=user, item__project__in=projects)
        .values_list("item__project")
        .annotate(n=Count("id"))
        .values_list("item__project", "n")
    )
    roles = dict(Membership.objects.filter(user=user, project__in=projects).values_list("project", "role"))
    return [
        HomeProject(
            project=p,
            item_count=p.item_count,
            done_count=p.done_count,
            percent=round(100 * p.done_count / p.item_count) if p.item_count else 0,
            my_count=mine.get(p.id, 0),
            my_role=roles.get(p.id, "curator" if user.is_superuser else None),
        )
        for p in projects
    ]
