"""The state of one pass: an item as loaded with its judgments, and the export's context."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from annotation.models import GuidelinesVersion, LabelSource, Project, SchemaVersion, source_of_kind
from annotation.schema import JudgmentSchema
from curation.consensus import Consensus
from curation.export.filters import ExportFilters, pseudonym
from models_srv.data import held_out


@dataclass(frozen=True)
class JudgmentRow:
    """One judgment, as loaded for the export."""

    id: int
    uuid: str
    labeler_id: int
    kind: str
    payload: dict[str, Any]
    response_order: list[int] | None
    time_spent_ms: int | None
    confidence: float | None
    schema_version: int
    guidelines_version: int | None
    created_at: datetime

    @property
    def source(self) -> str:
        return source_of_kind(self.kind).value

    @property
    def weight(self) -> float:
        return 1.0 if self.source != LabelSource.AI or self.confidence is None else float(self.confidence)


@dataclass
class ExportItem:
    id: int
    external_id: str
    prompt: Any  # str, or a list of {role, content} in chat mode
    prompt_text: str  # the stored text prompt (a chat prompt's transcript)
    texts: list[str]
    models: list[str]
    split: str
    curation: str | None
    judgments: list[JudgmentRow]
    flagged: bool = False
    label_source: str = ""
    consensus: Consensus | None = None
    ranking: tuple[list[float], float] | None = None


def select_judgments(judgments: list[JudgmentRow], source: str) -> tuple[list[JudgmentRow], str]:
    """The judgments the `label_source` filter keeps, and the source(s) they came from."""
    by_source = {s: [j for j in judgments if j.source == s] for s in LabelSource.values}
    if source in by_source:
        return by_source[source], source
    if source == "consensus":
        first = next((s for s in LabelSource.values if by_source[s]), LabelSource.AI.value)
        return by_source[first], first
    return judgments, "+".join(s for s in LabelSource.values if by_source[s])


# ---------------------------------------------------------------------------------------------
# The pass over the project


@dataclass
class Context:
    project: Project
    schema: JudgmentSchema
    filters: ExportFilters
    cutoff: datetime
    chat: bool
    guidelines_version: int | None
    schema_version: int | None
    # The app's training defaults: which items a run holds out, and the margin per strength level.
    eval_seed: int
    eval_fraction: float
    margin_scale: float
    skipped: Counter[str] = field(default_factory=Counter)
    _pseudonyms: dict[int, str] = field(default_factory=dict)

    @property
    def aspects(self) -> list[str]:
        return [a.name for a in self.schema.rubric.aspects] if self.schema.rubric else []

    @property
    def categories(self) -> list[str]:
        return [c.name for c in self.schema.spans.categories] if self.schema.spans else []

    def held_out(self, item: ExportItem) -> bool:
        return held_out(
            split=item.split, external_id=item.external_id, seed=self.eval_seed, fraction=self.eval_fraction
        )

    def pseudonym(self, labeler_id: int) -> str:
        if labeler_id not in self._pseudonyms:
            self._pseudonyms[labeler_id] = pseudonym(self.project.slug, labeler_id)
        return self._pseudonyms[labeler_id]


@dataclass
class ExportResult:
    files: list[dict[str, Any]]
    counts: dict[str, Any]


def schema_at(project: Project, cutoff: datetime) -> tuple[JudgmentSchema, int | None, int | None]:
    """The schema and guidelines versions in force at the cutoff (the current ones as a fallback)."""
    sv = SchemaVersion.objects.filter(project=project, created_at__lte=cutoff).order_by("-version").first()
    gv = GuidelinesVersion.objects.filter(project=project, created_at__lte=cutoff).order_by("-version").first()
    schema = JudgmentSchema.model_validate(sv.schema if sv else project.schema)
    return (
        schema,
        sv.version if sv else project.schema_version,
        gv.version if gv else project.guidelines_version,
    )
