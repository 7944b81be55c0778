from django.contrib import admin
from django.http import HttpRequest

from curation.models import CurationAction, ExportSnapshot


@admin.register(CurationAction)
class CurationActionAdmin(admin.ModelAdmin):
    list_display = ["item", "action", "actor", "created_at", "undone_at"]
    list_filter = ["action", "project"]
    search_fields = ["item__external_id", "reason"]
    raw_id_fields = ["item", "actor", "undone_by"]
    readonly_fields = ["created_at", "previous"]
    list_select_related = ["item__project", "actor"]


@admin.register(ExportSnapshot)
class ExportSnapshotAdmin(admin.ModelAdmin):
    """Snapshots are immutable: the admin shows them, it does not edit them."""

    list_display = ["code", "project", "status", "formats", "cutoff", "bundle_bytes", "created_by", "created_at"]
    list_filter = ["status", "project"]
    search_fields = ["code"]
    list_select_related = ["project", "created_by"]

    def has_change_permission(self, request: HttpRequest, obj: ExportSnapshot | None = None) -> bool:
        return False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
