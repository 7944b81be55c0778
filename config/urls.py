from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from config import health
from config.api import api
from config.auth_views import RateLimitedLoginView

urlpatterns = [
    path("accounts/login/", RateLimitedLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("healthz/workers", health.healthz_workers, name="healthz_workers"),
    path("", include("models_srv.urls")),
    path("", include("curation.urls")),
    path("", include("annotation.urls")),
]

# A database outage that surfaces outside a view answers 503 with Retry-After (config/reliability.py).
handler500 = "config.reliability.server_error"
