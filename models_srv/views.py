from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation.models import Labeler, Project
from annotation.selectors import project_for_user
from config.http import AuthenticatedHttpRequest
from models_srv import selectors, services
from models_srv.forms import LabelerForm, RoutingForm, TrainForm

if TYPE_CHECKING:
    from models_srv.judge_audit import Standing


def _panel(
    request: AuthenticatedHttpRequest, project: Project, form: TrainForm | None = None, error: str = ""
) -> HttpResponse:
    from models_srv.dashboards import versions_chart

    versions = selectors.versions_of(project)
    context = {
        "project": project,
        "versions": versions,
        "chart": versions_chart(list(versions)),
        "active": any(v.is_active for v in versions),
        "form": form or TrainForm(),
        "error": error,
    }
    template = "models_srv/models.html" + ("#versions" if request.htmx and request.method == "GET" else "")
    return render(request, template, context)


@login_required
@require_GET
def models_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    return _panel(request, project_for_user(request.user, slug, curator=True))


@login_required
@require_POST
def train(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    form = TrainForm(request.POST)
    error = ""
    if form.is_valid():
        try:
            services.training_start(project=project, config=form.config(), created_by=request.user)
        except ValueError as exc:
            error = str(exc)
        else:
            if not request.htmx:
                return redirect("models_srv:models", slug=project.slug)
            return _panel(request, project)  # with a fresh form
    return _panel(request, project, form, error)


def _act(request: AuthenticatedHttpRequest, version_uuid: UUID, action: str) -> HttpResponse:
    version = selectors.version_for_curator(request.user, version_uuid)
    error = ""
    try:
        if action == "cancel":
            services.version_cancel(version=version)
        elif action == "current":
            services.version_make_current(version=version, by=request.user)
        elif action == "rescore":
            services.rescore_request(version=version)
    except ValueError as exc:
        error = str(exc)
    if not request.htmx:
        return redirect("models_srv:models", slug=version.project.slug)
    return _panel(request, version.project, error=error)


@login_required
@require_POST
def cancel(request: AuthenticatedHttpRequest, version_uuid: UUID) -> HttpResponse:
    return _act(request, version_uuid, "cancel")


@login_required
@require_POST
def make_current(request: AuthenticatedHttpRequest, version_uuid: UUID) -> HttpResponse:
    return _act(request, version_uuid, "current")


@login_required
@require_POST
def rescore(request: AuthenticatedHttpRequest, version_uuid: UUID) -> HttpResponse:
    return _act(request, version_uuid, "rescore")


@login_required
@require_GET
def version_detail(request: AuthenticatedHttpRequest, version_uuid: UUID) -> HttpResponse:
    from models_srv.engine import TrainConfig

    version = selectors.version_for_curator(request.user, version_uuid)
    context = {
        "version": version,
        "project": version.project,
        "config_rows": selectors.config_rows(TrainConfig, version.config),
    }
    return render(request, "models_srv/version.html", context)


# ---------------------------------------------------------------------------------------------
# AI labelers


@dataclass(frozen=True)
class LabelerRow:
    """An AI labeler as the AI page lists it: its audit standing and its settings."""

    labeler: Labeler
    standing: Standing
    config_rows: list[dict[str, Any]]


def _ai_panel(
    request: AuthenticatedHttpRequest, project: Project, form: LabelerForm | None = None, error: str = ""
) -> HttpResponse:
    from models_srv.forms import LABELER_EXAMPLES
    from models_srv.judge_audit import standings
    from models_srv.judges import DEFAULT_TEMPLATES

    labelers = selectors.ai_labelers_of(project)
    standing = standings(labelers)
    rows = [LabelerRow(labeler, standing[labeler.id], selectors.labeler_config_rows(labeler)) for labeler in labelers]
    runs = selectors.ai_runs_of(project)
    context = {
        "project": project,
        "labelers": rows,
        "runs": runs,
        "form": form or LabelerForm(user=request.user, project=project),
        "error": error,
        "active": any(r.status in ("queued", "running") for r in runs),
        "examples": LABELER_EXAMPLES,
        "templates": DEFAULT_TEMPLATES,
    }
    template = "models_srv/ai.html" + ("#runs" if request.htmx and request.method == "GET" else "")
    return render(request, template, context)


@login_required
@require_GET
def ai_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    return _ai_panel(request, project_for_user(request.user, slug, curator=True))


@login_required
@require_POST
def labeler_add(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    from models_srv.labeling import LabelerError, labeler_create

    project = project_for_user(request.user, slug, curator=True)
    form = LabelerForm(request.POST, user=request.user, project=project)
    if form.is_valid():
        try:
            labeler_create(
                project=project,
                kind=form.cleaned_data["kind"],
                name=form.cleaned_data["name"],
                config=form.cleaned_data["config"],
                api_key=form.cleaned_data["api_key"],
                by=request.user,
            )
            return redirect("models_srv:ai", slug=project.slug)
        except LabelerError as exc:
            form.add_error("config", str(exc))
    return _ai_panel(request, project, form=form)


@login_required
@require_POST
def labeler_run(request: AuthenticatedHttpRequest, labeler_id: int) -> HttpResponse:
    from models_srv.labeling import LabelerError, run_start

    labeler = selectors.labeler_for_curator(request.user, labeler_id)
    error = ""
    try:
        run_start(project=labeler.own_project, labeler=labeler, created_by=request.user)
    except LabelerError as exc:
        error = str(exc)
    if not request.htmx:
        return redirect("models_srv:ai", slug=labeler.own_project.slug)
    request.method = "GET"  # answer with the runs table
    return _ai_panel(request, labeler.own_project, error=error)


def _labeler_page(request: AuthenticatedHttpRequest, labeler: Labeler, error: str = "") -> HttpResponse:
    from models_srv.judge_audit import audit_gate, standings

    audits = selectors.audits_of(labeler)
    context = {
        "project": labeler.own_project,
        "labeler": labeler,
        "config_rows": selectors.labeler_config_rows(labeler),
        "standing": standings([labeler])[labeler.id],
        "gate": audit_gate(labeler.own_project, required=True),
        "audits": audits,
        "latest": next((a for a in audits if a.status == "succeeded"), None),
        "active": any(a.is_active for a in audits),
        "audit_items": settings.AI_AUDIT_ITEMS,
        "error": error,
    }
    template = "models_srv/labeler.html" + ("#audits" if request.htmx else "")
    return render(request, template, context)


@login_required
@require_GET
def labeler_detail(request: AuthenticatedHttpRequest, labeler_id: int) -> HttpResponse:
    return _labeler_page(request, selectors.labeler_for_curator(request.user, labeler_id))


@login_required
@require_POST
def labeler_audit(request: AuthenticatedHttpRequest, labeler_id: int) -> HttpResponse:
    from models_srv.judge_audit import AuditError

    labeler = selectors.labeler_for_curator(request.user, labeler_id)
    error = ""
    try:
        services.audit_start(labeler=labeler, created_by=request.user, request=request)
    except AuditError as exc:
        error = str(exc)
    if not request.htmx and not error:
        return redirect("models_srv:labeler", labeler_id=labeler.id)
    return _labeler_page(request, labeler, error)


@login_required
@require_POST
def ai_run_cancel(request: AuthenticatedHttpRequest, run_uuid: UUID) -> HttpResponse:
    from models_srv.labeling import run_cancel

    run = selectors.ai_run_for_curator(request.user, run_uuid)
    run_cancel(run=run)
    return redirect("models_srv:ai", slug=run.project.slug)


@login_required
@require_GET
def ai_run_detail(request: AuthenticatedHttpRequest, run_uuid: UUID) -> HttpResponse:
    run = selectors.ai_run_for_curator(request.user, run_uuid)
    failures = run.failures.select_related("item").filter(abstained=False).order_by("id")[:500]
    abstentions = run.failures.select_related("item").filter(abstained=True).order_by("id")[:500]
    context = {"run": run, "project": run.project, "failures": failures, "abstentions": abstentions}
    return render(request, "models_srv/ai_run.html", context)


# ---------------------------------------------------------------------------------------------
# Routing


@login_required
@require_GET
def routing_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    return _routing_render(request, project_for_user(request.user, slug, curator=True))


def _routing_render(
    request: AuthenticatedHttpRequest, project: Project, form: RoutingForm | None = None
) -> HttpResponse:
    fragment = request.method == "GET" and request.GET.get("part") == "curve"
    from django.db.models import Count

    from annotation.models import Item
    from models_srv import dashboards
    from models_srv.judge_audit import audit_gate
    from models_srv.models import RouterVersion

    numbers = dashboards.routing_numbers(project)
    total, budget, used = numbers["total"], numbers["budget"], numbers["used"]
    items = Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED)
    routes = dict(items.values_list("route").annotate(n=Count("id")).values_list("route", "n"))
    history = list(RouterVersion.objects.filter(project=project)[:10])
    router = history[0] if history else None
    form = form or RoutingForm(
        initial={
            "routing_policy": project.routing_policy,
            "budget_percent": round(100 * project.human_budget, 2),
            "calibration_percent": round(100 * project.calibration_share, 2),
            "require_ai_audit": project.require_ai_audit,
        }
    )
    context = {
        "gate": audit_gate(project, required=True),
        "form": form,
        "history": history,
        "project": project,
        "total": total,
        "budget": budget,
        "used": used,
        "left": max(0, budget - used),
        "routes": {label: routes.get(value, 0) for value, label in Item.Route.choices},
        "router": router,
        "weights": (router.feature_weights if router else [])[:12],
        "budget_chart": dashboards.budget_chart(**numbers),
        # The simulation when cached; else the page asks for it as a fragment (?part=curve).
        "curve_chart": dashboards.routing_curve(project, compute=fragment),
    }
    template = "models_srv/routing.html" + ("#curve" if fragment else "")
    return render(request, template, context, status=400 if form.errors else 200)


@login_required
@require_POST
def routing_run(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    data = request.POST.copy()
    # A bare "Re-route" (no fields) keeps the project's current settings.
    data.setdefault("routing_policy", project.routing_policy)
    data.setdefault("budget_percent", str(project.human_budget * 100))
    data.setdefault("calibration_percent", str(min(project.calibration_share, project.human_budget) * 100))
    if "routing_policy" not in request.POST and project.require_ai_audit:
        data["require_ai_audit"] = "on"  # a bare re-route keeps it; the form's unticked box clears it
    form = RoutingForm(data)
    if not form.is_valid():
        return _routing_render(request, project, form)
    services.routing_settings_set(
        project=project,
        policy=form.cleaned_data["routing_policy"],
        human_budget=form.cleaned_data["budget_percent"] / 100,
        calibration_share=form.cleaned_data["calibration_percent"] / 100,
        require_ai_audit=form.cleaned_data["require_ai_audit"],
        by=request.user,
        request=request,
    )
    return redirect("models_srv:routing", slug=project.slug)
