from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from annotation.views import healthz
from config.api import api

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("models_srv.urls")),
    path("", include("curation.urls")),
    path("", include("annotation.urls")),
]
