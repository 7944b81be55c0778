"""What a snapshot takes: its filters, its formats, and the errors that refuse them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from annotation.schema import JudgmentSchema, format_validation_error

FORMATS = ("pairs", "listwise", "rubric", "spans", "raw")
NEEDS = {"pairs": "pairwise", "listwise": "ranking", "rubric": "rubric", "spans": "spans"}


class ExportError(ValueError):
    """Filters or formats that cannot be exported, with a readable reason."""


class ExportFilters(BaseModel):
    """Which items and judgments a snapshot takes. Stored on the snapshot as JSON.

    - `label_source` (see `annotation.models.LabelSource`): `human` (annotators' judgments made
      here), `imported` (labels imported with the items), `ai` (AI labelers), `consensus` (an
      item's annotators' judgments when it has any, else its imported labels, else its AI
      judgments) or `all` (every source pooled; AI votes weighted by their confidence).
    - `min_agreement`: the consensus's share of the top pairwise label, or Kendall's W for
      rankings; `min_strength`: the consensus's mean strength (pairwise only). Items below are
      left out of every format.
    - `exclude_flagged`: leave out items an annotator flagged; `exclude_dropped`: leave out items
      whose curation state is `drop`.
    - `splits`: the project's splits to take (empty = all); `date_from` / `date_to`: judgments
      made on these days (UTC, both inclusive); `labelers`: only these labelers' judgments (ids).
    - `group_source`: a finished pluralistic reward-model version of the project (its uuid) whose
      preference groups the export reads; `group_mode` what it does with them: `pooled` (every
      group together, as without a source), `one` (only the judgments of `group`'s members),
      `split` (one consensus per group: a `pairs` row per item and group, with its `group`) or
      `weighted` (each judgment weighted by its annotator's group confidence in the consensus).
      With a source, `raw` rows carry each judgment's `group` and `group_confidence`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    label_source: Literal["human", "imported", "ai", "consensus", "all"] = "human"
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    min_strength: float | None = Field(default=None, ge=0)
    exclude_flagged: bool = False
    exclude_dropped: bool = True
    splits: list[Literal["train", "eval"]] = Field(default_factory=list)
    date_from: date | None = None
    date_to: date | None = None
    labelers: list[int] | None = None
    group_source: str | None = None
    group_mode: Literal["pooled", "one", "split", "weighted"] = "pooled"
    group: int | None = Field(default=None, ge=1)

    @field_validator("splits")
    @classmethod
    def _splits(cls, v: list[str]) -> list[str]:
        return sorted(set(v))

    @field_validator("labelers")
    @classmethod
    def _labelers(cls, v: list[int] | None) -> list[int] | None:
        return sorted(set(v)) or None if v is not None else None  # an empty list means everyone

    @model_validator(mode="after")
    def _range(self) -> ExportFilters:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError("date_from is after date_to")
        if self.group_source is None and (self.group_mode != "pooled" or self.group is not None):
            raise ValueError("group_mode and group need a group_source (a pluralistic reward-model version)")
        if self.group_mode == "one" and self.group is None:
            raise ValueError("group_mode 'one' needs the group to keep")
        if self.group is not None and self.group_mode != "one":
            raise ValueError("a group is chosen only with group_mode 'one'")
        return self

    @classmethod
    def parse(cls, data: ExportFilters | Mapping[str, Any] | None) -> ExportFilters:
        if isinstance(data, ExportFilters):
            return data
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as exc:
            raise ExportError(format_validation_error(exc)) from None

    def to_json(self) -> dict[str, Any]:
        """As stored and printed on the card; without a group source, no group keys (so exports
        that name none read as they did before groups existed)."""
        out = self.model_dump(mode="json")
        if self.group_source is None:
            for key in ("group_source", "group_mode", "group"):
                out.pop(key)
        return out


def parse_formats(formats: Iterable[str] | str, schema: JudgmentSchema | None = None) -> list[str]:
    """Formats in canonical order, checked against the project's schema ("pairs,raw" works too)."""
    names = [f.strip().lower() for f in ([formats] if isinstance(formats, str) else formats)]
    names = [p for f in names for p in f.split(",") if p.strip()]
    names = [n.strip() for n in names]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(unknown)}; use {', '.join(FORMATS)}")
    if not names:
        raise ExportError(f"choose at least one format: {', '.join(FORMATS)}")
    if schema is not None:
        for name in names:
            need = NEEDS.get(name)
            if need and getattr(schema, need) is None:
                raise ExportError(f"the {name} format needs a {need} question in the project's schema")
    return [f for f in FORMATS if f in names]


# ---------------------------------------------------------------------------------------------
# What one item contributes
