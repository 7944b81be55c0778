from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import wraps
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import json_script
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import item_html, queue, selectors, services
from annotation.forms import ImportForm, ProjectCreateForm, ProjectSettingsForm
from annotation.models import ImportJob, Item, Project
from annotation.schema import JudgmentSchema, PayloadError
from annotation.schema_builder import JUSTIFICATIONS, KINDS, MAX_STRENGTHS, SchemaInput, schema_from_post
from config.http import AuthenticatedHttpRequest


def _is_htmx(request: HttpRequest) -> bool:
    """`request.htmx`, read straight from the request's environ: django-htmx builds the request's
    whole header map to answer it."""
    return request.META.get("HTTP_HX_REQUEST") == "true"


SESSION_ENDED = (
    "Your session has ended. Log in again in another tab ({login}), then come back and press Enter: "
    "the answer on this page is kept."
)


def _login_required_keeping_answer(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """`login_required`, but an htmx request from a browser whose session ended (it expired, or it
    logged out in another tab) gets a 401 with a message. A redirect to the login page would be
    followed by htmx and swapped into the item area, and the answer on the page would be lost."""
    checked = login_required(view)

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        if _is_htmx(request) and not request.user.is_authenticated:
            message = SESSION_ENDED.format(login=reverse("login"))
            return HttpResponse(message, status=401, content_type="text/plain")
        return checked(request, *args, **kwargs)

    return wrapped


@login_required
@require_GET
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(
        request,
        "annotation/home.html",
        {
            "projects": selectors.home_projects_for_user(request.user),
            "can_create": selectors.can_create_projects(request.user),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def project_create(request: AuthenticatedHttpRequest) -> HttpResponse:
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
    context = {"form": form, **_schema_editor(form.schema_input, reverse("annotation:project_create_schema"))}
    return render(request, "annotation/project_form.html", context)


@login_required
@require_POST
def project_create_schema(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The New-project page's schema builder, YAML and preview, brought in line after an edit."""
    if not selectors.can_create_projects(request.user):
        raise PermissionDenied
    return _schema_editor_update(request, reverse("annotation:project_create_schema"))


@login_required
@require_http_methods(["GET", "POST"])
def project_settings(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Schema and guidelines of a project, edited by its curators: each change a new version."""
    project = selectors.project_for_user(request.user, slug, curator=True)
    form = ProjectSettingsForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        updated = services.project_edit_texts(
            project=project,
            schema=form.cleaned_data["judgment_schema"],
            guidelines=form.cleaned_data["guidelines"],
            by=request.user,
            request=request,
        )
        if (updated.schema_version, updated.guidelines_version) == (project.schema_version, project.guidelines_version):
            messages.info(request, "Nothing changed: the schema and the guidelines are as they were.")
        else:
            messages.success(
                request,
                f"Saved: schema v{updated.schema_version}, guidelines v{updated.guidelines_version}. "
                "Judgments already made keep the versions they were made under.",
            )
        return redirect("annotation:project_settings", slug=project.slug)
    builder_url = reverse("annotation:project_settings_schema", args=[project.slug])
    context = {"project": project, "form": form, **_schema_editor(form.schema_input, builder_url)}
    return render(request, "annotation/project_settings.html", context, status=400 if form.errors else 200)


@login_required
@require_POST
def project_settings_schema(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    return _schema_editor_update(request, reverse("annotation:project_settings_schema", args=[project.slug]))


# The sample item of the builder's preview: the same templates as the annotate page render it.
_SAMPLE_PROMPT = "How long should I boil an egg for a runny yolk?"
_SAMPLE_RESPONSES = [
    "About six minutes in boiling water, then straight into cold water so it stops cooking.",
    "Twenty minutes: the longer an egg boils, the softer the yolk becomes.",
    "Six to seven minutes, depending on the size of the egg.",
    "It depends on the altitude; start with six minutes and adjust.",
]


def _schema_preview(schema: JudgmentSchema) -> str:
    """The item area of the annotate page for a sample item under `schema`, rendered by the
    annotate page's own templates (`item.jinja` and `annotate.html#controls`)."""
    n = schema.ranking.k if schema.ranking else 2
    texts = [_SAMPLE_RESPONSES[i] if i < len(_SAMPLE_RESPONSES) else f"Sample response {i + 1}." for i in range(n)]
    shown = [{"position": i, "label": chr(ord("A") + i), "text": t, "model": ""} for i, t in enumerate(texts)]
    item = Item(prompt=_SAMPLE_PROMPT, responses=[{"text": t} for t in texts], num_responses=n)
    item_data = {"assignment": "", "count": n, "texts": texts if schema.spans else [], "schema": {}, "leased_at": ""}
    controls = render_to_string("annotation/annotate.html#controls", {"schema": schema, "shown": shown})
    context = {
        "project": Project(overlap=1),
        "schema": schema,
        "assignment": True,
        "progress": {
            "percent": 0,
            "collected": 0,
            "wanted": 1,
            "done": 0,
            "total": 1,
            "mine": 0,
            "today": 0,
            "avg_seconds": 0,
            "skipped_today": 0,
        },
        "item": item,
        "shown": shown,
        "submit_url": "",
        "skip_url": "",
        "controls": mark_safe(controls),  # noqa: S308 - rendered by our template with autoescape
        "item_json": json_script(item_data, "item-data"),
        "lease_until": "--:--",
        "lease_until_iso": "",
    }
    return item_html.render(context)


def _schema_editor(schema_input: SchemaInput, builder_url: str) -> dict[str, object]:
    """The context of `_schema_editor.html`: the builder, the YAML, the preview and the error."""
    return {
        "si": schema_input,
        "builder_url": builder_url,
        "kinds": KINDS,
        "justifications": JUSTIFICATIONS,
        "max_strengths": MAX_STRENGTHS,
        "preview": _schema_preview(schema_input.schema) if schema_input.schema else "",
    }


def _schema_editor_update(request: HttpRequest, builder_url: str) -> HttpResponse:
    """After an edit of the builder or of the YAML: the parts to bring in line, swapped out of band
    (the YAML is rewritten after a builder edit; the builder after a YAML edit that parses or a
    button; the preview and the error line each time). A part being typed in is never replaced."""
    action = request.POST.get("action", "")
    from_builder = request.POST.get("schema_from") == "builder"
    schema_input = schema_from_post(request.POST, action=action)
    context = {
        **_schema_editor(schema_input, builder_url),
        "oob": True,
        "with_builder": bool(action) or (not from_builder and schema_input.schema is not None),
        "with_yaml": from_builder,
    }
    response = render(request, "annotation/_schema_editor.html#update", context)
    response["HX-Reswap"] = "none"
    return response


@login_required
@require_GET
def project_detail(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
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
def import_jobs(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    jobs = selectors.import_jobs_for_project(project)
    return render(request, "annotation/project_detail.html#import-jobs", {"project": project, "jobs": jobs})


@login_required
@require_POST
def import_upload(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
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
    if _is_htmx(request):
        return render(request, "annotation/project_detail.html#import-panel", context)
    if form.errors:
        return render(request, "annotation/project_detail.html#import-panel", context, status=400)
    return redirect("annotation:project", slug=project.slug)


@login_required
@require_GET
def import_job_detail(request: AuthenticatedHttpRequest, job_uuid: UUID) -> HttpResponse:
    job = selectors.import_job_for_user(request.user, job_uuid)
    return render(request, "annotation/import_job.html", {"job": job, "project": job.project})


# ---------------------------------------------------------------------------------------------
# Annotating: one page; the item area is an htmx partial that every action replaces.


@_login_required_keeping_answer
@require_GET
def annotate(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug)
    handout = queue.hand_out(project=project, user=request.user)
    progress = selectors.annotator_progress(request.user, project, handout.stats)
    if _is_htmx(request):
        return item_html.response(request, project, handout.assignment, progress)
    context = item_html.context(project, handout.assignment, progress)
    context["item_html"] = item_html.render(context)
    response = render(request, "annotation/annotate.html", context)
    # Not kept by the browser: Back after a few items must ask again (the page then shows the
    # current item), not show one already answered, whose second answer would be set aside.
    add_never_cache_headers(response)
    return response


@_login_required_keeping_answer
@require_POST
def assignment_submit(request: AuthenticatedHttpRequest, assignment_uuid: UUID) -> HttpResponse:
    """One submit, top to bottom (the path is drawn in `annotation/queue/__init__.py`): store the
    judgment, hand out the next lease, and answer with the item area for it."""
    try:
        payload = json.loads(request.POST.get("payload", ""))
        time_ms = int(request.POST["time_ms"]) if re.fullmatch(r"[0-9]{1,9}", request.POST.get("time_ms", "")) else None
        # Two commits, the judgment's and the next lease's: on PostgreSQL each is one statement
        # with no explicit transaction around it (no BEGIN and COMMIT round trips). A failure
        # between them loses nothing: the judgment is stored, and a retried submit of the same
        # assignment returns it and then hands out the next item. Two copies of one submit in
        # flight at once (the button is disabled while one is, so a script or two tabs) store one
        # judgment, but their two hand-outs may lease two items; the annotator is then served
        # both in turn (a hand-out returns the oldest live lease first), with counts exact.
        submitted = queue.submit(
            assignment_uuid=assignment_uuid, user=request.user, payload=payload, time_spent_ms=time_ms
        )
        project = submitted.judgment.item.project
        if not _is_htmx(request):
            return redirect("annotation:annotate", slug=project.slug)
        following = queue.hand_out(project=project, user=request.user).assignment
    except queue.NoSuchAssignmentError:
        raise Http404("No such assignment.") from None
    except json.JSONDecodeError:
        selectors.assignment_for_user(request.user, assignment_uuid)  # someone else's: 404, not 400
        return HttpResponseBadRequest(
            "The answer did not arrive as JSON; please submit again.", content_type="text/plain"
        )
    except (PayloadError, queue.QueueError) as exc:
        return HttpResponse(str(exc), status=422, content_type="text/plain")
    progress = selectors.annotator_progress(request.user, project, submitted.stats)
    return item_html.response(request, project, following, progress)


@_login_required_keeping_answer
@require_POST
def assignment_skip(request: AuthenticatedHttpRequest, assignment_uuid: UUID) -> HttpResponse:
    assignment = selectors.assignment_for_user(request.user, assignment_uuid)
    flag = request.POST.get("flag") == "1"
    try:
        queue.skip(assignment_id=assignment.id, user=request.user, reason=request.POST.get("reason", ""), flag=flag)
    except queue.QueueError as exc:
        return HttpResponse(str(exc), status=422, content_type="text/plain")
    project = assignment.item.project
    if not _is_htmx(request):
        return redirect("annotation:annotate", slug=project.slug)
    handout = queue.hand_out(project=project, user=request.user)
    progress = selectors.annotator_progress(request.user, project, handout.stats)
    return item_html.response(request, project, handout.assignment, progress)
