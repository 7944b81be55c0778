"""The reward-model registry: data snapshots, versions, per-response scores, and an embedding cache."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.models import Item, Project


class LabelSource(models.TextChoices):
    """Which judgments a reward model trains on: one of the sources of `annotation.models.LabelSource`
    (`human` is only the annotators' judgments made here; imported labels are their own source), or
    a union of them. The default, `people`, is every judgment a person made: the annotators' and the
    imported labels (a reward model learns human preferences wherever they were collected)."""

    PEOPLE = "people", "People: annotators' judgments and imported labels"
    HUMAN = "human", "Annotators' judgments (made here)"
    IMPORTED = "imported", "Imported labels"
    AI = "ai", "AI judgments"
    BOTH = "both", "Annotators' and AI judgments"
    ALL = "all", "Every source: annotators, imported, AI"

    @property
    def sources(self) -> tuple[str, ...]:
        """The judgment sources (`annotation.models.LabelSource` values) this choice takes."""
        unions = {"people": ("human", "imported"), "both": ("human", "ai"), "all": ("human", "imported", "ai")}
        return unions.get(self.value, (self.value,))


class DataSnapshot(models.Model):
    """Exactly which judgments a run trained and evaluated on, and how items were split.

    An item is held out when its `split` is eval, or when sha256(seed:item uuid) falls under
    `eval_fraction`; the judgments are listed by id, so the data can be rebuilt from this row."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="snapshots")
    label_source = models.CharField(max_length=8, choices=LabelSource.choices, default=LabelSource.PEOPLE)
    seed = models.PositiveIntegerField(default=0)
    eval_fraction = models.FloatField(default=0.2)
    judgment_ids = models.JSONField(default=list)
    eval_item_ids = models.JSONField(default=list)
    counts = models.JSONField(default=dict)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(eval_fraction__gte=0, eval_fraction__lt=1), name="snapshot_eval_fraction"
            ),
            models.CheckConstraint(condition=Q(label_source__in=LabelSource.values), name="snapshot_label_source"),
        ]

    def __str__(self) -> str:
        return f"snapshot {self.uuid} of {self.project.slug}"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class RewardModelVersion(models.Model):
    """One training run and, when it succeeded, the model it produced."""

    Status = RunStatus

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reward_models")
    version = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    is_current = models.BooleanField(default=False)
    config = models.JSONField(help_text="The TrainConfig the run used (backbone, mode, objectives, ...).")
    snapshot = models.ForeignKey(DataSnapshot, on_delete=models.PROTECT, related_name="versions")
    metrics = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    artifact_path = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    device = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["project", "version"], name="rm_version_unique"),
            models.UniqueConstraint(fields=["project"], condition=Q(is_current=True), name="rm_one_current"),
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="rm_status_valid"),
            models.CheckConstraint(condition=Q(is_current=False) | Q(status="succeeded"), name="rm_current_succeeded"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug} reward model v{self.version} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (RunStatus.QUEUED, RunStatus.RUNNING)


class ResponseScore(models.Model):
    """A version's reward for one response of an item, with the ensemble's spread."""

    version = models.ForeignKey(RewardModelVersion, on_delete=models.CASCADE, related_name="scores")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="scores")
    response_index = models.PositiveSmallIntegerField()
    score = models.FloatField()
    uncertainty = models.FloatField(default=0.0)
    aspects = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "item", "response_index"], name="score_unique"),
        ]

    def __str__(self) -> str:
        return f"v{self.version_id} {self.item_id}[{self.response_index}] = {self.score:.3f}"


class CrossFitRun(models.Model):
    """One cross-fitting of a project's pairwise labels (`models_srv.crossfit`): every labeled item
    scored by a reward model trained on the other folds, never on the item. The review queue reads
    the margins of the project's latest succeeded run."""

    Status = RunStatus

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="crossfit_runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    config = models.JSONField(help_text="The TrainConfig each fold's model was trained with.")
    folds = models.PositiveSmallIntegerField(default=5)
    snapshot = models.ForeignKey(DataSnapshot, on_delete=models.PROTECT, related_name="crossfit_runs")
    progress = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True, help_text="items and pairs scored")
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Written while it runs (config/jobs.py).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="crossfit_status_valid"),
            models.CheckConstraint(condition=Q(folds__gte=2), name="crossfit_folds_at_least_2"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug} out-of-fold margins ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (RunStatus.QUEUED, RunStatus.RUNNING)


