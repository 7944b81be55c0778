from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path, re_path

from accounts.login import RateLimitedLoginView, csrf_token
from config import health
from config.api import api
from config.api_errors import not_found as api_not_found


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers and tools ask for /favicon.ico whatever the page links: the static file's URL."""
    return redirect(static("favicon.ico"))


urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("accounts/login/", RateLimitedLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/csrf-token", csrf_token, name="csrf_token"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    # Any other URL under /api/ (a malformed id, an unknown path): a JSON 404, as the API's own.
    re_path(r"^api/", api_not_found),
    path("healthz", health.healthz, name="healthz"),
    path("healthz/workers", health.healthz_workers, name="healthz_workers"),
    # The annotation pages first: the queue's two requests (next item, submit) are most of the
    # traffic, and every pattern tried before theirs costs a regex match. No two apps' patterns
    # match the same path, so the order decides nothing else.
    path("", include("annotation.urls")),
    path("", include("models_srv.urls")),
    path("", include("curation.urls")),
]

# A database outage that surfaces outside a view answers 503 with Retry-After (config/reliability.py).
handler500 = "config.reliability.server_error"
