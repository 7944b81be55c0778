"""The judgment schema of a project and the payload of a judgment, validated at the edge.

These pydantic models are the single description of both formats: the project spec files,
the import reader, the annotation UI and the AI labelers all validate through them.

A schema combines kinds: `pairwise` or `ranking` (not both), plus optionally a `rubric`
(per-response aspect ratings) and `spans` (error marks with categories on response text).

Payload conventions (response indexes always refer to the stored order of `Item.responses`,
never to the order shown on screen):
- pairwise: {"choice": "A" | "B" | "tie", "strength": 1..len(strengths)} (0 for a tie)
- ranking: ranks per response, 1 = best; equal ranks are ties (only where allowed)
- rubric: one {aspect: score} mapping per response
- spans: [{"response": i, "start": s, "end": e, "category": c}] with character offsets
  into the stored response text, `start` inclusive and `end` exclusive

Stored payloads (a judgment's, an item's gold answer) are read back through one typed view of the
same shape, `JudgmentRead.from_stored(payload)`, rather than as nested dicts: `JudgmentPayload`
checks a payload on the way in, `JudgmentRead` reads what was stored, parts missing or malformed
read as absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "FineGrainedRead",
    "JudgmentPayload",
    "JudgmentRead",
    "JudgmentSchema",
    "PairwiseRead",
    "PayloadError",
    "RankingRead",
    "SpanRead",
    "ValidationError",
    "format_validation_error",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PairwiseSpec(_Strict):
    """A/B preference: a choice plus a strength level; ties optional."""

    strengths: list[str] = Field(default_factory=lambda: ["better", "much better"], min_length=1, max_length=5)
    allow_tie: bool = True
    justification: Literal["required", "optional", "hidden"] = "optional"

    def options(self) -> list[tuple[str, int, str]]:
        """(choice, strength, label) from 'A much better' through 'tie' to 'B much better'."""
        a = [("A", s, f"A {label}") for s, label in reversed(list(enumerate(self.strengths, start=1)))]
        b = [("B", s, f"B {label}") for s, label in enumerate(self.strengths, start=1)]
        return a + ([("tie", 0, "Tie")] if self.allow_tie else []) + b


class RankingSpec(_Strict):
    """Order K responses, best first."""

    k: int = Field(ge=2, le=10)
    allow_ties: bool = False


class Scale(_Strict):
    min: int = 1
    max: int = 5
    labels: dict[int, str] = Field(
        default_factory=dict, json_schema_extra={"propertyNames": {"pattern": r"^-?[0-9]+$"}}
    )

    @model_validator(mode="after")
    def _check(self) -> Scale:
        if self.max <= self.min:
            raise ValueError("scale max must be greater than min")
        if self.max - self.min > 10:
            raise ValueError("a scale has at most 11 points")
        stray = [k for k in self.labels if not self.min <= k <= self.max]
        if stray:
            raise ValueError(f"scale labels outside {self.min}..{self.max}: {stray}")
        return self


class Aspect(_Strict):
    name: str = Field(json_schema_extra={"pattern": _NAME_RE.pattern})  # the published schema says it
    description: str = ""
    scale: Scale = Field(default_factory=Scale)

    @property
    def scale_values(self) -> list[dict[str, Any]]:
        return [{"value": v, "label": self.scale.labels.get(v, "")} for v in range(self.scale.min, self.scale.max + 1)]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("aspect names are lowercase identifiers (letters, digits, underscore)")
        return v


class RubricSpec(_Strict):
    aspects: list[Aspect] = Field(min_length=1, max_length=20)
    required: bool = True

    @field_validator("aspects")
    @classmethod
    def _unique(cls, v: list[Aspect]) -> list[Aspect]:
        names = [a.name for a in v]
        if len(set(names)) != len(names):
            raise ValueError("aspect names must be unique")
        return v


class SpanCategory(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""


class SpansSpec(_Strict):
    categories: list[SpanCategory] = Field(min_length=1, max_length=30)
    required: bool = False

    @field_validator("categories")
    @classmethod
    def _unique(cls, v: list[SpanCategory]) -> list[SpanCategory]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("span category names must be unique")
        return v


class PairwiseAnswer(_Strict):
    choice: Literal["A", "B", "tie"]
    strength: int = Field(ge=0)

    @property
    def signed(self) -> int:
        """Preference on one axis: negative favours A, positive favours B, 0 is a tie."""
        return {"A": -1, "B": 1, "tie": 0}[self.choice] * self.strength


class SpanMark(_Strict):
    response: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    category: str
    note: str = ""


class PayloadError(ValueError):
    """A payload that does not fit the project's schema or the item."""


class JudgmentPayload(_Strict):
    pairwise: PairwiseAnswer | None = None
    ranking: list[int] | None = None
    rubric: list[dict[str, int]] | None = None
    spans: list[SpanMark] = Field(default_factory=list)
    justification: str = Field(default="", max_length=20_000)


# ---------------------------------------------------------------------------------------------
# The read model: stored payloads, typed.

