"""Login rate limiting.

Failed logins are counted in accounts.throttle's store, which every web process shares, per
username (LOGIN_RATE_LIMIT, default 5) and per client address (LOGIN_RATE_LIMIT_PER_IP, default
20) over a fixed window (LOGIN_RATE_LIMIT_WINDOW seconds, default 900). Past either limit the
login form answers 429 without checking the password, and the authentication backend refuses too,
so the admin's login page (and anything else that calls `authenticate`) is covered. A successful
login clears its username's counter; the address counter runs out with its window, so one valid
account cannot be used to reset it.

Counting happens in the `user_login_failed` / `user_logged_in` receivers (annotation.signals).
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.views import LoginView
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accounts import throttle
from config.security import client_ip


def _window() -> int:
    return max(1, settings.LOGIN_RATE_LIMIT_WINDOW)


def _keys(request: HttpRequest | None, username: str) -> list[tuple[str, int]]:
    """(cache key, limit) for the username and, with a request, the client address."""
    name = (username or "").strip().lower()
    keys = [(f"login-fail:user:{hashlib.sha256(name.encode()).hexdigest()[:40]}", settings.LOGIN_RATE_LIMIT)]
    ip = client_ip(request) if request is not None else None
    if ip:
        keys.append((f"login-fail:ip:{ip}", settings.LOGIN_RATE_LIMIT_PER_IP))
    return [(key, limit) for key, limit in keys if limit > 0]


def login_blocked(request: HttpRequest | None, username: str) -> bool:
    return any(throttle.count(key) >= limit for key, limit in _keys(request, username))


def login_failed(request: HttpRequest | None, username: str) -> bool:
    """Count a failed login; True when this failure reached a limit (the start of a lockout)."""
    reached = False
    for key, limit in _keys(request, username):
        reached = throttle.hit(key, _window()) == limit or reached
    return reached


def login_succeeded(username: str) -> None:
    for key, _ in _keys(None, username):  # without a request: the username's counter only
        throttle.reset(key)


class RateLimitedModelBackend(ModelBackend):
    """Django's model backend, refusing while the username or address is locked out."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> Any:
        if username is not None and login_blocked(request, username):
            raise PermissionDenied("too many failed logins")
        return super().authenticate(request, username=username, password=password, **kwargs)

    def get_user(self, user_id: Any) -> Any:
        """The session's user, read on every request, by a statement written once (the ORM's
        `get()` compiles the same query anew each time); the same checks as Django's."""
        from django.contrib.auth import get_user_model

        from annotation.rows import get_by_pk

        user = get_by_pk(get_user_model(), user_id)
        return user if user is not None and self.user_can_authenticate(user) else None


class RateLimitedLoginView(LoginView):
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        if login_blocked(request, username):
            form = self.get_form_class()(request=request, initial={"username": username[:150]})
            minutes = max(1, round(_window() / 60))
            context = self.get_context_data(form=form, rate_limited=True, retry_minutes=minutes)
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(_window())
            return response
        return super().post(request, *args, **kwargs)


@require_GET
@never_cache
def csrf_token(request: HttpRequest) -> JsonResponse:
    """This browser's CSRF token as it is now. A login replaces the token, so a page opened before
    it (the annotate page in another tab) fetches the new one and sends its answer again."""
    return JsonResponse({"token": get_token(request)})
