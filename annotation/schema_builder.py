"""The schema builder of the New-project and project-settings pages: form fields <-> schema <-> YAML.

The builder is rendered by the server from a `BuilderState` and posted back whole (htmx, on every
change), so the browser keeps no model of the schema: the pydantic `JudgmentSchema` is the one
definition of what is valid, and the YAML shown next to the builder is written from the same
state. Either side can be the one the curator edits; the page says which (`schema_from`), and
what is saved is what that side says (`schema_from_post`).

Builder fields are prefixed `b-` so they never meet the page's own form fields. Lists (strengths,
aspects, categories) are parallel `getlist` fields: text and number inputs are always posted, so
the lists stay aligned; there are no per-row checkboxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml
from django.http import QueryDict

from annotation.schema import JudgmentSchema, ValidationError, format_validation_error

KINDS = [("pairwise", "Pairwise (A vs B)"), ("ranking", "Ranking of k responses"), ("none", "No overall question")]
JUSTIFICATIONS = ["optional", "required", "hidden"]
MAX_STRENGTHS = 5


@dataclass
class AspectRow:
    name: str = ""
    description: str = ""
    min: int | str = 1
    max: int | str = 5
    labels: dict[str, str] = field(default_factory=dict)  # kept from YAML; the builder does not edit them

    @property
    def labels_json(self) -> str:
        return json.dumps(self.labels) if self.labels else ""


@dataclass
class CategoryRow:
    name: str = ""
    description: str = ""


@dataclass
class BuilderState:
    kind: str = "pairwise"
    strengths: list[str] = field(default_factory=lambda: ["better", "much better"])
    allow_tie: bool = True
    justification: str = "optional"
    k: int | str = 3
    allow_ties: bool = False
    aspects: list[AspectRow] = field(default_factory=list)
    rubric_required: bool = True
    categories: list[CategoryRow] = field(default_factory=list)
    spans_required: bool = False

    def apply(self, action: str) -> None:
        """A structural edit from one of the builder's buttons ('add-aspect', 'remove-aspect-2'...)."""
        verb, _, rest = action.partition("-")
        what, _, index = rest.partition("-")
        lists: dict[str, list[str] | list[AspectRow] | list[CategoryRow]] = {
            "strength": self.strengths,
            "aspect": self.aspects,
            "category": self.categories,
        }
        rows = lists.get(what)
        if rows is None:
            return
        if verb == "add":
            if what == "strength" and len(rows) < MAX_STRENGTHS:
                self.strengths.append(f"level {len(rows) + 1}")
            elif what == "aspect":
                self.aspects.append(AspectRow(name=f"aspect_{len(rows) + 1}"))
            elif what == "category":
                self.categories.append(CategoryRow(name=f"category {len(rows) + 1}"))
        elif verb == "remove" and index.isdigit() and int(index) < len(rows):
            del rows[int(index)]

    def to_schema(self) -> dict[str, Any]:
        """The schema this state describes, as plain data (not yet validated)."""
        schema: dict[str, Any] = {}
        if self.kind == "pairwise":
            schema["pairwise"] = {
                "strengths": list(self.strengths),
                "allow_tie": self.allow_tie,
                "justification": self.justification,
            }
        elif self.kind == "ranking":
            schema["ranking"] = {"k": self.k, "allow_ties": self.allow_ties}
        if self.aspects:
            aspects = []
            for a in self.aspects:
                aspect: dict[str, Any] = {"name": a.name}
                if a.description:
                    aspect["description"] = a.description
                scale: dict[str, Any] = {"min": a.min, "max": a.max}
                labels = _labels_within(a)
                if labels:
                    scale["labels"] = labels
                aspect["scale"] = scale
                aspects.append(aspect)
            schema["rubric"] = {"aspects": aspects, "required": self.rubric_required}
        if self.categories:
            categories = [
                {"name": c.name, **({"description": c.description} if c.description else {})} for c in self.categories
            ]
            schema["spans"] = {"categories": categories, "required": self.spans_required}
        return schema


def _labels_within(a: AspectRow) -> dict[int, str]:
    """Scale labels read from YAML, those still inside the scale the builder now says."""
    labels = {int(k): v for k, v in a.labels.items() if str(k).lstrip("-").isdigit()}
    if isinstance(a.min, int) and isinstance(a.max, int):
        labels = {k: v for k, v in labels.items() if a.min <= k <= a.max}
    return labels


def state_from_schema(schema: JudgmentSchema) -> BuilderState:
    state = BuilderState(kind="none", strengths=[], aspects=[], categories=[])
    if schema.pairwise:
        state.kind = "pairwise"
        state.strengths = list(schema.pairwise.strengths)
        state.allow_tie = schema.pairwise.allow_tie
        state.justification = schema.pairwise.justification
    else:
        state.strengths = BuilderState().strengths
    if schema.ranking:
        state.kind = "ranking"
        state.k, state.allow_ties = schema.ranking.k, schema.ranking.allow_ties
    if schema.rubric:
        state.rubric_required = schema.rubric.required
        state.aspects = [
            AspectRow(
                name=a.name,
                description=a.description,
                min=a.scale.min,
                max=a.scale.max,
                labels={str(k): v for k, v in a.scale.labels.items()},
            )
            for a in schema.rubric.aspects
        ]
    if schema.spans:
        state.spans_required = schema.spans.required
        state.categories = [CategoryRow(name=c.name, description=c.description) for c in schema.spans.categories]
    return state


