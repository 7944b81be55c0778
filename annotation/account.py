"""The user's own account pages: API tokens (create, list, revoke)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts.auth import SCOPES, TokenError
from accounts.selectors import token_of_user, tokens_of
from annotation.services import token_create, token_revoke
from config.http import AuthenticatedHttpRequest


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. “nightly export job”.")
    scopes = forms.MultipleChoiceField(
        choices=[(name, f"{name}: {text}") for name, text in SCOPES.items() if name != "read"],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Every token can read; tick what else it may do.",
    )


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def tokens_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    """List the user's tokens; a POST creates one and shows its key this once."""
    form = TokenForm(request.POST or None)
    created = key = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                created, key = token_create(
                    user=request.user, name=form.cleaned_data["name"], scopes=form.cleaned_data["scopes"]
                )
            except TokenError as exc:
                form.add_error(None, str(exc))
                status = 400
            else:
                form = TokenForm()
        else:
            status = 400
    context = {
        "form": form,
        "tokens": tokens_of(request.user),
        "created": created,
        "key": key,
        "read_scope": SCOPES["read"],
    }
    return render(request, "annotation/account_tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke_view(request: AuthenticatedHttpRequest, token_id: int) -> HttpResponse:
    """Revoke one of the user's own tokens (another user's token id answers 404)."""
    token = token_of_user(request.user, token_id)
    if token is None:
        raise Http404("No such token.")
    token_revoke(token=token)
    if request.htmx:
        return render(request, "annotation/account_tokens.html#token-list", {"tokens": tokens_of(request.user)})
    messages.success(request, f"Token “{token.name}” is revoked.")
    return redirect("annotation:account_tokens")
