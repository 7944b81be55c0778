"""Reading a project for the export: its judged items in id order, a page at a time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db.models import Exists, OuterRef, Q

from annotation.models import Assignment, Item, Judgment, Project
from curation.export.context import Context, ExportItem, JudgmentRow
from curation.export.filters import ExportFilters
from curation.selectors import effective_action_kinds


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


def item_pages(project: Project, ctx: Context, chunk_items: int) -> Iterator[list[ExportItem]]:
    filters, cutoff = ctx.filters, ctx.cutoff
    jfilter = judgment_filter(filters, cutoff)
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
        by_item: dict[int, list[JudgmentRow]] = defaultdict(list)
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
            by_item[item_id].append(JudgmentRow.of(*rest))
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
                    judgments=by_item.get(item_id, []),
                    flagged=item_id in flagged,
                )
            )
        yield out
