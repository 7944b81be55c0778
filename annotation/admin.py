from django import forms
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from pydantic import ValidationError as PydanticValidationError

from accounts.models import ApiToken
from annotation import services
from annotation.models import (
    Assignment,
    AuditEvent,
    GuidelinesVersion,
    ImportJob,
    Item,
    Judgment,
    Labeler,
    Membership,
    Project,
    SchemaVersion,
)
from annotation.schema import JudgmentSchema, format_validation_error


def _actor(request: HttpRequest) -> User | None:
    """Who acts, for the services' audit (the admin site lets only signed-in staff this far)."""
    user = request.user
    return user if user.is_authenticated else None


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ["user"]


class ProjectAdminForm(forms.ModelForm):
    class Meta:
        model = Project
        fields = "__all__"  # noqa: DJ007 - the admin shows and edits every field

    def clean_overlap(self) -> int:
        overlap = self.cleaned_data["overlap"]
        if not 1 <= overlap <= 50:
            raise forms.ValidationError("Overlap is 1 to 50 human judgments per item.")
        return overlap

    def clean_schema(self) -> object:
        try:
            return JudgmentSchema.model_validate(self.cleaned_data["schema"]).model_dump(mode="json", exclude_none=True)
        except PydanticValidationError as exc:
            raise forms.ValidationError(format_validation_error(exc)) from None


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectAdminForm
    list_display = ["name", "slug", "schema_version", "overlap", "routing_policy", "created_at"]
    search_fields = ["name", "slug"]
    readonly_fields = ["uuid", "schema_version", "guidelines_version", "created_at", "updated_at"]
    inlines = [MembershipInline]

    def save_model(self, request: HttpRequest, obj: Project, form: forms.ModelForm, change: bool) -> None:
        """A changed schema or guidelines is a new version (judgments record the one they were made
        under), and a changed overlap settles the items' status, as the services do elsewhere."""
        if not change:
            services.project_add(project=obj, by=_actor(request))  # version 1 of each, as elsewhere
            return
        stored = Project.objects.get(pk=obj.pk)
        schema, guidelines, overlap = obj.schema, obj.guidelines, obj.overlap
        obj.schema, obj.guidelines, obj.overlap = stored.schema, stored.guidelines, stored.overlap
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            services.project_set_schema(project=obj, schema=JudgmentSchema.model_validate(schema), by=_actor(request))
            services.project_set_guidelines(project=obj, text=guidelines, by=_actor(request))
            services.project_set_overlap(project=obj, overlap=overlap)
        obj.refresh_from_db()


@admin.register(SchemaVersion)
class SchemaVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "version", "created_at", "created_by"]
    list_filter = ["project"]


@admin.register(GuidelinesVersion)
class GuidelinesVersionAdmin(admin.ModelAdmin):
    list_display = ["project", "version", "created_at", "created_by"]
    list_filter = ["project"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["project", "user", "role", "created_at"]
    list_filter = ["role", "project"]
    raw_id_fields = ["user"]


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["external_id", "project", "num_responses", "split", "status", "is_gold", "created_at"]
    list_filter = ["project", "status", "split", "is_gold"]
    search_fields = ["external_id", "prompt", "uuid"]  # uuid: the reference annotators see
    readonly_fields = ["uuid", "created_at", "import_job"]
    list_select_related = ["project"]


@admin.register(Labeler)
class LabelerAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "project", "user", "version", "active"]
    list_filter = ["kind", "active"]
    raw_id_fields = ["user"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["item", "annotator", "state", "leased_at", "expires_at", "flagged"]
    list_filter = ["state", "flagged"]
    raw_id_fields = ["item", "annotator"]
    list_select_related = ["item", "annotator"]


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = ["item", "labeler", "schema_version", "confidence", "created_at"]
    list_filter = ["labeler__kind", "item__project"]
    raw_id_fields = ["item", "assignment"]
    readonly_fields = ["uuid", "created_at"]
    list_select_related = ["item", "labeler"]


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = ["uuid", "project", "source", "status", "rows_read", "items_created", "created_at"]
    list_filter = ["status", "source"]
    readonly_fields = ["uuid", "created_at", "started_at", "finished_at"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are made on the account page or by `create_api_token` (the key is shown once there);
    the admin lists them and deletes them through the service, which records the deletion."""

    list_display = ["name", "user", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = ["key_hash", "created_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        services.token_delete(token=obj, by=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            services.token_delete(token=token, by=_actor(request))


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The whole audit log, every project's and the site's; read-only (events are never edited)."""

    list_display = ["created_at", "actor_name", "action", "project", "target_repr", "ip"]
    list_filter = ["action", "project"]
    search_fields = ["actor_name", "action", "target_repr", "target_id"]
    date_hierarchy = "created_at"
    list_select_related = ["project"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
