"""The pass over a project: read pages, keep or leave out each item, hand it to the writers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from annotation.models import Item, LabelSource, Project
from curation.consensus import pairwise_consensus, ranking_consensus
from curation.export.card import write_card
from curation.export.context import Context, ExportItem, ExportResult, schema_at, select_judgments
from curation.export.files import RowEncoder, SplitFiles
from curation.export.filters import ExportFilters, parse_formats
from curation.export.formats import WRITERS
from curation.export.query import item_pages
from curation.export.stats import Agreement, add_rubric, ai_labelers, rounded
from models_srv.engine import TrainConfig

CHUNK_ITEMS = 1_000


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
    schema, schema_version, guidelines_version = schema_at(project, cutoff)
    formats = parse_formats(formats, schema)
    chat = Item.objects.filter(project=project, created_at__lte=cutoff, prompt_messages__isnull=False).exists()
    training = TrainConfig()
    ctx = Context(
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
    writers = {w.name: w for f in formats for w in (cls(ctx) for cls in WRITERS[f])}  # one per configuration
    files: dict[tuple[str, str], SplitFiles] = {}
    encoder = RowEncoder()  # one for all files: the formats share an item's texts
    excluded: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    humans: set[int] = set()  # bounded by the number of labelers, not of judgments
    imported: set[int] = set()
    ai_counts: Counter[int] = Counter()
    row_labels: Counter[str] = Counter()
    items_seen = items_kept = judgments_kept = 0
    pair_agreement = Agreement("nominal")
    rubric_agreement = {a: Agreement("interval") for a in ctx.aspects}
    span_categories: Counter[str] = Counter()
    kendall: list[float] = [0.0, 0.0]  # sum of W, items with >= 2 rankings
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for chunk in item_pages(project, ctx, chunk_items):
            for item in chunk:
                items_seen += 1
                reason = keep_reason(item, ctx)
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
                        ai_counts[j.labeler_id] += 1
                    for s in j.payload.get("spans") or []:
                        span_categories[s.get("category")] += 1
                row_labels[item.label_source] += 1
                if schema.pairwise:
                    pair_agreement.add([(j.payload.get("pairwise") or {}).get("choice") for j in item.judgments])
                if schema.rubric:
                    add_rubric(item, rubric_agreement)
                if item.ranking is not None and sum(1 for j in item.judgments if j.payload.get("ranking")) >= 2:
                    kendall[0] += item.ranking[1]
                    kendall[1] += 1
                for name, writer in writers.items():
                    split = writer.split_of(item)
                    for row in writer.rows(item):
                        key = (name, split)
                        if key not in files:
                            files[key] = SplitFiles(out_dir, name, split, writer.schema, encoder)
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
            "mean_kendall_w": rounded(kendall[0] / kendall[1]) if kendall[1] else None,
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
        "ai_labelers": ai_labelers(ai_counts),
        "items_by_label_source": dict(sorted(row_labels.items())),
        "agreement": agreement,
        "span_categories": dict(sorted(span_categories.items())) if schema.spans else {},
        "chat_prompts": chat,
        "schema_version": schema_version,
        "guidelines_version": guidelines_version,
    }
    write_card(out_dir, ctx, writers, file_infos, counts, dict(card or {}))
    return ExportResult(files=file_infos, counts=counts)


def keep_reason(item: ExportItem, ctx: Context) -> str | None:
    """Why the item is left out, or None (and then its judgments and consensus are set)."""
    filters = ctx.filters
    if filters.exclude_dropped and item.curation == "drop":
        return "dropped"
    if item.flagged:
        return "flagged"
    item.judgments, item.label_source = select_judgments(item.judgments, filters.label_source)
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
