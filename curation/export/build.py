"""The pass over a project: read pages, keep or leave out each item, hand it to the writers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from annotation.models import Item, LabelSource, Project
from curation.consensus import PAIRWISE_LABELS, Consensus, ranking_consensus
from curation.export.card import write_card
from curation.export.context import Context, ExportItem, ExportResult, JudgmentRow, group_source, schema_at
from curation.export.deflate import DeflateThread
from curation.export.files import RowEncoder, SplitFiles
from curation.export.filters import ExportFilters, parse_formats
from curation.export.formats import WRITERS, ColumnarFormat, Format
from curation.export.query import SOURCE_ORDER, JudgmentColumns, Page, item_pages
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
    default_per_page: int = getattr(settings, "EXPORT_CHUNK_ITEMS", CHUNK_ITEMS)
    per_page = chunk_items or default_per_page
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
    found = group_source(project, filters, schema)
    if found is not None:
        ctx.groups = found.members()
        ctx.group_numbers = tuple(int(g["group"]) for g in found.groups)
        ctx.group_version = found.version.version
    group_judgments: Counter[str] = Counter()
    writers = {w.name: w for f in formats for w in (cls(ctx) for cls in WRITERS[f])}  # one per configuration
    item_writers = {name: w for name, w in writers.items() if not isinstance(w, ColumnarFormat)}
    column_writers = {name: w for name, w in writers.items() if isinstance(w, ColumnarFormat)}
    payloads = bool(schema.ranking or schema.rubric or schema.spans)  # formats that read payloads
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
    deflate = DeflateThread(out_dir)

    def split_files(name: str, split: str, writer: Format) -> SplitFiles:
        key = (name, split)
        if key not in files:
            files[key] = SplitFiles(out_dir, name, split, writer.schema, encoder, deflate.deflater)
        return files[key]

    try:
        for page in item_pages(project, ctx, per_page, payloads):
            jc = page.judgments
            selection = select_page(page, ctx)
            items_seen += len(page.items)
            kept: list[int] = []
            for i, item in enumerate(page.items):
                reason = keep_reason(item, ctx, jc, selection, i)
                if reason:
                    excluded[reason] += 1
                    continue
                kept.append(i)
                row_labels[item.label_source] += 1
                if schema.pairwise:
                    pair_agreement.add([jc.choice[k] for k in selection.rows_of(i)])
                if schema.rubric:
                    add_rubric(item, rubric_agreement)
                if item.ranking is not None and sum(1 for j in item.judgments if j.payload.get("ranking")) >= 2:
                    kendall[0] += item.ranking[1]
                    kendall[1] += 1
                for name, writer in item_writers.items():
                    split = writer.split_of(item)
                    for row in writer.rows(item):
                        split_files(name, split, writer).write(row)
            items_kept += len(kept)
            keep = np.zeros(len(page.items), dtype=bool)
            keep[kept] = True
            rows = np.flatnonzero(selection.selected & keep[jc.item]) if len(jc) else np.array([], np.int64)
            judgments_kept += len(rows)
            if selection.group is not None:
                group_judgments.update(_group_name(g) for g in selection.group[rows].tolist())
            _count_labelers(jc, rows, sources, humans, imported, ai_counts)
            if schema.spans and jc.payloads is not None:
                for k in rows:
                    for s in jc.payloads[k].get("spans") or []:
                        span_categories[s.get("category")] += 1
            if len(rows):
                splits = np.array([page.items[i].split for i in jc.item[rows]], dtype=object)
                for name, writer in column_writers.items():
                    for split in dict.fromkeys(splits):  # in order of first appearance
                        part = rows[splits == split]
                        arrays, texts = writer.columns(page, part, encoder)
                        split_files(name, split, writer).write_columns(arrays, texts)
            if heartbeat:
                heartbeat({"phase": "writing", "items": items_seen, "exported": items_kept})
        file_infos = [info for key in sorted(files) for info in files[key].close(out_dir)]
        deflate.close()
    except BaseException:
        for f in files.values():
            f.abort()
        deflate.abort()
        raise
    file_rows: dict[str, dict[str, int]] = {name: {} for name in writers}
    for (name, split), f in sorted(files.items()):
        file_rows[name][split] = f.rows
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
        "rows": file_rows,
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
    if ctx.groups is not None:
        counts["groups"] = {
            "source": filters.group_source,
            "version": ctx.group_version,
            "mode": filters.group_mode,
            "group": filters.group,
            "groups": list(ctx.group_numbers),
            "judgments": dict(sorted(group_judgments.items())),
            "pairs_rows": dict(sorted(ctx.group_rows.items())),
        }
    write_card(out_dir, ctx, writers, file_infos, counts, dict(card or {}))
    return ExportResult(files=file_infos, counts=counts)


def _count_labelers(
    jc: JudgmentColumns,
    rows: np.ndarray,
    sources: Counter[str],
    humans: set[int],
    imported: set[int],
    ai_counts: Counter[int],
) -> None:
    """The labeler figures of the kept judgments at `rows`, counted per page."""
    if not len(rows):
        return
    kinds, counts = np.unique(np.array(jc.kind, dtype=object)[rows], return_counts=True)
    sources.update(dict(zip(kinds.tolist(), counts.tolist(), strict=True)))
    source, labeler = jc.source[rows], jc.labeler_id[rows]
    humans.update(np.unique(labeler[source == HUMAN]).tolist())
    imported.update(np.unique(labeler[source == IMPORTED]).tolist())
    ids, counts = np.unique(labeler[source == AI], return_counts=True)
    ai_counts.update(dict(zip(ids.tolist(), counts.tolist(), strict=True)))


def _group_name(group: int) -> str:
    return str(group) if group else "none"


HUMAN, IMPORTED, AI = (SOURCE_ORDER.index(s) for s in (LabelSource.HUMAN, LabelSource.IMPORTED, LabelSource.AI))
_CHOICES: dict[str | None, int] = {c: n for n, c in enumerate(PAIRWISE_LABELS)}


@dataclass
class Selection:
    """What the label-source filter keeps of a page: the judgments (`selected`), each item's
    label source, and the pairwise consensus of each item's kept votes (in bulk)."""

    selected: np.ndarray  # per judgment
    label_source: list[str]  # per item
    n_selected: np.ndarray  # per item
    consensus: list[Consensus] | None  # per item, pairwise schemas only
    bounds: np.ndarray  # the selected judgments of item i are sel_positions[bounds[i]:bounds[i + 1]]
    sel_positions: np.ndarray
    group: np.ndarray | None = None  # per judgment, with a group source: its group (0: none)
    group_consensus: dict[int, list[Consensus]] | None = None  # group_mode split: per group, per item

    def rows_of(self, i: int) -> list[int]:
        return self.sel_positions[self.bounds[i] : self.bounds[i + 1]].tolist()


