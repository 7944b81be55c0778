"""A project's people: who is a member in which role (curators add, re-role and remove members),
and the project's audit log. Curators of the project and site admins only; everyone else gets 404.

The membership writes (and their audit events) are in `annotation.services`; these are the pages.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation import audit, selectors
from annotation.models import AuditEvent, Membership, Project
from annotation.services import MembershipError, member_add, member_remove, member_set_role
from config.http import AuthenticatedHttpRequest, HtmxHttpRequest

AUDIT_PAGE_SIZE = 50


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.ANNOTATOR)


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


def _membership_in(project: Project, membership_id: int) -> Membership:
    membership = Membership.objects.select_related("project", "user").filter(project=project, id=membership_id).first()
    if membership is None:
        raise Http404("No such member.")
    return membership


def _panel(
    request: HtmxHttpRequest, project: Project, *, form: MemberAddForm | None = None, error: str = "", status: int = 200
) -> HttpResponse:
    context: dict[str, Any] = {
        "project": project,
        "members": list(
            Membership.objects.filter(project=project)
            .select_related("user")
            .order_by("-role", "user__username")  # curators first
        ),
        "roles": Membership.Role.choices,
        "form": form or MemberAddForm(),
        "error": error,
    }
    if request.htmx:
        # htmx swaps only 2xx answers: an error goes back as a 200 panel that shows it.
        return render(request, "annotation/members.html#members-panel", context)
    return render(request, "annotation/members.html", context, status=status)


def _after_change(request: HtmxHttpRequest, project: Project) -> HttpResponse:
    """The updated panel; a curator who just gave up curating goes back to the project page."""
    try:
        selectors.project_for_user(request.user, project.slug, curator=True)
    except Http404:
        url = reverse("annotation:project", args=[project.slug])
        if request.htmx:
            response = HttpResponse(status=204)
            response["HX-Redirect"] = url
            return response
        return redirect(url)
    if not request.htmx:
        return redirect("annotation:members", slug=project.slug)
    return _panel(request, project)


@login_required
@require_GET
def members_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    return _panel(request, selectors.project_for_user(request.user, slug, curator=True))


@login_required
@require_POST
def member_add_view(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    form = MemberAddForm(request.POST)
    if not form.is_valid():
        return _panel(request, project, form=form, status=400)
    try:
        member_add(
            project=project,
            username=form.cleaned_data["username"],
            role=form.cleaned_data["role"],
            by=request.user,
            request=request,
        )
    except MembershipError as exc:
        return _panel(request, project, form=form, error=str(exc), status=400)
    return _after_change(request, project)


@login_required
@require_POST
def member_role_view(request: AuthenticatedHttpRequest, slug: str, membership_id: int) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    membership = _membership_in(project, membership_id)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        return _panel(request, project, error="Choose curator or annotator.", status=400)
    try:
        member_set_role(membership=membership, role=form.cleaned_data["role"], by=request.user, request=request)
    except MembershipError as exc:
        return _panel(request, project, error=str(exc), status=409)
    return _after_change(request, project)


@login_required
@require_POST
def member_remove_view(request: AuthenticatedHttpRequest, slug: str, membership_id: int) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    membership = _membership_in(project, membership_id)
    try:
        member_remove(membership=membership, by=request.user, request=request)
    except MembershipError as exc:
        return _panel(request, project, error=str(exc), status=409)
    return _after_change(request, project)


@login_required
@require_GET
def audit_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    events = AuditEvent.objects.filter(project=project)
    present = set(events.values_list("action", flat=True).distinct().order_by())
    action = request.GET.get("action", "")
    if action:
        events = events.filter(action=action)
    page = Paginator(events.order_by("-created_at", "-id"), AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    actions = [(a, label) for a, label in audit.ACTIONS.items() if a in present]
    actions += [(a, a) for a in sorted(present - set(audit.ACTIONS))]
    context = {"project": project, "page": page, "action": action, "actions": actions, "labels": audit.ACTIONS}
    return render(request, "annotation/audit.html", context)