_SIGN = {"A": -1, "B": 1, "tie": 0}


@dataclass(frozen=True)
class PairwiseRead:
    """A stored pairwise answer. `choice` is "A", "B" or "tie" in stored payloads (the answer as
    stored, so "A" is stored response 0); `strength` is None where the stored value is no integer."""

    choice: str
    strength: int | None

    @property
    def sign(self) -> int:
        """-1 favours stored response 0 ("A"), 1 favours response 1 ("B"), 0 a tie."""
        return _SIGN[self.choice]

    @property
    def signed(self) -> int:
        """Preference on one axis: the sign times the strength."""
        return self.sign * (self.strength or 0)


@dataclass(frozen=True)
class RankingRead:
    """A stored ranking: one rank per response in stored order, 1 = best."""

    ranks: tuple[int, ...]


@dataclass(frozen=True)
class SpanRead:
    response: int
    start: int
    end: int
    category: str
    note: str = ""


@dataclass(frozen=True)
class FineGrainedRead:
    """The per-response parts of a stored answer: rubric ratings (one mapping per response, None
    where the answer has none) and span marks."""

    rubric: tuple[dict[str, int], ...] | None = None
    spans: tuple[SpanRead, ...] = ()


@dataclass(frozen=True)
class JudgmentRead:
    """A stored judgment payload (or gold answer), read: each kind present or None."""

    pairwise: PairwiseRead | None = None
    ranking: RankingRead | None = None
    fine: FineGrainedRead = FineGrainedRead()
    justification: str = ""

    @classmethod
    def from_stored(cls, payload: object) -> JudgmentRead:
        """Read a payload as stored (a dict from a JSON column). Nothing here raises: a part that is
        missing, empty or not of its shape reads as absent."""
        if not isinstance(payload, Mapping):
            return cls()
        pairwise = None
        raw = payload.get("pairwise")
        if isinstance(raw, Mapping) and isinstance(choice := raw.get("choice"), str):
            strength = raw.get("strength")
            pairwise = PairwiseRead(choice, strength if type(strength) is int else None)
        ranks = payload.get("ranking")
        ranking = RankingRead(tuple(ranks)) if isinstance(ranks, list) and ranks else None
        ratings = payload.get("rubric")
        rubric = None
        if isinstance(ratings, list) and ratings:
            rubric = tuple(r if isinstance(r, dict) else {} for r in ratings)
        marks = payload.get("spans")
        spans = tuple(
            SpanRead(m["response"], m["start"], m["end"], m["category"], m.get("note", ""))
            for m in (marks if isinstance(marks, list) else [])
            if isinstance(m, Mapping) and {"response", "start", "end", "category"} <= m.keys()
        )
        justification = payload.get("justification")
        return cls(
            pairwise=pairwise,
            ranking=ranking,
            fine=FineGrainedRead(rubric, spans),
            justification=justification if isinstance(justification, str) else "",
        )

    @property
    def preference_sign(self) -> int | None:
        """Which of the first two stored responses the answer prefers: -1 the first, 1 the second,
        0 neither (a tie, or equal ranks); None when it gives no preference."""
        if self.pairwise is not None:
            return self.pairwise.sign
        if self.ranking is not None and len(r := self.ranking.ranks) >= 2:
            return (r[0] > r[1]) - (r[0] < r[1])
        return None


def _given(*kinds: str) -> dict[str, Any]:
    return {"required": list(kinds), "properties": {k: {"type": "object"} for k in kinds}}


