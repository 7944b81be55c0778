"""Projects, items, labelers, assignments and judgments.

Invariants live in the database: external ids are unique per project, a labeler (human or AI)
judges an item at most once, an annotator is assigned an item at most once, and every state
column only takes its listed values.
"""

from __future__ import annotations

import json
import uuid
from functools import cached_property

from django.conf import settings
from django.db import models
from django.db.models import Q

from annotation.schema import JudgmentSchema


def _choices_check(field: str, choices: type[models.TextChoices], name: str) -> models.CheckConstraint:
    return models.CheckConstraint(condition=Q(**{f"{field}__in": choices.values}), name=name)


class RoutingPolicy(models.TextChoices):
    ALL_HUMAN = "all_human", "All items to humans"
    ALL_AI = "all_ai", "All items to AI labelers"
    LEARNED = "learned", "Learned router: predicted AI-vs-human disagreement, under the budget"
    PERFORMANCE = (
        "performance",
        "Learned router: predicted reward-model gain (performance prediction), under the budget",
    )


class MembershipRole(models.TextChoices):
    CURATOR = "curator", "Curator"
    ANNOTATOR = "annotator", "Annotator"


class ImportJobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class ImportJobSource(models.TextChoices):
    UPLOAD = "upload", "Upload page"
    API = "api", "HTTP API"
    COMMAND = "command", "Management command"


class ItemStatus(models.TextChoices):
    OPEN = "open", "Open"
    DONE = "done", "Done"
    DROPPED = "dropped", "Dropped"


class ItemSplit(models.TextChoices):
    TRAIN = "train", "Train"
    EVAL = "eval", "Eval"


class LabelerKind(models.TextChoices):
    HUMAN = "human", "Human annotator"
    IMPORTED = "imported", "Imported labels"
    LLM = "llm", "LLM judge"
    REWARD_MODEL = "reward_model", "Reward-model judge"
    DENSITY_RATIO = "density_ratio", "Density-ratio judge"


class LabelSource(models.TextChoices):
    """Where a judgment comes from: the one definition of "human judgment" and its two neighbours.

    Only `human` judgments, made by annotators through this app's queue, are human work: they fill
    an item's overlap (`Item.human_count`), spend the human budget and calibrate the router.
    `imported` labels came in a file: kept, exported and trainable, but a source of their own,
    never counted as work done here. Every filter by source goes through `source_q`."""

    HUMAN = "human", "Annotators"
    IMPORTED = "imported", "Imported"
    AI = "ai", "AI labelers"


_SOURCE_KINDS: dict[str, tuple[str, ...]] = {
    LabelSource.HUMAN: (LabelerKind.HUMAN,),
    LabelSource.IMPORTED: (LabelerKind.IMPORTED,),
    LabelSource.AI: (LabelerKind.LLM, LabelerKind.REWARD_MODEL, LabelerKind.DENSITY_RATIO),
}
assert sorted(k for kinds in _SOURCE_KINDS.values() for k in kinds) == sorted(LabelerKind.values)


def source_of_kind(kind: str) -> LabelSource:
    """The source of a labeler kind."""
    for source, kinds in _SOURCE_KINDS.items():
        if kind in kinds:
            return LabelSource(source)
    raise ValueError(f"unknown labeler kind {kind!r}")


def source_q(*sources: str, labeler: str = "labeler__") -> Q:
    """Judgments (or, with another `labeler` path, rows reaching a labeler) from these sources:
    `source_q("human")` on Judgment, `source_q("human", labeler="judgments__labeler__")` on Item,
    `source_q("ai", labeler="")` on Labeler."""
    kinds = [k for s in sources for k in _SOURCE_KINDS[LabelSource(s)]]
    return Q(**{f"{labeler}kind__in": kinds})


class ItemRoute(models.TextChoices):
    HUMAN = "human", "Human annotators"
    AI = "ai", "AI labelers"
    BOTH = "both", "Both (calibration)"


