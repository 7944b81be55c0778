"""The state of one pass: an item as loaded with its judgments, and the export's context."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from annotation.models import GuidelinesVersion, Project, SchemaVersion
from annotation.pseudonym import pseudonym
from annotation.schema import JudgmentSchema
from curation.consensus import Consensus
from curation.export.filters import ExportError, ExportFilters
from models_srv.data import held_out
from models_srv.selectors import PreferenceGroups


@dataclass(frozen=True, slots=True)
class JudgmentRow:
    """One judgment with its decoded payload, for the formats that read payloads judgment by
    judgment (rankings, rubric ratings, spans); the fast path never makes these."""

    labeler_id: int
    payload: dict[str, Any]


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
    group_consensus: dict[int, Consensus] | None = None  # group_mode split: each group's consensus
    held_out: bool | None = None  # set on first use by `Context.held_out`


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
    # The group source's map {labeler id: (group, confidence)} and its groups, when one is named.
    groups: dict[int, tuple[int, float]] | None = None
    group_numbers: tuple[int, ...] = ()
    group_version: int | None = None
    group_rows: Counter[str] = field(default_factory=Counter)  # pairs rows per group (split)
    _pseudonyms: dict[int, str] = field(default_factory=dict)

    @property
    def aspects(self) -> list[str]:
        return [a.name for a in self.schema.rubric.aspects] if self.schema.rubric else []

    @property
    def categories(self) -> list[str]:
        return [c.name for c in self.schema.spans.categories] if self.schema.spans else []

    def held_out(self, item: ExportItem) -> bool:
        if item.held_out is None:
            item.held_out = held_out(
                split=item.split, external_id=item.external_id, seed=self.eval_seed, fraction=self.eval_fraction
            )
        return item.held_out

    def pseudonym(self, labeler_id: int) -> str:
        if labeler_id not in self._pseudonyms:
            self._pseudonyms[labeler_id] = pseudonym(self.project.slug, labeler_id)
        return self._pseudonyms[labeler_id]

    def group_columns(self, labeler_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per judgment (its labeler id), the labeler's group in the group source (0: in no group)
        and their confidence in it (NaN then); `groups` must be set."""
        assert self.groups is not None
        labelers, which = np.unique(labeler_ids, return_inverse=True)
        found = [self.groups.get(int(lab), (0, float("nan"))) for lab in labelers.tolist()]
        group = np.array([g for g, _ in found], dtype=np.int64).reshape(-1)
        confidence = np.array([c for _, c in found], dtype=float).reshape(-1)
        return group[which], confidence[which]


def group_source(project: Project, filters: ExportFilters, schema: JudgmentSchema) -> PreferenceGroups | None:
    """The preference groups the filters name (None when they name no source); ExportError for a
    version that is not a finished pluralistic model of this project, a group it lacks, or a
    split by group of a schema without a pairwise question."""
    from models_srv.selectors import pluralistic_version_in

    if filters.group_source is None:
        return None
    found = pluralistic_version_in(project, filters.group_source)
    if found is None:
        raise ExportError(
            f"group_source {filters.group_source!r} is not a finished pluralistic reward-model version of this project"
        )
    numbers = [int(g["group"]) for g in found.groups]
    if filters.group is not None and filters.group not in numbers:
        raise ExportError(
            f"group {filters.group} is not one of the groups of version {found.version.version}: "
            + ", ".join(map(str, numbers))
        )
    if filters.group_mode == "split" and not schema.pairwise:
        raise ExportError("group_mode 'split' writes a pairwise consensus per group: the schema has no pairwise choice")
    return found


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
