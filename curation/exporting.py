"""Dataset export: filters, one streaming pass over a project, files per format and split.

`build_export` walks the project's items in id order (keyset pages of `chunk_items`), loads the
judgments of each page in one query, decides per item whether it is in the dataset (curation
state, flags, label source, agreement, strength) and hands each kept item to the writers of the
requested formats. Every writer streams: a JSONL line per row, and Parquet row groups of at most
`ROW_GROUP_ROWS` rows through `pyarrow.parquet.ParquetWriter` with an explicit schema, so memory
stays flat however large the project is.

Only judgments, curation actions and flags made at or before the snapshot's `cutoff` count, and
rows come out in a fixed order, so building the same filters and cutoff again gives
byte-identical JSONL and equal Parquet tables.

Formats (one folder each, one file per split and file type, e.g. `pairs/train.parquet`):
- `pairs`: TRL's preference format `prompt`, `chosen`, `rejected` (conversational message lists
  when the project has chat prompts), plus `margin`, `strength`, `agreement`, ...; written twice,
  as `pairs` and as `pairs_plain` (plain text, the dialogue as the app's default reward model reads
  it, for models without a chat template), both split `train` / `test` as the app splits training
  runs, `margin` as the app's objective has it (`_Pairs`)
- `listwise`: the responses of a ranking item in consensus order, with their mean ranks
- `rubric`: one row per response, one column per rubric aspect (mean score)
- `spans`: one row per response, its text and the span marks `{start, end, category, labeler}`
- `raw`: one row per judgment, with a pseudonymous labeler id (for pluralistic reward models)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from django.conf import settings
from django.db.models import Exists, OuterRef, Q
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from annotation.models import (
    Assignment,
    GuidelinesVersion,
    Item,
    Judgment,
    Labeler,
    LabelSource,
    Project,
    SchemaVersion,
    source_of_kind,
)
from annotation.schema import JudgmentSchema, format_validation_error
from curation.consensus import Consensus, pairwise_consensus, ranking_consensus, rubric_consensus
from curation.selectors import effective_action_kinds
from models_srv.data import held_out
from models_srv.engine import TrainConfig, dialogue_prompt, strength_margin

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportFilters",
    "ExportResult",
    "build_export",
    "bundle_export",
    "parse_formats",
    "pseudonym",
]

FORMATS = ("pairs", "listwise", "rubric", "spans", "raw")
NEEDS = {"pairs": "pairwise", "listwise": "ranking", "rubric": "rubric", "spans": "spans"}
ROW_GROUP_ROWS = 5_000
ROW_GROUP_BYTES = 32 * 1024 * 1024
CHUNK_ITEMS = 1_000
ZIP_LEVEL = 1  # JSONL deflates to about a fifth even at level 1, three times faster than the default 6


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
        return self.model_dump(mode="json")


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


def pseudonym(project_slug: str, labeler_id: int) -> str:
    """A stable pseudonymous annotator id: HMAC-SHA256(SECRET_KEY, "slug:labeler id"), 16 hex digits."""
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{project_slug}:{labeler_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# What one item contributes


@dataclass(frozen=True)
class _J:
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
class _Item:
    id: int
    external_id: str
    prompt: Any  # str, or a list of {role, content} in chat mode
    prompt_text: str  # the stored text prompt (a chat prompt's transcript)
    texts: list[str]
    models: list[str]
    split: str
    curation: str | None
    judgments: list[_J]
    flagged: bool = False
    label_source: str = ""
    consensus: Consensus | None = None
    ranking: tuple[list[float], float] | None = None


def _select(judgments: list[_J], source: str) -> tuple[list[_J], str]:
    """The judgments the `label_source` filter keeps, and the source(s) they came from."""
    by_source = {s: [j for j in judgments if j.source == s] for s in LabelSource.values}
    if source in by_source:
        return by_source[source], source
    if source == "consensus":
        first = next((s for s in LabelSource.values if by_source[s]), LabelSource.AI.value)
        return by_source[first], first
    return judgments, "+".join(s for s in LabelSource.values if by_source[s])


# ---------------------------------------------------------------------------------------------
# Format writers: each knows its Arrow schema and turns a kept item into rows


def _message_type() -> pa.DataType:
    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class _Format:
    name = ""

    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.schema = pa.schema(self.fields())

    def fields(self) -> list[tuple[str, pa.DataType]]:
        raise NotImplementedError

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def describe(self) -> str:
        return ""

    def split_of(self, item: _Item) -> str:
        """The split (file) the item's rows go to: the project's own split."""
        return item.split

    def common(self, item: _Item) -> dict[str, Any]:
        return {
            "item_id": item.external_id,
            "split": self.split_of(item),
            "label_source": item.label_source,
            "curation": item.curation,
        }

    def prompt_type(self) -> pa.DataType:
        return _message_type() if self.ctx.chat else pa.string()

    def response_value(self, text: str) -> Any:
        return [{"role": "assistant", "content": text}] if self.ctx.chat else text


_COMMON = [("item_id", pa.string()), ("split", pa.string()), ("label_source", pa.string()), ("curation", pa.string())]


class _Pairs(_Format):
    """TRL's preference format, for its RewardTrainer (and DPO-style trainers) as written.

    - Split: `test` holds the items the app keeps out of training (`models_srv.data.held_out` with
      a training run's default seed and eval fraction), `train` the rest, so a model trained on
      `train` is measured on the same items as the app's reward models.
    - `margin`: what the app's Bradley-Terry objective asks of a pair of this strength
      (`models_srv.engine.strength_margin` with the default `margin_scale`): none at the first
      level. TRL subtracts a `margin` column from the reward difference whenever there is one.
    """

    name = "pairs"

    def split_of(self, item: _Item) -> str:
        return "test" if self.ctx.held_out(item) else "train"

    def prompt_value(self, item: _Item) -> Any:
        return item.prompt

    def fields(self) -> list[tuple[str, pa.DataType]]:
        t = self.prompt_type()
        return [
            ("prompt", t),
            ("chosen", t),
            ("rejected", t),
            ("margin", pa.float64()),
            ("strength", pa.float64()),
            ("agreement", pa.float64()),
            ("n_judgments", pa.int32()),
            ("chosen_model", pa.string()),
            ("rejected_model", pa.string()),
            *_COMMON,
        ]

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        c = item.consensus
        if c is None or c.label not in ("A", "B") or len(item.texts) != 2:
            if self.name == "pairs":  # pairs_plain leaves out the same items: counted once
                self.ctx.skipped["pairs:" + ("tie" if c is not None and c.label == "tie" else "undecided")] += 1
            return
        win = 0 if c.label == "A" else 1
        if item.curation == "flip":
            win = 1 - win
        lose = 1 - win
        yield {
            "prompt": self.prompt_value(item),
            "chosen": self.response_value(item.texts[win]),
            "rejected": self.response_value(item.texts[lose]),
            "margin": strength_margin(c.strength, self.ctx.margin_scale),
            "strength": c.strength,
            "agreement": c.agreement,
            "n_judgments": c.n,
            "chosen_model": item.models[win],
            "rejected_model": item.models[lose],
            **self.common(item),
        }

    def describe(self) -> str:
        return (
            "One row per pairwise item whose consensus prefers one response (ties and undecided items "
            "are left out). `prompt`/`chosen`/`rejected` follow TRL's preference format "
            "(conversational message lists when the project has chat prompts: a model with a chat "
            "template; `pairs_plain` has the same rows as plain text). " + _pairs_common(self.ctx)
        )


def _pairs_common(ctx: _Context) -> str:
    return (
        "`split` is `test` for the items Prefloop holds out of reward-model training (the project's "
        "eval split, and each item whose sha256 of `seed:item_id` falls under the eval fraction; "
        f"seed {ctx.eval_seed}, fraction {ctx.eval_fraction}, a training run's defaults), `train` for "
        "the rest. `strength` is the consensus's mean strength level of the winning votes (1 = the "
        "schema's first level); `margin` is the margin Prefloop's Bradley-Terry objective asks of a "
        f"pair of that strength, {ctx.margin_scale} per level above the first (so 0 at the first "
        "level); TRL's RewardTrainer subtracts it from the reward difference (remove the column for "
        "its plain loss). `agreement` is the weighted share of the winning label. Items with curation "
        "state `flip` have chosen and rejected swapped."
    )


class _PairsPlain(_Pairs):
    """The pairs as plain text, for a model without a chat template (TRL refuses message lists
    then): TRL joins `prompt + chosen` with nothing between, so `prompt` is
    `models_srv.engine.dialogue_prompt` and the joined text is what the app's default (top) mode
    reads."""

    name = "pairs_plain"

    def prompt_type(self) -> pa.DataType:
        return pa.string()

    def prompt_value(self, item: _Item) -> Any:
        return dialogue_prompt(item.prompt_text)

    def response_value(self, text: str) -> Any:
        return text

    def describe(self) -> str:
        return (
            "The rows of `pairs` as plain text, for a model without a chat template: `prompt` is the "
            "prompt (a chat prompt as its transcript, `User: ...` and `Assistant: ...` turns) followed "
            "by a blank line and `Assistant: `, so `prompt + chosen` (how TRL joins them) is the text "
            "Prefloop's default reward model reads. The other columns, the splits and `margin` are as "
            "in `pairs`."
        )


class _Listwise(_Format):
    name = "listwise"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        return [
            ("prompt", self.prompt_type()),
            ("responses", pa.list_(pa.string())),
            ("models", pa.list_(pa.string())),
            ("response_indexes", pa.list_(pa.int32())),
            ("mean_ranks", pa.list_(pa.float64())),
            ("kendall_w", pa.float64()),
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        if item.ranking is None or not item.ranking[0]:
            self.ctx.skipped["listwise:no_rankings"] += 1
            return
        means, w = item.ranking
        order = sorted(range(len(means)), key=lambda i: (means[i], i))
        if item.curation == "flip":
            order = sorted(range(len(means)), key=lambda i: (-means[i], i))
        n = sum(1 for j in item.judgments if j.payload.get("ranking"))
        yield {
            "prompt": item.prompt,
            "responses": [item.texts[i] for i in order],
            "models": [item.models[i] for i in order],
            "response_indexes": order,
            "mean_ranks": [means[i] for i in order],
            "kendall_w": w,
            "n_judgments": n,
            **self.common(item),
        }

    def describe(self) -> str:
        return (
            "One row per ranking item: `responses` best first by mean rank (1 = best; ties keep the "
            "stored order), `response_indexes` their stored positions, `kendall_w` the agreement of "
            "the rankings (Kendall's W, 1.0 for a single ranking). `flip` reverses the order."
        )


class _Rubric(_Format):
    name = "rubric"

    def __init__(self, ctx: _Context) -> None:
        fixed = {"prompt", "response", "model", "response_index", "n_judgments", *[n for n, _ in _COMMON]}
        self.columns = {a: (f"aspect_{a}" if a in fixed else a) for a in ctx.aspects}
        super().__init__(ctx)

    def fields(self) -> list[tuple[str, pa.DataType]]:
        return [
            ("prompt", self.prompt_type()),
            ("response_index", pa.int32()),
            ("response", pa.string()),
            ("model", pa.string()),
            *[(col, pa.float64()) for col in self.columns.values()],
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        rated = [j.payload["rubric"] for j in item.judgments if isinstance(j.payload.get("rubric"), list)]
        if not rated:
            return
        for i, text in enumerate(item.texts):
            ratings = [r[i] for r in rated if i < len(r) and isinstance(r[i], dict)]
            means = rubric_consensus(ratings)
            yield {
                "prompt": item.prompt,
                "response_index": i,
                "response": text,
                "model": item.models[i],
                **{col: means.get(a) for a, col in self.columns.items()},
                "n_judgments": len(ratings),
                **self.common(item),
            }

    def describe(self) -> str:
        names = ", ".join(f"`{c}`" for c in self.columns.values())
        return (
            f"One row per response of an item with rubric ratings; one column per aspect ({names}) "
            "holding the mean score of the raters (null when nobody rated it)."
        )


class _Spans(_Format):
    name = "spans"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        span = pa.struct(
            [("start", pa.int32()), ("end", pa.int32()), ("category", pa.string()), ("labeler", pa.string())]
        )
        return [
            ("prompt", self.prompt_type()),
            ("response_index", pa.int32()),
            ("response", pa.string()),
            ("model", pa.string()),
            ("spans", pa.list_(span)),
            ("n_judgments", pa.int32()),
            *_COMMON,
        ]

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        for i, text in enumerate(item.texts):
            marks = [
                {
                    "start": s["start"],
                    "end": s["end"],
                    "category": s["category"],
                    "labeler": self.ctx.pseudonym(j.labeler_id),
                }
                for j in item.judgments
                for s in j.payload.get("spans") or []
                if s.get("response") == i
            ]
            yield {
                "prompt": item.prompt,
                "response_index": i,
                "response": text,
                "model": item.models[i],
                "spans": marks,
                "n_judgments": len(item.judgments),
                **self.common(item),
            }

    def describe(self) -> str:
        cats = ", ".join(f"`{c}`" for c in self.ctx.categories)
        return (
            "One row per response of every exported item: its text and the span marks of all its "
            "judgments, `start`/`end` as character offsets (Unicode code points, end exclusive) into "
            f"`response`, `category` one of {cats}, `labeler` the pseudonymous annotator id. An empty "
            "list means the judges marked nothing in that response."
        )


class _Raw(_Format):
    name = "raw"

    def fields(self) -> list[tuple[str, pa.DataType]]:
        schema = self.ctx.schema
        out: list[tuple[str, pa.DataType]] = [
            ("judgment_id", pa.string()),
            ("prompt", self.prompt_type()),
            ("responses", pa.list_(pa.string())),
            ("models", pa.list_(pa.string())),
            ("labeler", pa.string()),
            ("labeler_kind", pa.string()),
            ("labeler_type", pa.string()),
        ]
        if schema.pairwise:
            out += [("choice", pa.string()), ("strength", pa.int32())]
        if schema.ranking:
            out += [("ranking", pa.list_(pa.int32()))]
        if schema.rubric:
            out += [("rubric", pa.list_(pa.struct([(a, pa.int32()) for a in self.ctx.aspects])))]
        if schema.spans:
            span = pa.struct(
                [("response", pa.int32()), ("start", pa.int32()), ("end", pa.int32()), ("category", pa.string())]
            )
            out += [("spans", pa.list_(span))]
        out += [
            ("justification", pa.string()),
            ("response_order", pa.list_(pa.int32())),
            ("time_spent_ms", pa.int64()),
            ("confidence", pa.float64()),
            ("schema_version", pa.int32()),
            ("guidelines_version", pa.int32()),
            ("created_at", pa.timestamp("us", tz="UTC")),
            *_COMMON,
        ]
        return out

    def rows(self, item: _Item) -> Iterator[dict[str, Any]]:
        schema = self.ctx.schema
        for j in item.judgments:
            p = j.payload
            row: dict[str, Any] = {
                "judgment_id": j.uuid,
                "prompt": item.prompt,
                "responses": item.texts,
                "models": item.models,
                "labeler": self.ctx.pseudonym(j.labeler_id),
                "labeler_kind": j.source,
                "labeler_type": j.kind,
            }
            if schema.pairwise:
                pw = p.get("pairwise") or {}
                row["choice"] = pw.get("choice")
                row["strength"] = pw.get("strength")
            if schema.ranking:
                row["ranking"] = p.get("ranking")
            if schema.rubric:
                rub = p.get("rubric")
                row["rubric"] = (
                    [{a: (r or {}).get(a) for a in self.ctx.aspects} for r in rub] if isinstance(rub, list) else None
                )
            if schema.spans:
                row["spans"] = [
                    {"response": s["response"], "start": s["start"], "end": s["end"], "category": s["category"]}
                    for s in p.get("spans") or []
                ]
            row.update(
                {
                    "justification": p.get("justification", ""),
                    "response_order": j.response_order,
                    "time_spent_ms": j.time_spent_ms,
                    "confidence": j.confidence,
                    "schema_version": j.schema_version,
                    "guidelines_version": j.guidelines_version,
                    "created_at": j.created_at,
                    **self.common(item),
                }
            )
            yield row

    def describe(self) -> str:
        return (
            "One row per judgment of the exported items (the label source decides which), for "
            "pluralistic reward models: `labeler` is a pseudonymous id (HMAC of the labeler with the "
            "server's secret and the project slug: stable across exports of this project, not "
            "reversible without the secret), `labeler_kind` human (an annotator here), imported or "
            "ai, `labeler_type` the kind of labeler (human, imported, llm, reward_model, "
            "density_ratio). Payload fields use the stored response order; `response_order` is "
            "the order the responses were shown in."
        )


_WRITERS: dict[str, tuple[type[_Format], ...]] = {  # format -> its configurations
    "pairs": (_Pairs, _PairsPlain),
    "listwise": (_Listwise,),
    "rubric": (_Rubric,),
    "spans": (_Spans,),
    "raw": (_Raw,),
}


# ---------------------------------------------------------------------------------------------
# Files


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_TEXT_COLUMNS = {"prompt", "chosen", "rejected", "response", "responses", "justification"}


class _SplitFiles:
    """The JSONL and Parquet files of one format and split, written as rows arrive."""

    def __init__(self, root: Path, fmt: str, split: str, schema: pa.Schema) -> None:
        folder = root / fmt
        folder.mkdir(parents=True, exist_ok=True)
        self.fmt, self.split, self.schema = fmt, split, schema
        self.jsonl_path = folder / f"{split}.jsonl"
        self.parquet_path = folder / f"{split}.parquet"
        self._jsonl = self.jsonl_path.open("wb")
        self._sha = hashlib.sha256()
        # Min/max statistics only where they help filtering: not on texts, whose long min/max values
        # would sit in the footer metadata for every row group.
        stats = [f.name for f in schema if not pa.types.is_list(f.type) and f.name not in _TEXT_COLUMNS]
        self._parquet = pq.ParquetWriter(self.parquet_path, schema, compression="zstd", write_statistics=stats)
        self._buffer: list[dict[str, Any]] = []
        self._buffer_bytes = 0
        self.rows = 0
        self.bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, default=_json_default) + "\n").encode()
        self._jsonl.write(line)
        self._sha.update(line)
        self.bytes += len(line)
        self._buffer.append(row)
        self._buffer_bytes += len(line)
        self.rows += 1
        if len(self._buffer) >= ROW_GROUP_ROWS or self._buffer_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self.schema)
            self._parquet.write_table(table, row_group_size=len(self._buffer))
            self._buffer = []
            self._buffer_bytes = 0

    def close(self, root: Path) -> list[dict[str, Any]]:
        self._flush()
        self._jsonl.close()
        self._parquet.close()
        common = {"format": self.fmt, "split": self.split, "rows": self.rows}
        return [
            {
                "name": self.jsonl_path.relative_to(root).as_posix(),
                "kind": "jsonl",
                "bytes": self.bytes,
                "sha256": self._sha.hexdigest(),
                **common,
            },
            {
                "name": self.parquet_path.relative_to(root).as_posix(),
                "kind": "parquet",
                "bytes": self.parquet_path.stat().st_size,
                "sha256": sha256_file(self.parquet_path),
                **common,
            },
        ]

    def abort(self) -> None:
        self._jsonl.close()
        self._parquet.close()


# ---------------------------------------------------------------------------------------------
# Agreement figures, accumulated as items stream by (bounded memory)


class _Agreement:
    """Percent agreement and Krippendorff's alpha from a coincidence matrix built unit by unit.

    The same statistic as `curation.metrics.krippendorff_alpha` (nominal or interval), but
    accumulated item by item, so the whole reliability matrix is never held in memory."""

    def __init__(self, level: Literal["nominal", "interval"]) -> None:
        self.level = level
        self.coincidence: dict[tuple[Any, Any], float] = defaultdict(float)
        self.agree_pairs = 0
        self.total_pairs = 0
        self.units = 0

    def add(self, values: Sequence[Any]) -> None:
        values = [v for v in values if v is not None]
        m = len(values)
        if m < 2:
            return
        self.units += 1
        counts = Counter(values)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nc - 1) if c == k else nc * nk
                if pairs:
                    self.coincidence[(c, k)] += pairs / (m - 1)
        self.agree_pairs += sum(n * (n - 1) // 2 for n in counts.values())
        self.total_pairs += m * (m - 1) // 2

    def percent(self) -> float | None:
        return self.agree_pairs / self.total_pairs if self.total_pairs else None

    def alpha(self) -> float | None:
        marginals: dict[Any, float] = defaultdict(float)
        for (c, _k), v in self.coincidence.items():
            marginals[c] += v
        n = sum(marginals.values())
        if n < 2 or len(marginals) < 2:
            return None

        def delta(c: Any, k: Any) -> float:
            if self.level == "nominal":
                return 0.0 if c == k else 1.0
            return (float(c) - float(k)) ** 2

        observed = sum(v * delta(c, k) for (c, k), v in self.coincidence.items())
        expected = sum(marginals[c] * marginals[k] * delta(c, k) for c in marginals for k in marginals)
        if expected <= 0:
            return None
        return 1.0 - (n - 1) * observed / expected

    def summary(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "percent_agreement": _round(self.percent()),
            "krippendorff_alpha": _round(self.alpha()),
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------------------------
# The pass over the project


@dataclass
class _Context:
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

    def held_out(self, item: _Item) -> bool:
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


def _schema_at(project: Project, cutoff: datetime) -> tuple[JudgmentSchema, int | None, int | None]:
    """The schema and guidelines versions in force at the cutoff (the current ones as a fallback)."""
    sv = SchemaVersion.objects.filter(project=project, created_at__lte=cutoff).order_by("-version").first()
    gv = GuidelinesVersion.objects.filter(project=project, created_at__lte=cutoff).order_by("-version").first()
    schema = JudgmentSchema.model_validate(sv.schema if sv else project.schema)
    return (
        schema,
        sv.version if sv else project.schema_version,
        gv.version if gv else project.guidelines_version,
    )


def _day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def _judgment_filter(filters: ExportFilters, cutoff: datetime) -> Q:
    q = Q(created_at__lte=cutoff)
    if filters.date_from:
        q &= Q(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        q &= Q(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.labelers is not None:
        q &= Q(labeler_id__in=filters.labelers)
    return q


def _chunks(project: Project, ctx: _Context, chunk_items: int) -> Iterator[list[_Item]]:
    filters, cutoff = ctx.filters, ctx.cutoff
    jfilter = _judgment_filter(filters, cutoff)
    has_any = Judgment.objects.filter(item=OuterRef("pk"), created_at__lte=cutoff)
    items_qs = Item.objects.filter(project=project, created_at__lte=cutoff).filter(Exists(has_any))
    if filters.splits:
        items_qs = items_qs.filter(split__in=filters.splits)
    last = 0
    while True:
        page = list(
            items_qs.filter(id__gt=last)
            .order_by("id")
            .values_list("id", "external_id", "prompt", "prompt_messages", "responses", "split")[:chunk_items]
        )
        if not page:
            return
        last = page[-1][0]
        ids = [row[0] for row in page]
        by_item: dict[int, list[_J]] = defaultdict(list)
        rows = (
            Judgment.objects.filter(jfilter, item_id__in=ids)
            .order_by("item_id", "id")
            .values_list(
                "item_id",
                "id",
                "uuid",
                "labeler_id",
                "labeler__kind",
                "payload",
                "response_order",
                "time_spent_ms",
                "confidence",
                "schema_version",
                "guidelines_version",
                "created_at",
            )
        )
        for item_id, *rest in rows:
            rest[1] = str(rest[1])
            by_item[item_id].append(_J(*rest))
        actions = effective_action_kinds(item_ids=ids, at=cutoff)
        flagged: set[int] = set()
        if filters.exclude_flagged:
            flagged = set(
                Assignment.objects.filter(item_id__in=ids, flagged=True, finished_at__lte=cutoff).values_list(
                    "item_id", flat=True
                )
            )
        out = []
        for item_id, ext, prompt, messages, responses, split in page:
            if ctx.chat:
                prompt_value: Any = messages if messages else [{"role": "user", "content": prompt}]
            else:
                prompt_value = prompt
            out.append(
                _Item(
                    id=item_id,
                    external_id=ext,
                    prompt=prompt_value,
                    prompt_text=prompt,
                    texts=[r["text"] for r in responses],
                    models=[r.get("model") or "" for r in responses],
                    split=split,
                    curation=actions.get(item_id),
                    judgments=by_item.get(item_id, []),
                    flagged=item_id in flagged,
                )
            )
        yield out


def build_export(
    *,
    project: Project,
    filters: ExportFilters,
    formats: Sequence[str],
    cutoff: datetime,
    out_dir: Path,
    card: Mapping[str, Any] | None = None,
    heartbeat: Callable[[dict[str, Any]], None] | None = None,
    chunk_items: int | None = None,
) -> ExportResult:
    """Write the dataset into `out_dir` (data files, README.md, SHA256SUMS); return files and counts.

    `chunk_items` items are read per page (default: the EXPORT_CHUNK_ITEMS setting, 1,000)."""
    chunk_items = chunk_items or getattr(settings, "EXPORT_CHUNK_ITEMS", CHUNK_ITEMS)
    schema, schema_version, guidelines_version = _schema_at(project, cutoff)
    formats = parse_formats(formats, schema)
    chat = Item.objects.filter(project=project, created_at__lte=cutoff, prompt_messages__isnull=False).exists()
    training = TrainConfig()
    ctx = _Context(
        project=project,
        schema=schema,
        filters=filters,
        cutoff=cutoff,
        chat=chat,
        guidelines_version=guidelines_version,
        schema_version=schema_version,
        eval_seed=training.seed,
        eval_fraction=training.eval_fraction,
        margin_scale=training.margin_scale,
    )
    writers = {w.name: w for f in formats for w in (cls(ctx) for cls in _WRITERS[f])}  # one per configuration
    files: dict[tuple[str, str], _SplitFiles] = {}
    excluded: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    humans: set[int] = set()  # bounded by the number of labelers, not of judgments
    imported: set[int] = set()
    ai_labelers: Counter[int] = Counter()
    row_labels: Counter[str] = Counter()
    items_seen = items_kept = judgments_kept = 0
    pair_agreement = _Agreement("nominal")
    rubric_agreement = {a: _Agreement("interval") for a in ctx.aspects}
    span_categories: Counter[str] = Counter()
    kendall: list[float] = [0.0, 0.0]  # sum of W, items with >= 2 rankings
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for chunk in _chunks(project, ctx, chunk_items):
            for item in chunk:
                items_seen += 1
                reason = _keep(item, ctx)
                if reason:
                    excluded[reason] += 1
                    continue
                items_kept += 1
                judgments_kept += len(item.judgments)
                for j in item.judgments:
                    sources[j.kind] += 1
                    if j.source == LabelSource.HUMAN:
                        humans.add(j.labeler_id)
                    elif j.source == LabelSource.IMPORTED:
                        imported.add(j.labeler_id)
                    else:
                        ai_labelers[j.labeler_id] += 1
                    for s in j.payload.get("spans") or []:
                        span_categories[s.get("category")] += 1
                row_labels[item.label_source] += 1
                if schema.pairwise:
                    pair_agreement.add([(j.payload.get("pairwise") or {}).get("choice") for j in item.judgments])
                if schema.rubric:
                    _add_rubric(item, rubric_agreement)
                if item.ranking is not None and sum(1 for j in item.judgments if j.payload.get("ranking")) >= 2:
                    kendall[0] += item.ranking[1]
                    kendall[1] += 1
                for name, writer in writers.items():
                    split = writer.split_of(item)
                    for row in writer.rows(item):
                        key = (name, split)
                        if key not in files:
                            files[key] = _SplitFiles(out_dir, name, split, writer.schema)
                        files[key].write(row)
            if heartbeat:
                heartbeat({"phase": "writing", "items": items_seen, "exported": items_kept})
    except BaseException:
        for f in files.values():
            f.abort()
        raise
    file_infos = [info for key in sorted(files) for info in files[key].close(out_dir)]
    rows: dict[str, dict[str, int]] = {name: {} for name in writers}
    for (name, split), f in sorted(files.items()):
        rows[name][split] = f.rows
    agreement: dict[str, Any] = {}
    if schema.pairwise:
        agreement["pairwise"] = pair_agreement.summary()
    if schema.rubric:
        agreement["rubric"] = {a: acc.summary() for a, acc in rubric_agreement.items()}
    if schema.ranking:
        agreement["ranking"] = {
            "items": int(kendall[1]),
            "mean_kendall_w": _round(kendall[0] / kendall[1]) if kendall[1] else None,
        }
    counts = {
        "items_considered": items_seen,
        "items_exported": items_kept,
        "judgments": judgments_kept,
        "excluded": dict(sorted(excluded.items())),
        "skipped_rows": dict(sorted(ctx.skipped.items())),
        "rows": rows,
        "judgments_by_labeler_type": dict(sorted(sources.items())),
        "human_annotators": len(humans),
        "imported_annotators": len(imported),
        "ai_labelers": _ai_labelers(ai_labelers),
        "items_by_label_source": dict(sorted(row_labels.items())),
        "agreement": agreement,
        "span_categories": dict(sorted(span_categories.items())) if schema.spans else {},
        "chat_prompts": chat,
        "schema_version": schema_version,
        "guidelines_version": guidelines_version,
    }
    _write_card(out_dir, ctx, writers, file_infos, counts, dict(card or {}))
    return ExportResult(files=file_infos, counts=counts)


def _ai_labelers(counts: Counter[int]) -> list[dict[str, Any]]:
    """The AI labelers behind the exported judgments, by name (AI labelers are not people)."""
    out = []
    for labeler in Labeler.objects.filter(id__in=list(counts)).order_by("name", "version", "id"):
        config = labeler.config or {}
        model = config.get("model") or config.get("version") or config.get("strong") or ""
        out.append(
            {
                "name": labeler.name,
                "type": labeler.kind,
                "model": str(model),
                "version": labeler.version,
                "judgments": counts[labeler.id],
            }
        )
    return out


def _keep(item: _Item, ctx: _Context) -> str | None:
    """Why the item is left out, or None (and then its judgments and consensus are set)."""
    filters = ctx.filters
    if filters.exclude_dropped and item.curation == "drop":
        return "dropped"
    if item.flagged:
        return "flagged"
    item.judgments, item.label_source = _select(item.judgments, filters.label_source)
    if not item.judgments:
        return "no_judgments"
    schema = ctx.schema
    if schema.pairwise:
        votes = [
            (p["choice"], int(p.get("strength", 0)))
            for j in item.judgments
            if isinstance(p := j.payload.get("pairwise"), dict) and p.get("choice") in ("A", "B", "tie")
        ]
        weights = [
            j.weight
            for j in item.judgments
            if isinstance(p := j.payload.get("pairwise"), dict) and p.get("choice") in ("A", "B", "tie")
        ]
        item.consensus = pairwise_consensus(votes, weights)
        if filters.min_agreement is not None and item.consensus.agreement < filters.min_agreement:
            return "low_agreement"
        if filters.min_strength is not None and item.consensus.strength < filters.min_strength:
            return "low_strength"
    elif schema.ranking:
        rankings = [
            j.payload["ranking"]
            for j in item.judgments
            if isinstance(j.payload.get("ranking"), list) and len(j.payload["ranking"]) == len(item.texts)
        ]
        item.ranking = ranking_consensus(rankings)
        if filters.min_agreement is not None and rankings and item.ranking[1] < filters.min_agreement:
            return "low_agreement"
    return None


def _add_rubric(item: _Item, acc: dict[str, _Agreement]) -> None:
    rated = [j.payload["rubric"] for j in item.judgments if isinstance(j.payload.get("rubric"), list)]
    for i in range(len(item.texts)):
        for aspect, a in acc.items():
            a.add([r[i].get(aspect) for r in rated if i < len(r) and isinstance(r[i], dict)])


# ---------------------------------------------------------------------------------------------
# Dataset card, checksums, bundle


def _write_card(
    out_dir: Path,
    ctx: _Context,
    writers: Mapping[str, _Format],
    files: list[dict[str, Any]],
    counts: dict[str, Any],
    card: dict[str, Any],
) -> None:
    """README.md, a Hugging Face dataset card: one `configs` entry per configuration (a format, or
    `pairs_plain`) with its files per split, so `load_dataset(folder, name)` reads it as written."""
    project = ctx.project
    configs = []
    for fmt in writers:
        parquet = [f for f in files if f["format"] == fmt and f["kind"] == "parquet"]
        if parquet:
            configs.append(
                {
                    "config_name": fmt,
                    "data_files": [{"split": f["split"], "path": f["name"]} for f in parquet],
                    **({"default": True} if not configs else {}),
                }
            )
    front = {
        "license": card.get("license") or "unknown",
        "pretty_name": f"{project.name} (Prefloop export)",
        "tags": ["prefloop", "preference", "rlhf"],
        "configs": configs,
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {project.name}", ""]
    if project.description:
        lines += [project.description.strip(), ""]
    lines += [
        f"Exported from the Prefloop project `{project.slug}`.",
        "",
        "| | |",
        "|---|---|",
        f"| snapshot | `{card.get('code', '')}` |",
        f"| reproduces | `{card['source']}` |" if card.get("source") else "| reproduces | - |",
        f"| cutoff | {ctx.cutoff.astimezone(UTC).isoformat()} (judgments and curation actions up to here) |",
        f"| license | {front['license']} |",
        f"| judgment schema version | {ctx.schema_version} |",
        f"| guidelines version | {ctx.guidelines_version} |",
        f"| label source | {ctx.filters.label_source} |",
        f"| prompts | {'chat messages' if ctx.chat else 'plain text'} |",
        "",
        "## Filters",
        "",
        "```json",
        json.dumps(ctx.filters.to_json(), indent=2, sort_keys=True),
        "```",
        "",
        "## Counts",
        "",
        f"{counts['items_exported']} of {counts['items_considered']} judged items exported, "
        f"{counts['judgments']} judgments.",
        "",
        "| format | " + " | ".join(sorted({s for r in counts["rows"].values() for s in r}) or ["-"]) + " |",
    ]
    splits = sorted({s for r in counts["rows"].values() for s in r})
    lines.append("|---|" + "---|" * max(1, len(splits)))
    for fmt in writers:
        lines.append(f"| {fmt} | " + " | ".join(str(counts["rows"][fmt].get(s, 0)) for s in splits or ["-"]) + " |")
    lines.append("")
    if counts["excluded"]:
        lines += ["Items left out: " + ", ".join(f"{k} {v}" for k, v in counts["excluded"].items()) + ".", ""]
    if counts["skipped_rows"]:
        lines += ["Rows not written: " + ", ".join(f"{k} {v}" for k, v in counts["skipped_rows"].items()) + ".", ""]
    lines += ["## Label sources", ""]
    lines += [f"- {k}: {v} judgments" for k, v in counts["judgments_by_labeler_type"].items()] or ["- none"]
    lines += [f"- items labeled by {k}: {v}" for k, v in counts["items_by_label_source"].items()]
    lines.append(f"- distinct human annotators: {counts['human_annotators']} (pseudonymous in the files)")
    if counts.get("imported_annotators"):
        lines.append(f"- distinct annotators named in imported labels: {counts['imported_annotators']} (pseudonymous)")
    lines += [
        f"- AI labeler `{a['name']}` ({a['type']}{', ' + a['model'] if a['model'] else ''}, "
        f"version {a['version']}): {a['judgments']} judgments"
        for a in counts["ai_labelers"]
    ]
    lines += ["", "## Agreement", ""]
    agreement = counts["agreement"]
    if "pairwise" in agreement:
        a = agreement["pairwise"]
        lines.append(
            f"- pairwise choice (A / B / tie), over {a['units']} items with two or more judgments: "
            f"percent agreement {_fmt(a['percent_agreement'])}, Krippendorff's alpha (nominal) "
            f"{_fmt(a['krippendorff_alpha'])}"
        )
    if "ranking" in agreement:
        a = agreement["ranking"]
        lines.append(f"- rankings: mean Kendall's W {_fmt(a['mean_kendall_w'])} over {a['items']} items")
    for aspect, a in agreement.get("rubric", {}).items():
        lines.append(
            f"- rubric `{aspect}`, over {a['units']} rated responses: exact agreement "
            f"{_fmt(a['percent_agreement'])}, Krippendorff's alpha (interval) {_fmt(a['krippendorff_alpha'])}"
        )
    if not agreement:
        lines.append("- n/a")
    lines += ["", "## Schema", ""]
    if ctx.aspects:
        lines += ["Rubric aspects: " + ", ".join(f"`{a}`" for a in ctx.aspects) + ".", ""]
    if ctx.categories:
        lines += [
            "Span categories: "
            + ", ".join(f"`{c}` ({counts['span_categories'].get(c, 0)})" for c in ctx.categories)
            + ".",
            "",
        ]
    for fmt, writer in writers.items():
        lines += [f"### {fmt}", "", writer.describe(), "", "| column | type |", "|---|---|"]
        lines += [f"| `{f.name}` | `{f.type}` |" for f in writer.schema]
        lines.append("")
    lines += ["## Files", "", "| file | rows | bytes | sha256 |", "|---|---|---|---|"]
    lines += [f"| `{f['name']}` | {f['rows']} | {f['bytes']} | `{f['sha256']}` |" for f in files]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
    ]
    for c in configs:
        lines.append(f'{c["config_name"]} = load_dataset("path/to/this/folder", "{c["config_name"]}")')
    if configs:
        lines += ["", "# or file by file"]
    for c in configs:
        data_files = {d["split"]: d["path"] for d in c["data_files"]}
        lines.append(f'{c["config_name"]} = load_dataset("parquet", data_files={data_files!r})')
    lines += ["```", ""]
    pairs = next((c for c in configs if c["config_name"] == "pairs_plain"), None)
    if pairs:
        test = any(d["split"] == "test" for d in pairs["data_files"])
        lines += [
            "## Training a reward model with TRL",
            "",
            "`pairs_plain` suits any model; `pairs`, when the prompts are chat messages, one whose tokenizer "
            "has a chat template. TRL appends the tokenizer's end-of-sequence token to plain text: a "
            'BERT-like tokenizer has none, so give it one (`eos_token="[SEP]"`).',
            "",
            "```python",
            "from datasets import load_dataset",
            "from trl import RewardConfig, RewardTrainer",
            "",
            'data = load_dataset("path/to/this/folder", "pairs_plain")',
            "trainer = RewardTrainer(",
            '    model="sentence-transformers/all-MiniLM-L6-v2",',
            '    args=RewardConfig(output_dir="reward-model", eos_token="[SEP]"),',
            '    train_dataset=data["train"],',
            *(['    eval_dataset=data["test"],  # the items Prefloop holds out'] if test else []),
            ")",
            "trainer.train()",
            "```",
            "",
        ]
    lines += ["`SHA256SUMS` lists the checksum of every file (`sha256sum -c SHA256SUMS`).", ""]
    (out_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
    sums = [(f["sha256"], f["name"]) for f in files] + [(sha256_file(out_dir / "README.md"), "README.md")]
    (out_dir / "SHA256SUMS").write_text("".join(f"{s}  {n}\n" for s, n in sorted(sums, key=lambda x: x[1])))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def bundle_export(out_dir: Path, name: str, stamp: datetime) -> tuple[Path, str, int]:
    """Zip README.md, SHA256SUMS and the data files under a top folder `name/` into `out_dir/name.zip`.

    Entries are in sorted order with `stamp` as their time, so the same files give the same zip.
    Returns (path, sha256, bytes)."""
    members = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.suffix != ".zip")
    bundle = out_dir / f"{name}.zip"
    when = stamp.astimezone(UTC).timetuple()[:6]
    when = (max(1980, when[0]), *when[1:])
    with zipfile.ZipFile(bundle, "w", allowZip64=True) as zf:
        for path in members:
            rel = path.relative_to(out_dir).as_posix()
            info = zipfile.ZipInfo(f"{name}/{rel}", date_time=when)
            if path.suffix == ".parquet":  # already compressed (zstd)
                info.compress_type = zipfile.ZIP_STORED
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
                info._compresslevel = ZIP_LEVEL  # ZipFile.open(info, "w") reads the level from here
            info.external_attr = 0o644 << 16
            size = path.stat().st_size
            info.file_size = size
            with path.open("rb") as src, zf.open(info, "w", force_zip64=size > 2**30) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return bundle, sha256_file(bundle), bundle.stat().st_size


def remove_loose_files(out_dir: Path, keep: Iterable[str] = ("README.md", "SHA256SUMS")) -> None:
    """After bundling, keep only the bundle, the card and the checksums on disk."""
    for path in sorted(out_dir.rglob("*"), reverse=True):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and path.suffix != ".zip" and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            os.rmdir(path)
