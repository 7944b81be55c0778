"""Audits of AI labelers (models_srv.judge_audit), one per run of the probes, per config."""

import django.db.models.deletion
import uuid
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0016_recount_human_count_without_imported"),
        ("models_srv", "0007_ai_run_abstentions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AILabelerAudit",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("uuid", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("labeler_version", models.PositiveIntegerField()),
                (
                    "config_sha",
                    models.CharField(help_text="sha256 of the labeler's config the audit ran with.", max_length=64),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("queued", "Queued"),
                            ("running", "Running"),
                            ("succeeded", "Succeeded"),
                            ("failed", "Failed"),
                            ("cancelled", "Cancelled"),
                        ],
                        default="queued",
                        max_length=16,
                    ),
                ),
                ("item_ids", models.JSONField(default=list, help_text="The items the probes were built from.")),
                ("thresholds", models.JSONField(default=dict, help_text="What passing meant when it ran.")),
                ("metrics", models.JSONField(blank=True, default=dict)),
                (
                    "records",
                    models.JSONField(blank=True, default=list, help_text="Each probe with the judge's answers."),
                ),
                ("passed", models.BooleanField(blank=True, null=True)),
                ("prompt_tokens", models.PositiveBigIntegerField(default=0)),
                ("completion_tokens", models.PositiveBigIntegerField(default=0)),
                ("cost", models.FloatField(default=0.0)),
                ("error", models.TextField(blank=True)),
                ("attempts", models.PositiveSmallIntegerField(default=0)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                (
                    "heartbeat_at",
                    models.DateTimeField(blank=True, help_text="Written while it runs (config/jobs.py).", null=True),
                ),
                (
                    "created_by",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL
                    ),
                ),
                (
                    "labeler",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="audits", to="annotation.labeler"
                    ),
                ),
                (
                    "project",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="ai_audits", to="annotation.project"
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
                "indexes": [models.Index(fields=["labeler", "-created_at"], name="ai_audit_labeler_recent")],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("status__in", ["queued", "running", "succeeded", "failed", "cancelled"])),
                        name="ai_audit_status_valid",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("passed__isnull", True), ("status", "succeeded"), _connector="OR"),
                        name="ai_audit_passed_when_done",
                    ),
                ],
            },
        ),
    ]
