from __future__ import annotations

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import selectors, services
from annotation.forms import ImportForm, ProjectCreateForm
from annotation.models import ImportJob


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "annotation/home.html",
        {
            "projects": selectors.project_list_for_user(request.user),
            "can_create": selectors.can_create_projects(request.user),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request: HttpRequest) -> HttpResponse:
    if not selectors.can_create_projects(request.user):
        raise PermissionDenied
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(spec=form.cleaned_data["spec"], created_by=request.user)
        except services.SpecError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("annotation:project", slug=project.slug)
    return render(request, "annotation/project_form.html", {"form": form})


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug)
    role = selectors.role_in(request.user, project)
    context = {
        "project": project,
        "role": role,
        "is_curator": role == "curator",
        "stats": selectors.project_stats(project),
        "schema": project.judgment_schema,
        "import_form": ImportForm(),
        "jobs": selectors.import_jobs_for_project(project) if role == "curator" else [],
    }
    return render(request, "annotation/project_detail.html", context)


@login_required
@require_GET
def import_jobs(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    jobs = selectors.import_jobs_for_project(project)
    return render(request, "annotation/project_detail.html#import-jobs", {"project": project, "jobs": jobs})


@login_required
@require_POST
def import_upload(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    form = ImportForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["file"]
        services.import_job_create(
            project=project,
            upload=upload,
            name=upload.name,
            source=ImportJob.Source.UPLOAD,
            created_by=request.user,
            fmt=form.cleaned_data["format"],
        )
        form = ImportForm()
    context = {
        "project": project,
        "import_form": form,
        "jobs": selectors.import_jobs_for_project(project),
    }
    if request.htmx:
        return render(request, "annotation/project_detail.html#import-panel", context)
    if form.errors:
        return render(request, "annotation/project_detail.html#import-panel", context, status=400)
    return redirect("annotation:project", slug=project.slug)


@login_required
@require_GET
def import_job_detail(request: HttpRequest, job_uuid: UUID) -> HttpResponse:
    job = selectors.import_job_for_user(request.user, job_uuid)
    return render(request, "annotation/import_job.html", {"job": job, "project": job.project})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