class OutOfFoldMargin(models.Model):
    """An item's margin r(B) - r(A) (stored response order) from the model of its fold, which
    never trained on the item, with the ensemble's spread of that margin."""

    run = models.ForeignKey(CrossFitRun, on_delete=models.CASCADE, related_name="margins")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="out_of_fold_margins")
    fold = models.PositiveSmallIntegerField()
    margin = models.FloatField()
    spread = models.FloatField(default=0.0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="oof_margin_unique")]

    def __str__(self) -> str:
        return f"run {self.run_id} item {self.item_id}: {self.margin:+.3f}"


class EmbeddingCache(models.Model):
    """Frozen-backbone embeddings, one per (backbone, input text), so retraining never re-embeds."""

    backbone_key = models.CharField(max_length=64)
    text_sha = models.CharField(max_length=64)
    vector = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["backbone_key", "text_sha"], name="embedding_unique")]

    def __str__(self) -> str:
        return f"{self.backbone_key[:8]}:{self.text_sha[:8]}"


class AILabelRun(models.Model):
    """One AI labeler labeling a set of items, in batches on the `ai` (or `gpu`) queue."""

    Status = RunStatus

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="ai_runs")
    labeler = models.ForeignKey("annotation.Labeler", on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    item_ids = models.JSONField(default=list, help_text="The items this run covers (fixed when it starts).")
    done = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="Already labeled by this labeler: left as they were.")
    failed = models.PositiveIntegerField(default=0)
    abstained = models.PositiveIntegerField(
        default=0, help_text="Answered, but the two response orders disagreed where the schema has no tie: no label."
    )
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Written while it runs (config/jobs.py).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="ai_run_status_valid")]

    def __str__(self) -> str:
        return f"{self.labeler} on {self.project.slug} ({self.status})"

    @property
    def total(self) -> int:
        return len(self.item_ids)


class AILabelFailure(models.Model):
    """An item an AI labeler did not label, with the reason and what the model answered: a failure
    (no usable answer), or an abstention (`abstained`: its answers for the two response orders
    disagreed and the schema has no tie)."""

    run = models.ForeignKey(AILabelRun, on_delete=models.CASCADE, related_name="failures")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="ai_failures")
    reason = models.TextField()
    raw_output = models.TextField(blank=True)
    abstained = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="ai_failure_unique")]

    def __str__(self) -> str:
        return f"{self.item} failed: {self.reason[:60]}"


class AILabelerAudit(models.Model):
    """One audit of an AI labeler (models_srv.judge_audit): probes built from the project's items,
    the judge's false-accept rate, self-consistency and position bias on them, and whether it
    passed. An audit holds for the config it ran with (`config_sha`): a labeler is trusted only
    while its config is the one a passing audit measured."""

    Status = RunStatus

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="ai_audits")
    labeler = models.ForeignKey("annotation.Labeler", on_delete=models.CASCADE, related_name="audits")
    labeler_version = models.PositiveIntegerField()
    config_sha = models.CharField(max_length=64, help_text="sha256 of the labeler's config the audit ran with.")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    item_ids = models.JSONField(default=list, help_text="The items the probes were built from.")
    thresholds = models.JSONField(default=dict, help_text="What passing meant when it ran.")
    metrics = models.JSONField(default=dict, blank=True)
    records = models.JSONField(default=list, blank=True, help_text="Each probe with the judge's answers.")
    passed = models.BooleanField(null=True, blank=True)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Written while it runs (config/jobs.py).")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="ai_audit_status_valid"),
            models.CheckConstraint(
                condition=Q(passed__isnull=True) | Q(status="succeeded"), name="ai_audit_passed_when_done"
            ),
        ]
        indexes = [models.Index(fields=["labeler", "-created_at"], name="ai_audit_labeler_recent")]

    def __str__(self) -> str:
        return f"audit of {self.labeler} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in (RunStatus.QUEUED, RunStatus.RUNNING)


class RouterVersion(models.Model):
    """One routing of a project: the router trained (or the cold-start rule), its calibration
    figures, its feature weights and the resulting routed counts."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="routers")
    version = models.PositiveIntegerField()
    strategy = models.CharField(max_length=32, default="disagreement")
    learned = models.BooleanField(default=False, help_text="False: cold start, routed by AI confidence.")
    budget = models.PositiveIntegerField(default=0)
    counts = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, blank=True)
    feature_weights = models.JSONField(default=list, blank=True, help_text="[[feature, weight], ...], largest first")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="router_version_unique")]

    def __str__(self) -> str:
        return f"{self.project.slug} router v{self.version}"
