"""Reading a project for the export: its judged items in id order, a page at a time.

A page is its items (one `ExportItem` each, as Python values: the per-item work is per item)
and the judgments of those items as columns (`JudgmentColumns`), read with one SQL statement that
takes the payload's fields apart in PostgreSQL, so no judgment becomes a Python object on the
fast path. Only schemas with rankings, rubric ratings or spans decode each payload (`payloads`),
as their formats read those structures judgment by judgment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
from django.db import connection
from django.db.models import Exists, OuterRef, Q

from annotation.models import Assignment, Item, Judgment, Labeler, LabelSource, Project, source_of_kind
from curation.export.context import Context, ExportItem
from curation.export.filters import ExportFilters
from curation.selectors import effective_action_kinds

SOURCE_ORDER = tuple(LabelSource.values)  # a judgment's source code is its index here
KIND_SOURCE = {kind: SOURCE_ORDER.index(source_of_kind(kind).value) for kind in Labeler.Kind.values}


def _day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def judgment_filter(filters: ExportFilters, cutoff: datetime) -> Q:
    q = Q(created_at__lte=cutoff)
    if filters.date_from:
        q &= Q(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        q &= Q(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.labelers is not None:
        q &= Q(labeler_id__in=filters.labelers)
    return q


@dataclass
class JudgmentColumns:
    """The judgments of a page, in (item, id) order, one sequence per field.

    `item` is each judgment's index into the page's items; `source` its label source as an index
    into `SOURCE_ORDER`; `strength` the pairwise strength (None when absent); `justification`
    is "" when the payload has none; `response_order` is the stored JSON text ("[0, 1]", which is
    also how `json.dumps` writes it); `created_us` microseconds since the epoch and `created_json`
    the time as the export writes it in JSON; `payloads` the decoded payloads, only when asked."""

    item: np.ndarray
    source: np.ndarray
    labeler_id: np.ndarray
    kind: tuple[str, ...]
    uuid: tuple[str, ...]
    choice: tuple[str | None, ...]
    strength: tuple[int | None, ...]
    justification: tuple[str | None, ...]
    response_order: tuple[str | None, ...]
    time_spent_ms: tuple[int | None, ...]
    confidence: tuple[float | None, ...]
    schema_version: tuple[int, ...]
    guidelines_version: tuple[int | None, ...]
    created_us: tuple[int, ...]
    created_json: tuple[str, ...]
    payloads: list[dict[str, Any]] | None

    def __len__(self) -> int:
        return len(self.item)


@dataclass
class Page:
    items: list[ExportItem]
    judgments: JudgmentColumns


# The one raw statement of the export (a named fast path: see the package docstring). The payload's
# pairwise fields and justification are taken apart here, times are written as the JSON the
# export writes (isoformat, `Z`, microseconds only when there are any).
_JUDGMENTS_SQL = """
SELECT j.item_id, j.labeler_id, l.kind, j.uuid::text,
       j.payload->'pairwise'->>'choice',
       (j.payload->'pairwise'->>'strength')::numeric::int,
       CASE WHEN j.payload ? 'justification' THEN j.payload->>'justification' ELSE '' END,
       j.response_order::text, j.time_spent_ms, j.confidence, j.schema_version, j.guidelines_version,
       (extract(epoch FROM j.created_at) * 1000000)::int8,
       '"' || to_char(j.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN extract(microseconds FROM j.created_at)::int8 %% 1000000 = 0 THEN ''
                   ELSE to_char(j.created_at AT TIME ZONE 'UTC', '.US') END || 'Z"'
       {payload}
FROM {judgment} j JOIN {labeler} l ON l.id = j.labeler_id
WHERE j.item_id = ANY(%s) AND {where}
ORDER BY j.item_id, j.id
"""


def _judgment_sql(filters: ExportFilters, cutoff: datetime, payloads: bool) -> tuple[str, list[Any]]:
    where: list[str] = ["j.created_at <= %s"]
    params: list[Any] = [cutoff]
    if filters.date_from:
        where.append("j.created_at >= %s")
        params.append(_day_start(filters.date_from))
    if filters.date_to:
        where.append("j.created_at < %s")
        params.append(_day_start(filters.date_to + timedelta(days=1)))
    if filters.labelers is not None:
        where.append("j.labeler_id = ANY(%s)")
        params.append(list(filters.labelers))
    sql = _JUDGMENTS_SQL.format(
        payload=", j.payload::text" if payloads else "",
        judgment=Judgment._meta.db_table,
        labeler=Labeler._meta.db_table,
        where=" AND ".join(where),
    )
    return sql, params


def statements_apply() -> bool:
    """Whether the raw statement runs here (PostgreSQL) or the ORM path does (the embedded SQLite)."""
    return connection.vendor == "postgresql"


def _portable_rows(ids: list[int], filters: ExportFilters, cutoff: datetime, payloads: bool) -> list[tuple[Any, ...]]:
    """The rows `_JUDGMENTS_SQL` gives, through the ORM: the embedded defaults' SQLite path, where
    exports are small (`tests/test_export_golden.py` holds both paths to the same files)."""
    qs = Judgment.objects.filter(item_id__in=ids, created_at__lte=cutoff)
    if filters.date_from:
        qs = qs.filter(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        qs = qs.filter(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.labelers is not None:
        qs = qs.filter(labeler_id__in=list(filters.labelers))
    rows = []
    for j in qs.select_related("labeler").order_by("item_id", "id"):
        payload = j.payload if isinstance(j.payload, dict) else {}
        found = payload.get("pairwise")
        pairwise: dict[str, Any] = found if isinstance(found, dict) else {}
        strength = pairwise.get("strength")
        created = j.created_at.astimezone(UTC)
        stamp = created.strftime("%Y-%m-%dT%H:%M:%S") + (f".{created.microsecond:06d}" if created.microsecond else "")
        justification = payload.get("justification", "")
        row = (
            j.item_id,
            j.labeler_id,
            j.labeler.kind,
            str(j.uuid),
            pairwise.get("choice"),
            None if strength is None else round(float(strength)),
            justification if isinstance(justification, str) or justification is None else json.dumps(justification),
            None if j.response_order is None else json.dumps(j.response_order),
            j.time_spent_ms,
            j.confidence,
            j.schema_version,
            j.guidelines_version,
            round(created.timestamp() * 1_000_000),
            f'"{stamp}Z"',
        )
        rows.append((*row, json.dumps(j.payload)) if payloads else row)
    return rows


def load_judgments(ids: list[int], filters: ExportFilters, cutoff: datetime, payloads: bool) -> JudgmentColumns:
    """The judgments of the items `ids` (ascending), as columns."""
    if not statements_apply():
        rows = _portable_rows(ids, filters, cutoff, payloads)
    else:
        sql, params = _judgment_sql(filters, cutoff, payloads)
        with connection.cursor() as cur:
            cur.execute(sql, [ids, *params])
            rows = cur.fetchall()
    n_cols = 15 if payloads else 14
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * n_cols
    item_ids = np.array(cols[0], dtype=np.int64)
    kinds = cols[2]
    uniq, inverse = (
        np.unique(np.array(kinds, dtype=object), return_inverse=True) if kinds else (np.array([]), np.array([]))
    )
    source = np.array([KIND_SOURCE[k] for k in uniq], dtype=np.int8)[inverse] if kinds else np.array([], np.int8)
    return JudgmentColumns(
        item=np.searchsorted(np.array(ids, dtype=np.int64), item_ids),
        source=source,
        labeler_id=np.array(cols[1], dtype=np.int64),
        kind=kinds,
        uuid=cols[3],
        choice=cols[4],
        strength=cols[5],
        justification=cols[6],
        response_order=cols[7],
        time_spent_ms=cols[8],
        confidence=cols[9],
        schema_version=cols[10],
        guidelines_version=cols[11],
        created_us=cols[12],
        created_json=cols[13],
        payloads=[json.loads(p) for p in cols[14]] if payloads else None,
    )


def item_pages(project: Project, ctx: Context, chunk_items: int, payloads: bool) -> Iterator[Page]:
    filters, cutoff = ctx.filters, ctx.cutoff
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
        judgments = load_judgments(ids, filters, cutoff, payloads)
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
                ExportItem(
                    id=item_id,
                    external_id=ext,
                    prompt=prompt_value,
                    prompt_text=prompt,
                    texts=[r["text"] for r in responses],
                    models=[r.get("model") or "" for r in responses],
                    split=split,
                    curation=actions.get(item_id),
                    judgments=[],
                    flagged=item_id in flagged,
                )
            )
        yield Page(items=out, judgments=judgments)
