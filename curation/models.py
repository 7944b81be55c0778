"""Curation actions on items and immutable dataset export snapshots.

Every curation decision is a row (who, why, on what evidence) and can be undone; nothing about
a judgment is changed silently. An item's effective curation state is its latest action that
has not been undone (`curation.selectors.curation_states`).

An export snapshot is a frozen description of a dataset (filters, formats, and a `cutoff`: only
judgments and curation actions made at or before it count), built once by a Celery task into
`VAR_DIR/exports/<code>/`. Re-running it with the same filters and cutoff gives the same rows
(`curation.services.export_reproduce`).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models import Item, Project


class CurationActionKind(models.TextChoices):
    DROP = "drop", "Drop from the dataset"
    FLIP = "flip", "Flip the preference"
    ACCEPT = "accept", "Accept as labeled"
    REQUEUE = "requeue", "Send back to human annotators"


class CurationAction(models.Model):
    """One curator's decision on one item. Undone actions stay, marked with who undid them."""

    Kind = CurationActionKind

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="curation_actions")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="curation_actions")
    action = models.CharField(max_length=16, choices=CurationActionKind.choices)
    reason = models.TextField(blank=True)
    evidence = models.JSONField(default=dict, blank=True, help_text="What prompted it, e.g. ensemble disagreement.")
    previous = models.JSONField(
        default=dict, blank=True, help_text="The item's status, route and priority before; undo restores them."
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    undone_at = models.DateTimeField(null=True, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(action__in=CurationActionKind.values), name="curation_action_valid"),
        ]
        indexes = [
            models.Index(fields=["item", "created_at"], name="curation_action_item"),
            models.Index(fields=["project", "created_at"], name="curation_action_project"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.item_id}" + (" (undone)" if self.undone_at else "")

    @property
    def is_undone(self) -> bool:
        return self.undone_at is not None


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


def exports_root() -> Path:
    return Path(settings.VAR_DIR) / "exports"


class ExportSnapshot(models.Model):
    """A dataset export: what it selects (filters, formats, cutoff) and, once built, its files."""

    Status = ExportStatus

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="exports")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    filters = models.JSONField(default=dict, help_text="curation.export.ExportFilters, validated.")
    formats = models.JSONField(default=list, help_text="Any of pairs, listwise, rubric, spans, raw.")
    license = models.CharField(max_length=100, default="unknown", help_text="License field of the dataset card.")
    cutoff = models.DateTimeField(help_text="Only judgments and curation actions made at or before this count.")
    source_snapshot = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reproductions"
    )
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.PENDING)
    error = models.TextField(blank=True)
    progress = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    files = models.JSONField(default=list, blank=True, help_text="[{name, format, split, kind, bytes, sha256, rows}]")
    bundle_path = models.CharField(max_length=500, blank=True, help_text="Relative to VAR_DIR/exports.")
    bundle_sha256 = models.CharField(max_length=64, blank=True)
    bundle_bytes = models.PositiveBigIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ExportStatus.values), name="export_status_valid"),
            models.CheckConstraint(condition=~Q(status="done") | ~Q(bundle_path=""), name="export_done_has_bundle"),
        ]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="export_status_heartbeat")]

    def __str__(self) -> str:
        return f"export {self.code} of {self.project.slug} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (ExportStatus.DONE, ExportStatus.FAILED)

    @property
    def folder(self) -> Path:
        return exports_root() / str(self.code)

    @property
    def bundle_file(self) -> Path | None:
        """The bundle on disk, once the export is done."""
        return exports_root() / self.bundle_path if self.bundle_path else None

    @property
    def bundle_name(self) -> str:
        return Path(self.bundle_path).name if self.bundle_path else ""
