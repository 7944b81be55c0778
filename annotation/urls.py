from django.urls import path

from annotation import views

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new", views.project_create, name="project_create"),
    path("p/<slug:slug>/", views.project_detail, name="project"),
    path("p/<slug:slug>/imports", views.import_jobs, name="import_jobs"),
    path("p/<slug:slug>/import", views.import_upload, name="import_upload"),
    path("imports/<uuid:job_uuid>", views.import_job_detail, name="import_job"),
    path("p/<slug:slug>/annotate", views.annotate, name="annotate"),
    path("a/<uuid:assignment_uuid>/submit", views.assignment_submit, name="submit"),
    path("a/<uuid:assignment_uuid>/skip", views.assignment_skip, name="skip"),
]