class JudgmentSchema(_Strict):
    # The published JSON Schema states the rule below too: at least one kind, never pairwise with ranking.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "anyOf": [_given(k) for k in ("pairwise", "ranking", "rubric", "spans")],
            "not": _given("pairwise", "ranking"),
        },
    )

    pairwise: PairwiseSpec | None = None
    ranking: RankingSpec | None = None
    rubric: RubricSpec | None = None
    spans: SpansSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> JudgmentSchema:
        if not any((self.pairwise, self.ranking, self.rubric, self.spans)):
            raise ValueError("a schema needs at least one of pairwise, ranking, rubric, spans")
        if self.pairwise and self.ranking:
            raise ValueError("pairwise and ranking cannot be combined: a pairwise item is a ranking of 2")
        return self

    @property
    def kinds(self) -> list[str]:
        return [k for k in ("pairwise", "ranking", "rubric", "spans") if getattr(self, k) is not None]

    def response_count_error(self, n: int) -> str | None:
        """Why an item with `n` responses does not fit this schema, or None."""
        if n < 2 and (self.pairwise or self.ranking):
            return f"an item needs at least 2 responses, got {n}"
        if n < 1:
            return "an item needs at least 1 response"
        if self.pairwise and n != 2:
            return f"a pairwise project takes exactly 2 responses per item, got {n}"
        if self.ranking and n != self.ranking.k:
            return f"this ranking project takes exactly {self.ranking.k} responses per item, got {n}"
        if n > 16:
            return f"an item has at most 16 responses, got {n}"
        return None

    def validate_payload(self, data: dict[str, Any], responses: list[str], *, complete: bool = True) -> JudgmentPayload:
        """Parse and check a payload for an item whose response texts are `responses`.

        With `complete=False` (labels imported from a file) the payload is checked for consistency
        only: every answer it gives must fit the schema and the item, but what the project asks of
        its annotators on top (a justification, every rubric aspect, at least one span) may be
        missing, as long as it answers the question (the choice, the ranking, or for a project
        that asks nothing else, the rubric or spans)."""
        if not isinstance(data, dict):
            raise PayloadError("a judgment payload is a JSON object")
        try:
            payload = JudgmentPayload.model_validate(data)
        except ValidationError as exc:
            raise PayloadError(format_validation_error(exc)) from None
        n = len(responses)
        self._check_pairwise(payload, complete)
        self._check_ranking(payload, n)
        self._check_rubric(payload, n, complete)
        self._check_spans(payload, responses, complete)
        return payload

    def _check_pairwise(self, p: JudgmentPayload, complete: bool) -> None:
        spec = self.pairwise
        if spec is None:
            if p.pairwise is not None:
                raise PayloadError("this project has no pairwise question")
            return
        if p.pairwise is None:
            raise PayloadError("a pairwise choice is required")
        if p.pairwise.choice == "tie":
            if not spec.allow_tie:
                raise PayloadError("this project does not allow ties")
            if p.pairwise.strength != 0:
                raise PayloadError("a tie has strength 0")
        elif not 1 <= p.pairwise.strength <= len(spec.strengths):
            raise PayloadError(f"strength must be between 1 and {len(spec.strengths)}")
        if complete and spec.justification == "required" and not p.justification.strip():
            raise PayloadError("a justification is required")

    def _check_ranking(self, p: JudgmentPayload, n: int) -> None:
        spec = self.ranking
        if spec is None:
            if p.ranking is not None:
                raise PayloadError("this project has no ranking question")
            return
        if p.ranking is None:
            raise PayloadError("a ranking is required")
        ranks = p.ranking
        if len(ranks) != n:
            raise PayloadError(f"a ranking gives one rank per response: expected {n}, got {len(ranks)}")
        if any(not 1 <= r <= n for r in ranks):
            raise PayloadError(f"ranks go from 1 (best) to {n}")
        distinct = sorted(set(ranks))
        if not spec.allow_ties and len(distinct) != n:
            raise PayloadError("this project does not allow ties in rankings")
        if distinct != list(range(1, len(distinct) + 1)):
            raise PayloadError("ranks must be dense: 1, 2, 3 ... with no gaps")

    def _check_rubric(self, p: JudgmentPayload, n: int, complete: bool) -> None:
        spec = self.rubric
        if spec is None:
            if p.rubric is not None:
                raise PayloadError("this project has no rubric")
            return
        if p.rubric is None:
            if spec.required and (complete or not self._answered(p, "rubric")):
                raise PayloadError("rubric ratings are required")
            return
        if len(p.rubric) != n:
            raise PayloadError(f"rubric ratings are given per response: expected {n}, got {len(p.rubric)}")
        aspects = {a.name: a for a in spec.aspects}
        for i, ratings in enumerate(p.rubric):
            unknown = set(ratings) - set(aspects)
            if unknown:
                raise PayloadError(f"unknown rubric aspect(s) for response {i}: {sorted(unknown)}")
            missing = set(aspects) - set(ratings)
            if complete and spec.required and missing:
                raise PayloadError(f"missing rubric aspect(s) for response {i}: {sorted(missing)}")
            for name, value in ratings.items():
                scale = aspects[name].scale
                if not scale.min <= value <= scale.max:
                    raise PayloadError(f"{name} for response {i} must be between {scale.min} and {scale.max}")

    def _check_spans(self, p: JudgmentPayload, responses: list[str], complete: bool) -> None:
        spec = self.spans
        if spec is None:
            if p.spans:
                raise PayloadError("this project has no span marking")
            return
        categories = {c.name for c in spec.categories}
        for mark in p.spans:
            if mark.response >= len(responses):
                raise PayloadError(f"span refers to response {mark.response}, the item has {len(responses)}")
            if mark.category not in categories:
                raise PayloadError(f"unknown span category {mark.category!r}")
            length = len(responses[mark.response])
            if not mark.start < mark.end <= length:
                raise PayloadError(
                    f"span {mark.start}..{mark.end} is not inside response {mark.response} (length {length})"
                )
        if spec.required and not p.spans and (complete or not self._answered(p, "spans")):
            raise PayloadError("at least one span mark is required")

    def _answered(self, p: JudgmentPayload, besides: str) -> bool:
        """Whether the payload answers a question of the schema other than `besides`."""
        given = {"pairwise": p.pairwise is not None, "ranking": p.ranking is not None}
        given |= {"rubric": p.rubric is not None, "spans": bool(p.spans)}
        return any(given[kind] for kind in self.kinds if kind != besides)


def format_validation_error(exc: ValidationError) -> str:
    """One readable line per problem: 'field.path: message'."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "value"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
