"""Reads on behalf of a user. Every lookup of a project or job for a user goes through here,
and anything the user may not see answers 404 (never 403, so ids leak nothing)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Q, QuerySet
from django.http import Http404

from annotation.models import Assignment, ImportJob, Item, Judgment, Labeler, Membership, Project

User = AbstractBaseUser | AnonymousUser


def projects_for_user(user: User) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def project_for_user(user: User, slug: str, *, curator: bool = False) -> Project:
    """The project if `user` belongs to it (as curator when `curator`), else 404."""
    qs = projects_for_user(user)
    if curator and not user.is_superuser:
        qs = qs.filter(memberships__user=user, memberships__role=Membership.Role.CURATOR)
    project = qs.filter(slug=slug).first()
    if project is None:
        raise Http404("No such project.")
    return project


def role_in(user: User, project: Project) -> str | None:
    if user.is_superuser:
        return Membership.Role.CURATOR
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def can_create_projects(user: User) -> bool:
    return user.is_authenticated and (user.is_superuser or user.has_perm("annotation.add_project"))


def project_list_for_user(user: User) -> QuerySet[Project]:
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
    human_kinds = list(Labeler.HUMAN_KINDS)
    counts = judgments.aggregate(
        total=Count("id"),
        human=Count("id", filter=Q(labeler__kind__in=human_kinds)),
        ai=Count("id", filter=~Q(labeler__kind__in=human_kinds)),
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


def import_job_for_user(user: User, job_uuid: object) -> ImportJob:
    job = ImportJob.objects.select_related("project").filter(uuid=job_uuid, project__in=projects_for_user(user)).first()
    if job is None:
        raise Http404("No such import.")
    project_for_user(user, job.project.slug, curator=True)
    return job


def assignment_for_user(user: User, assignment_uuid: object) -> Assignment:
    """The annotator's own assignment, else 404 (another annotator's uuid leaks nothing)."""
    assignment = (
        Assignment.objects.select_related("item__project")
        .filter(uuid=assignment_uuid, annotator=user, item__project__memberships__user=user)
        .first()
    )
    if assignment is None:
        raise Http404("No such assignment.")
    return assignment


def annotator_progress(user: User, project: Project) -> dict[str, object]:
    """Progress bar and session stats for the annotate page: one query over the annotator's
    assignments finished today, plus the project's totals, which are cached for a few seconds
    because counting a large project is not free."""
    from django.core.cache import cache
    from django.db.models import Avg
    from django.utils import timezone

    key = f"project-progress:{project.pk}"
    totals = cache.get(key)
    if totals is None:
        items = Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED)
        totals = items.aggregate(total=Count("id"), done=Count("id", filter=Q(status=Item.Status.DONE)))
        cache.set(key, totals, timeout=5)
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    submitted, skipped = Q(state=Assignment.State.SUBMITTED), Q(state=Assignment.State.SKIPPED)
    mine_qs = Assignment.objects.filter(annotator=user, item__project=project)
    # Judgments before today do not change during the day: counted once a day per process, so
    # each request reads only today's rows (index annotator, finished_at), not the whole history.
    before_key = f"progress-before:{project.pk}:{user.pk}:{today.date().isoformat()}"
    before = cache.get(before_key)
    if before is None:
        before = mine_qs.filter(submitted, finished_at__lt=today).count()
        cache.set(before_key, before, timeout=24 * 3600)
    mine = mine_qs.filter(finished_at__gte=today).aggregate(
        today=Count("id", filter=submitted),
        avg_ms=Avg("judgment__time_spent_ms", filter=submitted),
        skipped=Count("id", filter=skipped),
    )
    mine["n"] = before + mine["today"]
    total = totals["total"] or 0
    return {
        "total": total,
        "done": totals["done"],
        "percent": round(100 * totals["done"] / total) if total else 100,
        "mine": mine["n"],
        "today": mine["today"],
        "avg_seconds": round((mine["avg_ms"] or 0) / 1000, 1),
        "skipped_today": mine["skipped"],
    }


def home_projects_for_user(user: User) -> list[Project]:
    """Projects with the project's progress and the user's own judgment count, in two queries."""
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
    for p in projects:
        p.my_count = mine.get(p.id, 0)
        p.my_role = roles.get(p.id, "curator" if user.is_superuser else None)
        p.percent = round(100 * p.done_count / p.item_count) if p.item_count else 0
    return projects
