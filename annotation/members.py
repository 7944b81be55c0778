"""A project's people: who is a member in which role (curators add, re-role and remove members),
and the project's audit log. Curators of the project and site admins only; everyone else gets 404.

The membership writes live here with their pages; each runs in one transaction with the project
row locked, so two curators demoting each other at once cannot leave the project without one.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation import audit, selectors
from annotation.models import Assignment, AuditEvent, Membership, Project

AUDIT_PAGE_SIZE = 50


class MembershipError(ValueError):
    """A membership change that cannot be made, with a reason to show."""


# ---------------------------------------------------------------------------------------------
# Writes


def _lock(project: Project) -> Project:
    return Project.objects.select_for_update().get(pk=project.pk)


def _curator_count(project: Project) -> int:
    return Membership.objects.filter(project=project, role=Membership.Role.CURATOR).count()


def member_add(
    *, project: Project, username: str, role: str, by: AbstractBaseUser, request: HttpRequest | None = None
) -> Membership:
    username = username.strip()
    if role not in Membership.Role.values:
        raise MembershipError(f"role must be one of {', '.join(Membership.Role.values)}")
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise MembershipError(f"There is no user named {username!r}; check the spelling or create the account first.")
    if not user.is_active:
        raise MembershipError(f"The account {username!r} is deactivated.")
    with transaction.atomic():
        _lock(project)
        existing = Membership.objects.filter(project=project, user=user).first()
        if existing is not None:
            raise MembershipError(f"{username} is already a member ({existing.role}); change the role in the list.")
        membership = Membership.objects.create(project=project, user=user, role=role)
        audit.record(
            by,
            "membership.add",
            project=project,
            target=membership,
            details={"user": username, "role": role},
            request=request,
        )
    return membership


def member_set_role(
    *, membership: Membership, role: str, by: AbstractBaseUser, request: HttpRequest | None = None
) -> Membership:
    if role not in Membership.Role.values:
        raise MembershipError(f"role must be one of {', '.join(Membership.Role.values)}")
    with transaction.atomic():
        project = _lock(membership.project)
        current = Membership.objects.select_related("user").get(pk=membership.pk)
        if current.role == role:
            return current
        if current.role == Membership.Role.CURATOR and _curator_count(project) <= 1:
            raise MembershipError(
                f"{current.user.username} is the project's last curator; make someone else curator first."
            )
        old = current.role
        current.role = role
        current.save(update_fields=["role"])
        audit.record(
            by,
            "membership.change",
            project=project,
            target=current,
            details={"user": current.user.username, "from": old, "to": role},
            request=request,
        )
    return current


def member_remove(*, membership: Membership, by: AbstractBaseUser, request: HttpRequest | None = None) -> None:
    with transaction.atomic():
        project = _lock(membership.project)
        current = Membership.objects.select_related("user").filter(pk=membership.pk).first()
        if current is None:
            return  # removed already (a double click)
        if current.role == Membership.Role.CURATOR and _curator_count(project) <= 1:
            raise MembershipError(f"{current.user.username} is the project's last curator and cannot be removed.")
        details = {"user": current.user.username, "role": current.role}
        target = ("annotation.membership", current.pk, str(current))
        held = Assignment.objects.filter(
            annotator_id=current.user_id, item__project=project, state=Assignment.State.LEASED
        ).count()
        if held:
            details["leases_released"] = held  # given back by the membership's delete receiver
        current.delete()
        audit.record(by, "membership.remove", project=project, target=target, details=details, request=request)


# ---------------------------------------------------------------------------------------------
# Pages


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
    request: HttpRequest, project: Project, *, form: MemberAddForm | None = None, error: str = "", status: int = 200
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


def _after_change(request: HttpRequest, project: Project) -> HttpResponse:
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
def members_page(request: HttpRequest, slug: str) -> HttpResponse:
    return _panel(request, selectors.project_for_user(request.user, slug, curator=True))


@login_required
@require_POST
def member_add_view(request: HttpRequest, slug: str) -> HttpResponse:
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
def member_role_view(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
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
def member_remove_view(request: HttpRequest, slug: str, membership_id: int) -> HttpResponse:
    project = selectors.project_for_user(request.user, slug, curator=True)
    membership = _membership_in(project, membership_id)
    try:
        member_remove(membership=membership, by=request.user, request=request)
    except MembershipError as exc:
        return _panel(request, project, error=str(exc), status=409)
    return _after_change(request, project)


@login_required
@require_GET
def audit_page(request: HttpRequest, slug: str) -> HttpResponse:
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
