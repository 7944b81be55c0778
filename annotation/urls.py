from django.urls import path

from annotation import members, views
from annotation.account import token_revoke_view, tokens_page

app_name = "annotation"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new", views.project_create, name="project_create"),
    path("projects/new/schema", views.project_create_schema, name="project_create_schema"),
    path("p/<slug:slug>/", views.project_detail, name="project"),
    path("p/<slug:slug>/settings", views.project_settings, name="project_settings"),
    path("p/<slug:slug>/settings/schema", views.project_settings_schema, name="project_settings_schema"),
    path("p/<slug:slug>/imports", views.import_jobs, name="import_jobs"),
    path("p/<slug:slug>/import", views.import_upload, name="import_upload"),
    path("imports/<uuid:job_uuid>", views.import_job_detail, name="import_job"),
    path("p/<slug:slug>/annotate", views.annotate, name="annotate"),
    path("a/<uuid:assignment_uuid>/submit", views.assignment_submit, name="submit"),
    path("a/<uuid:assignment_uuid>/skip", views.assignment_skip, name="skip"),
    path("p/<slug:slug>/members", members.members_page, name="members"),
    path("p/<slug:slug>/members/add", members.member_add_view, name="member_add"),
    path("p/<slug:slug>/members/<int:membership_id>/role", members.member_role_view, name="member_role"),
    path("p/<slug:slug>/members/<int:membership_id>/remove", members.member_remove_view, name="member_remove"),
    path("p/<slug:slug>/audit", members.audit_page, name="audit"),
    path("account/tokens", tokens_page, name="account_tokens"),
    path("account/tokens/<int:token_id>/revoke", token_revoke_view, name="account_token_revoke"),
]
