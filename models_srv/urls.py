from django.urls import path

from models_srv import views

app_name = "models_srv"

urlpatterns = [
    path("p/<slug:slug>/models/", views.models_page, name="models"),
    path("p/<slug:slug>/models/train", views.train, name="train"),
    path("m/<uuid:version_uuid>/", views.version_detail, name="version"),
    path("m/<uuid:version_uuid>/cancel", views.cancel, name="cancel"),
    path("m/<uuid:version_uuid>/current", views.make_current, name="current"),
    path("m/<uuid:version_uuid>/rescore", views.rescore, name="rescore"),
    path("p/<slug:slug>/ai/", views.ai_page, name="ai"),
    path("p/<slug:slug>/routing/", views.routing_page, name="routing"),
    path("p/<slug:slug>/routing/run", views.routing_run, name="routing_run"),
    path("p/<slug:slug>/ai/labelers", views.labeler_add, name="labeler_add"),
    path("ai/labelers/<int:labeler_id>/", views.labeler_detail, name="labeler"),
    path("ai/labelers/<int:labeler_id>/run", views.labeler_run, name="labeler_run"),
    path("ai/labelers/<int:labeler_id>/audit", views.labeler_audit, name="labeler_audit"),
    path("ai/runs/<uuid:run_uuid>/", views.ai_run_detail, name="ai_run"),
    path("ai/runs/<uuid:run_uuid>/cancel", views.ai_run_cancel, name="ai_run_cancel"),
]
