from django.urls import path

from curation import views

app_name = "curation"

urlpatterns = [
    path("p/<slug:slug>/quality/", views.quality_page, name="quality"),
    path("p/<slug:slug>/quality.csv", views.quality_csv, name="quality_csv"),
    path("p/<slug:slug>/quality/groups/<uuid:version_uuid>/place", views.groups_place, name="groups_place"),
    path("p/<slug:slug>/review/", views.review_page, name="review"),
    path("p/<slug:slug>/review/out-of-fold", views.review_crossfit, name="review_crossfit"),
    path("p/<slug:slug>/review/<int:item_id>", views.review_act, name="review_act"),
    path("p/<slug:slug>/review/actions/<int:action_id>/undo", views.review_undo, name="review_undo"),
    path("p/<slug:slug>/review/bulk", views.review_bulk, name="review_bulk"),
    path("p/<slug:slug>/review/actions/<int:action_id>/undo-bulk", views.review_bulk_undo, name="review_bulk_undo"),
    path("p/<slug:slug>/exports/", views.exports_page, name="exports"),
    path("exports/<uuid:code>/", views.export_detail, name="export"),
    path("exports/<uuid:code>/download", views.export_download, name="export_download"),
    path("exports/<uuid:code>/reproduce", views.export_reproduce, name="export_reproduce"),
]

# The dashboards' charts as CSV (curation/chart_views.py).
from curation import chart_views  # noqa: E402  (kept at the end: one block to merge)

urlpatterns += [
    path("p/<slug:slug>/charts.csv", chart_views.chart_csv, name="chart_csv"),
]