class AssignmentState(models.TextChoices):
    LEASED = "leased", "Leased"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"
    EXPIRED = "expired", "Expired"


_PARSED_SCHEMAS: dict[str, JudgmentSchema] = {}


class Project(models.Model):
    RoutingPolicy = RoutingPolicy

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    guidelines_version = models.PositiveIntegerField(default=1)
    schema = models.JSONField(help_text="The current judgment schema (see annotation.schema).")
    schema_version = models.PositiveIntegerField(default=1)
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Human judgments wanted per item.")
    human_budget = models.FloatField(default=1.0, help_text="Share of items (0..1) that may go to humans.")
    calibration_share = models.FloatField(
        default=0.1, help_text="Share of items (0..1) labeled by both humans and AI, for the router to learn from."
    )
    gold_rate = models.FloatField(default=0.0, help_text="Share of served items that are gold checks.")
    lease_seconds = models.PositiveIntegerField(default=900)
    show_model_names = models.BooleanField(default=False)
    routing_policy = models.CharField(max_length=16, choices=RoutingPolicy.choices, default=RoutingPolicy.ALL_HUMAN)
    require_ai_audit = models.BooleanField(
        default=False,
        help_text="The router and the AI consensus use only AI labelers with a passing audit of their current config.",
    )
    autotrain_after = models.PositiveIntegerField(
        default=0, help_text="Retrain the reward model after this many new judgments (0 = never)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
            models.CheckConstraint(condition=Q(human_budget__gte=0, human_budget__lte=1), name="project_budget_range"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_range"),
            models.CheckConstraint(
                condition=Q(calibration_share__gte=0, calibration_share__lte=1), name="project_calibration_share_range"
            ),
            models.CheckConstraint(condition=Q(lease_seconds__gte=10), name="project_lease_min"),
            _choices_check("routing_policy", RoutingPolicy, "project_routing_policy_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @cached_property
    def schema_key(self) -> str:
        """The schema as canonical JSON: the key of what is worked out once per process for each
        distinct schema (its parsed form here, its answer controls in `annotation.views`)."""
        return json.dumps(self.schema, sort_keys=True)

    @cached_property
    def judgment_schema(self) -> JudgmentSchema:
        """The parsed schema. Parsed once per process for each distinct schema (it is frozen, so
        instances share it), not validated anew for every request's fresh Project."""
        key = self.schema_key
        parsed = _PARSED_SCHEMAS.get(key)
        if parsed is None:
            parsed = JudgmentSchema.model_validate(self.schema)
            if len(_PARSED_SCHEMAS) >= 256:  # schemas edited many times in a long-lived process
                _PARSED_SCHEMAS.clear()
            _PARSED_SCHEMAS[key] = parsed
        return parsed


class SchemaVersion(models.Model):
    """Every schema a project has had; judgments record the version they were made under."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="schema_versions")
    version = models.PositiveIntegerField()
    schema = models.JSONField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="schema_version_unique")]

    def __str__(self) -> str:
        return f"{self.project.slug} schema v{self.version}"


class GuidelinesVersion(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="guidelines_versions")
    version = models.PositiveIntegerField()
    text = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-version"]
        constraints = [models.UniqueConstraint(fields=["project", "version"], name="guidelines_version_unique")]

    def __str__(self) -> str:
        return f"{self.project.slug} guidelines v{self.version}"


class Membership(models.Model):
    Role = MembershipRole

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_unique"),
            _choices_check("role", MembershipRole, "membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class ImportJob(models.Model):
    Status = ImportJobStatus

    Source = ImportJobSource

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    source = models.CharField(max_length=16, choices=Source.choices)
    file = models.FileField(upload_to="imports/%Y/%m/", blank=True)
    original_name = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=16, blank=True, help_text="Forced format; blank = detect.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rows_read = models.PositiveIntegerField(default=0)
    items_created = models.PositiveIntegerField(default=0)
    items_existing = models.PositiveIntegerField(default=0)
    judgments_created = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Written while it runs (config/jobs.py).")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            _choices_check("status", ImportJobStatus, "import_job_status_valid"),
            _choices_check("source", ImportJobSource, "import_job_source_valid"),
        ]

    def __str__(self) -> str:
        return f"import {self.uuid} into {self.project.slug} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)


class Item(models.Model):
    Status = ItemStatus

    Split = ItemSplit
    Route = ItemRoute

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    external_id = models.CharField(max_length=255)
    prompt = models.TextField(help_text="Plain text; for chat prompts a readable transcript.")
    prompt_messages = models.JSONField(null=True, blank=True, help_text="Chat prompt as [{role, content}].")
    responses = models.JSONField(help_text="[{text, model}] in stored order.")
    num_responses = models.PositiveSmallIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    split = models.CharField(max_length=8, choices=Split.choices, default=Split.TRAIN)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    is_gold = models.BooleanField(default=False)
    gold_answer = models.JSONField(null=True, blank=True)
    human_count = models.PositiveIntegerField(
        default=0, help_text="Human judgments: annotators' answers through the queue (imported labels not counted)."
    )
    leased_count = models.PositiveIntegerField(default=0, help_text="Live leases holding a slot of the overlap.")
    extra_overlap = models.PositiveSmallIntegerField(
        default=0,
        db_default=0,
        help_text="Human judgments wanted beyond the project's overlap (a curator sent the item back).",
    )
    priority = models.FloatField(default=0.0, help_text="Higher is served first (the router's expected value).")
    route = models.CharField(max_length=8, choices=ItemRoute.choices, default=ItemRoute.HUMAN)
    route_info = models.JSONField(default=dict, blank=True, help_text="The routing decision: score, top features.")
    import_job = models.ForeignKey(ImportJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="item_external_id_unique"),
            models.CheckConstraint(condition=Q(num_responses__gte=1, num_responses__lte=16), name="item_num_responses"),
            _choices_check("status", ItemStatus, "item_status_valid"),
            _choices_check("split", ItemSplit, "item_split_valid"),
            _choices_check("route", ItemRoute, "item_route_valid"),
            models.CheckConstraint(condition=Q(is_gold=False) | Q(gold_answer__isnull=False), name="item_gold_answer"),
        ]
        indexes = [
            models.Index(fields=["project", "status", "id"], name="item_project_status"),
            # The progress strip's totals (items to judge, items done) counted from the index alone.
            models.Index(fields=["project", "status"], condition=Q(is_gold=False), name="item_totals"),
            models.Index(
                "project",
                models.F("priority").desc(),
                "id",
                name="item_queue",
                condition=Q(status="open", is_gold=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.external_id}"

    @property
    def response_texts(self) -> list[str]:
        return [r["text"] for r in self.responses]


class Labeler(models.Model):
    """Who made a judgment: a user of the app, a named annotator from an imported file, or an AI."""

    Kind = LabelerKind

    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="labeler"
    )
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="labelers",
        help_text="Imported and AI labelers belong to one project; a user's labeler to none.",
    )
    name = models.CharField(max_length=200)
    config = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            _choices_check("kind", LabelerKind, "labeler_kind_valid"),
            models.CheckConstraint(
                condition=(Q(kind="human", user__isnull=False, project__isnull=True))
                | (~Q(kind="human") & Q(user__isnull=True, project__isnull=False)),
                name="labeler_human_has_user",
            ),
            models.UniqueConstraint(
                fields=["project", "kind", "name", "version"],
                condition=Q(user__isnull=True),
                name="labeler_project_name_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def source(self) -> LabelSource:
        return source_of_kind(self.kind)

    @property
    def is_ai(self) -> bool:
        return self.source == LabelSource.AI

    @property
    def own_project(self) -> Project:
        """The project of an imported or AI labeler, which the database holds to one
        (`labeler_human_has_user`); a user's labeler belongs to none, and raises ValueError."""
        if self.project is None:
            raise ValueError(f"{self} is a user's labeler: it belongs to no project")
        return self.project


class Assignment(models.Model):
    """An item leased to one annotator. An expired lease returns the item to the queue."""

    State = AssignmentState

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    state = models.CharField(max_length=16, choices=State.choices, default=State.LEASED)
    response_order = models.JSONField(help_text="Stored response indexes in the order shown.")
    is_gold = models.BooleanField(default=False)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)
    flagged = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=500, blank=True)
    # What the annotator's page showed: the judgment is checked against and records these, not
    # whatever the project has by the time the answer arrives (None: leased before they existed).
    # IntegerField, not Positive...: adding a CHECK constraint would scan the whole table under
    # an exclusive lock, stopping annotation for the length of the scan.
    schema_version = models.IntegerField(null=True, blank=True)
    guidelines_version = models.IntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="assignment_item_annotator_unique"),
            _choices_check("state", AssignmentState, "assignment_state_valid"),
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("leased_at")), name="assignment_lease_order"),
        ]
        indexes = [
            models.Index(fields=["annotator", "state"], name="assignment_annotator_state"),
            models.Index(fields=["annotator", "finished_at"], name="assignment_annotator_finished"),
            models.Index(fields=["state", "expires_at"], name="assignment_state_expiry"),
            # The annotator's live lease, read on every hand-out: only leased rows, so the lookup
            # stays one probe however many items the annotator has finished.
            models.Index(fields=["annotator", "expires_at"], condition=Q(state="leased"), name="assignment_live_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.item} -> {self.annotator} ({self.state})"


class AnnotatorStats(models.Model):
    """An annotator's running counts in one project, for the progress strip of the annotate page.

    Kept by the queue in the transaction that submits or skips, so showing progress is one
    primary-key read, not a count over the annotator's history. The "today" counts belong to
    `day` (UTC) and start again at zero on the first action of a new day."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    judged = models.PositiveIntegerField(default=0, help_text="Judgments submitted in the project, ever.")
    judged_today = models.PositiveIntegerField(default=0)
    skipped_today = models.PositiveIntegerField(default=0)
    time_today_ms = models.BigIntegerField(default=0, help_text="Time spent on today's judgments.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="annotator_stats_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}: {self.judged} judged"


class Judgment(models.Model):
    """One labeler's answer on one item; human and AI judgments share this table."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="judgments")
    labeler = models.ForeignKey(Labeler, on_delete=models.PROTECT, related_name="judgments")
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="judgment"
    )
    payload = models.JSONField()
    schema_version = models.PositiveIntegerField()
    guidelines_version = models.PositiveIntegerField(null=True, blank=True)
    response_order = models.JSONField(null=True, blank=True, help_text="Order the responses were shown in.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    gold_score = models.FloatField(null=True, blank=True, help_text="Agreement with the gold answer (0..1).")
    raw_output = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "labeler"], name="judgment_item_labeler_unique"),
            models.CheckConstraint(
                condition=Q(confidence__isnull=True) | Q(confidence__gte=0, confidence__lte=1),
                name="judgment_confidence_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.labeler} on {self.item}"


class AuditEvent(models.Model):
    """One admin or curation action, appended by `annotation.audit.record` and never edited.

    The actor, project and target may be deleted later: the event keeps their ids and a readable
    `target_repr`, so the log still says who did what to which object."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, blank=True, help_text="The actor's username when it happened.")
    action = models.CharField(max_length=64, help_text="What happened, e.g. membership.add or curation.apply.")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    target_type = models.CharField(max_length=100, blank=True, help_text="app_label.model of the object acted on.")
    target_id = models.CharField(max_length=64, blank=True)
    target_repr = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"], name="audit_project_created"),
            models.Index(fields=["-created_at"], name="audit_created"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_name or 'system'} {self.action} {self.target_repr}".strip()