def _int_or_text(value: str) -> int | str:
    value = value.strip()
    try:
        return int(value)
    except ValueError:
        return value


def state_from_post(data: QueryDict) -> BuilderState:
    kinds = {k for k, _ in KINDS}
    justification = data.get("b-justification", "optional")
    names = data.getlist("b-aspect-name")
    descriptions = data.getlist("b-aspect-description")
    mins, maxes, labels = data.getlist("b-aspect-min"), data.getlist("b-aspect-max"), data.getlist("b-aspect-labels")
    aspects = []
    for i, name in enumerate(names):
        try:
            row_labels = json.loads(labels[i]) if i < len(labels) and labels[i] else {}
        except ValueError:
            row_labels = {}
        aspects.append(
            AspectRow(
                name=name.strip(),
                description=descriptions[i].strip() if i < len(descriptions) else "",
                min=_int_or_text(mins[i]) if i < len(mins) else 1,
                max=_int_or_text(maxes[i]) if i < len(maxes) else 5,
                labels=row_labels if isinstance(row_labels, dict) else {},
            )
        )
    cat_names, cat_descriptions = data.getlist("b-category-name"), data.getlist("b-category-description")
    categories = [
        CategoryRow(name=n.strip(), description=cat_descriptions[i].strip() if i < len(cat_descriptions) else "")
        for i, n in enumerate(cat_names)
    ]
    kind = data.get("b-kind", "")
    return BuilderState(
        kind=kind if kind in kinds else "pairwise",
        # No strength fields: the kind was not pairwise until this edit.
        strengths=[s.strip() for s in data.getlist("b-strength")][:MAX_STRENGTHS] or BuilderState().strengths,
        allow_tie=data.get("b-allow-tie") == "on",
        justification=justification if justification in JUSTIFICATIONS else "optional",
        k=_int_or_text(data.get("b-k", "3")),
        allow_ties=data.get("b-allow-ties") == "on",
        aspects=aspects,
        rubric_required=data.get("b-rubric-required") == "on",
        categories=categories,
        spans_required=data.get("b-spans-required") == "on",
    )


# ---------------------------------------------------------------------------------------------
# YAML, both ways


class SchemaTextError(ValueError):
    """Schema text that does not parse or does not validate, with a readable, located reason."""


def validate(data: Any) -> JudgmentSchema:
    if not isinstance(data, dict):
        raise SchemaTextError("a schema is a mapping with at least one of pairwise, ranking, rubric, spans")
    try:
        return JudgmentSchema.model_validate(data)
    except ValidationError as exc:
        raise SchemaTextError(format_validation_error(exc)) from None


def parse_text(text: str) -> Any:
    """YAML (or JSON, which is YAML) to data; a syntax error names its line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise SchemaTextError(f"not valid YAML: {where}{problem}") from None


def to_yaml(schema: dict[str, Any]) -> str:
    return yaml.safe_dump(schema, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def schema_yaml(schema: JudgmentSchema) -> str:
    """A valid schema as the builder writes it (the state's own form, empty fields left out)."""
    return to_yaml(state_from_schema(schema).to_schema())


@dataclass
class SchemaInput:
    """What the page's schema controls say: the state to show, the YAML to show, the schema (if
    valid) and the error (if not)."""

    state: BuilderState
    text: str
    schema: JudgmentSchema | None
    error: str = ""

    @property
    def error_lines(self) -> list[str]:
        return [part for part in self.error.split("; ") if part]


def schema_from_post(data: QueryDict, *, action: str = "") -> SchemaInput:
    """Read the builder or the YAML, whichever `schema_from` names as the one last edited, and
    bring the other in line with it (the YAML is rewritten from the builder; the builder is
    re-read from valid YAML, and left as posted when the YAML does not parse)."""
    text = data.get("schema", "")
    if data.get("schema_from") == "builder":
        state = state_from_post(data)
        if action:
            state.apply(action)
        raw = state.to_schema()
        try:
            return SchemaInput(state, to_yaml(raw), validate(raw))
        except SchemaTextError as exc:
            return SchemaInput(state, to_yaml(raw), None, str(exc))
    try:
        schema = validate(parse_text(text))
    except SchemaTextError as exc:
        return SchemaInput(state_from_post(data) if "b-kind" in data else BuilderState(), text, None, str(exc))
    return SchemaInput(state_from_schema(schema), text, schema)


def schema_from_stored(schema: JudgmentSchema) -> SchemaInput:
    return SchemaInput(state_from_schema(schema), schema_yaml(schema), schema)


DEFAULT_SCHEMA = JudgmentSchema.model_validate(
    {
        "pairwise": {"strengths": ["better", "much better"], "allow_tie": True, "justification": "optional"},
        "rubric": {
            "aspects": [
                {"name": "helpfulness", "description": "Does it address the request?", "scale": {"min": 1, "max": 5}},
                {"name": "correctness", "description": "Is every claim true?", "scale": {"min": 1, "max": 5}},
            ]
        },
    }
)