def select_page(page: Page, ctx: Context) -> Selection:
    jc, n_items, source = page.judgments, len(page.items), ctx.filters.label_source
    idx = jc.item
    present = np.zeros(n_items, dtype=np.int64)
    np.bitwise_or.at(present, idx, np.left_shift(1, jc.source.astype(np.int64)))
    if source in SOURCE_ORDER:
        code = SOURCE_ORDER.index(source)
        selected = jc.source == code
        labels: list[str] = [source] * n_items
    elif source == "consensus":
        first = np.full(n_items, AI, dtype=np.int64)  # no judgments at all: reported as `ai`
        for code in reversed(range(len(SOURCE_ORDER))):
            first[(present >> code) & 1 == 1] = code
        selected = jc.source == first[idx] if len(jc) else np.zeros(0, dtype=bool)
        labels = [SOURCE_ORDER[c] for c in first.tolist()]
    else:
        selected = np.ones(len(jc), dtype=bool)
        names = ["+".join(s for c, s in enumerate(SOURCE_ORDER) if bits >> c & 1) for bits in range(8)]
        labels = [names[b] for b in present.tolist()]
    group = confidence = None
    if ctx.groups is not None:
        group, confidence = ctx.group_columns(jc.labeler_id)
        if ctx.filters.group_mode == "one":
            selected = selected & (group == ctx.filters.group)
    sel_positions = np.flatnonzero(selected)
    bounds = np.searchsorted(idx[sel_positions], np.arange(n_items + 1))
    n_selected = np.diff(bounds)
    consensus = per_group = None
    if ctx.schema.pairwise:
        factor = None
        if confidence is not None and ctx.filters.group_mode == "weighted":
            factor = np.where(np.isnan(confidence), 1.0, confidence)
        consensus = bulk_pairwise_consensus(jc, selected, n_items, factor)
        if group is not None and ctx.filters.group_mode == "split":
            per_group = {g: bulk_pairwise_consensus(jc, selected & (group == g), n_items) for g in ctx.group_numbers}
    return Selection(selected, labels, n_selected, consensus, bounds, sel_positions, group, per_group)


def bulk_pairwise_consensus(
    jc: JudgmentColumns, selected: np.ndarray, n_items: int, factor: np.ndarray | None = None
) -> list[Consensus]:
    """`pairwise_consensus` of every item's selected votes at once: the same numbers (weights are
    summed in the same order), with the weight totals per label counted by numpy. `factor`
    multiplies each judgment's weight (group_mode weighted: its annotator's group confidence)."""
    code = np.array([_CHOICES.get(c, -1) for c in jc.choice], dtype=np.int64)
    valid = selected & (code >= 0)
    weight = np.ones(len(jc))
    if len(jc):
        conf = np.array(jc.confidence, dtype=float)
        ai = (jc.source == AI) & ~np.isnan(conf)
        weight[ai] = conf[ai]
    if factor is not None:
        weight = weight * factor
    strength = np.array([0 if s is None else s for s in jc.strength], dtype=np.int64)
    at = jc.item[valid] * 3 + code[valid]
    w = weight[valid]
    if len(w) and (not np.isfinite(w).all() or (w < 0).any()):
        raise ValueError("weights must be finite and non-negative")
    totals = np.bincount(at, weights=w, minlength=3 * n_items).reshape(n_items, 3).tolist()
    nums = np.bincount(at, weights=w * strength[valid], minlength=3 * n_items).reshape(n_items, 3).tolist()
    counts = np.bincount(jc.item[valid], minlength=n_items).tolist()
    return [_consensus(t, s, n) for t, s, n in zip(totals, nums, counts, strict=True)]


def _consensus(weights: Sequence[float], nums: Sequence[float], n: int) -> Consensus:
    """The rest of `pairwise_consensus`, from each label's total weight and weighted strength."""
    total = weights[0] + weights[1] + weights[2]
    if n == 0 or total <= 0:
        return Consensus(label=None, strength=0.0, agreement=0.0, n=n, tied=False)
    ordered = sorted(zip(PAIRWISE_LABELS, weights, strict=True), key=lambda kv: kv[1], reverse=True)
    top_weight = ordered[0][1]
    tol = 1e-9 * max(1.0, total)
    top = [label for label, weight in ordered if abs(weight - top_weight) <= tol]
    tied = len(top) > 1
    label = ("tie" if "tie" in top else None) if tied else top[0]
    strength = 0.0
    if label in ("A", "B"):
        k = _CHOICES[label]
        strength = nums[k] / weights[k] if weights[k] > 0 else 0.0
    return Consensus(label=label, strength=float(strength), agreement=float(top_weight / total), n=n, tied=tied)


def keep_reason(item: ExportItem, ctx: Context, jc: JudgmentColumns, selection: Selection, i: int) -> str | None:
    """Why the item is left out, or None (and then its label source and consensus are set, and
    its judgments when the schema's formats read payloads)."""
    filters = ctx.filters
    if filters.exclude_dropped and item.curation == "drop":
        return "dropped"
    if item.flagged:
        return "flagged"
    item.label_source = selection.label_source[i]
    if not selection.n_selected[i]:
        return "no_judgments"
    if jc.payloads is not None:
        item.judgments = [JudgmentRow(int(jc.labeler_id[k]), jc.payloads[k]) for k in selection.rows_of(i)]
    schema = ctx.schema
    if selection.group_consensus is not None:
        item.group_consensus = {g: cs[i] for g, cs in selection.group_consensus.items() if cs[i].n}
    if selection.consensus is not None:
        item.consensus = selection.consensus[i]
        if filters.min_agreement is not None and item.consensus.agreement < filters.min_agreement:
            return "low_agreement"
        if filters.min_strength is not None and item.consensus.strength < filters.min_strength:
            return "low_strength"
    if schema.ranking:
        rankings = [
            j.payload["ranking"]
            for j in item.judgments
            if isinstance(j.payload.get("ranking"), list) and len(j.payload["ranking"]) == len(item.texts)
        ]
        item.ranking = ranking_consensus(rankings)
        if filters.min_agreement is not None and rankings and item.ranking[1] < filters.min_agreement:
            return "low_agreement"
    return None
