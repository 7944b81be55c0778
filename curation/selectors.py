"""Reads of the curation app. Lookups on behalf of a user check access here and answer 404
(never 403) for anything the user may not see; access reuses `annotation.selectors`.

An item's effective curation state is its latest action (by creation time) that is not undone;
`at` asks "as of that moment": actions made after it, and undos made after it, do not count.
"""

from __future__ import annotations

import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from itertools import chain
from typing import Any

import numpy as np
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from annotation.models import Assignment, Item, Judgment, Labeler, Project
from annotation.selectors import AnyUser, project_for_user, projects_for_user
from curation.candidates import REASONS, Candidates, margin_for_label
from curation.models import CurationAction, ExportSnapshot


def _effective(at: datetime | None) -> Q:
    if at is None:
        return Q(undone_at__isnull=True)
    return Q(created_at__lte=at) & (Q(undone_at__isnull=True) | Q(undone_at__gt=at))


def curated_item_ids(project: Project) -> set[int]:
    """The ids of the project's items that have an effective action (the keys of `curation_states`)."""
    return set(CurationAction.objects.filter(_effective(None), project=project).values_list("item_id", flat=True))


def curation_states(
    *, project: Project | None = None, item_ids: Iterable[int] | None = None, at: datetime | None = None
) -> dict[int, CurationAction]:
    """{item id: its effective action} for the items of `project` and/or `item_ids` that have one."""
    if project is None and item_ids is None:
        raise ValueError("give a project or item ids")
    qs = CurationAction.objects.filter(_effective(at))
    if project is not None:
        qs = qs.filter(project=project)
    if item_ids is not None:
        qs = qs.filter(item_id__in=list(item_ids))
    latest = CurationAction.objects.filter(_effective(at), item=OuterRef("item")).order_by("-created_at", "-id")
    qs = qs.filter(id=Subquery(latest.values("id")[:1])).select_related("actor")
    return {a.item_id: a for a in qs}


def effective_action_kinds(*, item_ids: list[int], at: datetime | None = None) -> dict[int, str]:
    """{item id: action kind} of the effective actions of these items (one cheap query)."""
    rows = (
        CurationAction.objects.filter(_effective(at), item_id__in=item_ids)
        .order_by("item_id", "created_at", "id")
        .values_list("item_id", "action")
    )
    return dict(rows)  # the last (newest) action of each item wins


def item_curation_state(item: Item, at: datetime | None = None) -> CurationAction | None:
    return curation_states(item_ids=[item.id], at=at).get(item.id)


def with_curation_state(items: QuerySet[Item], at: datetime | None = None) -> QuerySet[Item]:
    """Annotate `curation_state` (drop / flip / accept / requeue or None) and `curation_action_id`."""
    latest = CurationAction.objects.filter(_effective(at), item=OuterRef("pk")).order_by("-created_at", "-id")
    return items.annotate(
        curation_state=Subquery(latest.values("action")[:1]),
        curation_action_id=Subquery(latest.values("id")[:1]),
    )


def curation_history(item: Item) -> list[CurationAction]:
    """Every action on the item, newest first, undone ones included."""
    return list(CurationAction.objects.filter(item=item).select_related("actor", "undone_by"))


def curation_action_for_user(user: AnyUser, action_id: int) -> CurationAction:
    """A curation action of a project the user curates, else 404."""
    action = (
        CurationAction.objects.select_related("project", "item")
        .filter(id=action_id, project__in=projects_for_user(user))
        .first()
    )
    if action is None:
        raise Http404("No such curation action.")
    project_for_user(user, action.project.slug, curator=True)
    return action


def export_get_for_user(user: AnyUser, code: object) -> ExportSnapshot:
    """The export if the user curates its project, else 404 (a malformed code too)."""
    try:
        code = uuid.UUID(str(code))
    except ValueError:
        raise Http404("No such export.") from None
    snapshot = (
        ExportSnapshot.objects.select_related("project", "created_by", "source_snapshot")
        .filter(code=code, project__in=projects_for_user(user))
        .first()
    )
    if snapshot is None:
        raise Http404("No such export.")
    project_for_user(user, snapshot.project.slug, curator=True)
    return snapshot


CARD_MAX_BYTES = 1 << 20  # a card is a few kilobytes; a bigger file is not shown whole


def export_card_text(snapshot: ExportSnapshot) -> str | None:
    """The dataset card (README.md) of a done export as written, without its YAML front matter:
    from the export's folder, where it stays beside the bundle, else from the bundle itself.
    None when there is none (not done yet, or the files are gone)."""
    if snapshot.status != ExportSnapshot.Status.DONE:
        return None
    text = None
    loose = snapshot.folder / "README.md"
    if loose.is_file() and loose.stat().st_size <= CARD_MAX_BYTES:
        text = loose.read_text(encoding="utf-8", errors="replace")
    elif snapshot.bundle_file is not None and snapshot.bundle_file.is_file():
        try:
            with zipfile.ZipFile(snapshot.bundle_file) as zf:
                member = next(
                    (i for i in zf.infolist() if i.filename.count("/") == 1 and i.filename.endswith("/README.md")), None
                )
                if member is not None and member.file_size <= CARD_MAX_BYTES:
                    text = zf.read(member).decode("utf-8", errors="replace")
        except zipfile.BadZipFile:
            return None
    if text is None:
        return None
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end != -1:
            text = text[end + 5 :]
    return text.lstrip("\n")


def exports_for_project(project: Project, limit: int = 20) -> list[ExportSnapshot]:
    return list(ExportSnapshot.objects.filter(project=project).select_related("created_by")[:limit])


# ---------------------------------------------------------------------------------------------
# The review queue, filtered, sorted and paged

REVIEW_REASONS = REASONS
# Sort keys: (key over a row, whether larger comes first). Rows without the value go last.
REVIEW_SORTS = {
    "evidence": "strongest evidence first",
    "margin": "lowest out-of-fold margin first",
    "-margin": "highest out-of-fold margin first",
    "disagreement": "most disagreement first",
    "-disagreement": "least disagreement first",
    "date": "newest judgment first",
    "-date": "oldest judgment first",
    "item": "item id",
}
REVIEW_PAGE_SIZES = (25, 50, 100, 200)


@dataclass(frozen=True)
class ReviewFilters:
    """What the queue shows: any of `reasons` (none: all), judged by `labeler_id`, of `category`,
    out-of-fold margin for the label within [margin_min, margin_max] (bounds exclude rows with no
    margin), in `sort` order."""

    reasons: tuple[str, ...] = ()
    labeler_id: int | None = None
    category: str = ""
    margin_min: float | None = None
    margin_max: float | None = None
    sort: str = "evidence"


@dataclass
class ReviewQueue:
    rows: list[dict[str, Any]]  # the page's rows
    total: int  # rows the filters keep
    candidates: int  # before filtering
    page: int
    pages: int
    per_page: int
    labelers: list[tuple[int, str]] = field(default_factory=list)  # among the candidates, by name
    categories: list[str] = field(default_factory=list)
    _matching: Callable[[], list[dict[str, Any]]] = list

    @cached_property
    def matching(self) -> list[dict[str, Any]]:
        """Every row the filters keep, in order (made when asked for: the bulk actions read it)."""
        return self._matching()

    @property
    def first(self) -> int:
        return (self.page - 1) * self.per_page + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


@dataclass
class _Columns:
    """What the filters and sorts read, per candidate (`Candidates` order): external id, category,
    last judgment (or creation) time, out-of-fold margin for the label and disagreement (NaN: none),
    score rounded as shown."""

    external_id: list[str]
    category: np.ndarray  # of str, "" for none
    date: list[datetime]
    margin: np.ndarray
    disagreement: np.ndarray
    score: np.ndarray

    @classmethod
    def of(cls, project: Project, found: Candidates) -> _Columns:
        # The candidates are non-gold items with a judgment or a flag: read those, texts left out.
        judged = Judgment.objects.filter(item=OuterRef("pk"))
        flagged = Assignment.objects.filter(item=OuterRef("pk"), flagged=True)
        items = {
            i: (external_id, category, created)
            for i, external_id, category, created in Item.objects.filter(project=project, is_gold=False)
            .filter(Exists(judged) | Exists(flagged))
            .values_list("id", "external_id", "metadata__category", "created_at")
        }
        ids = found.item_id.tolist()
        info = [items[i] for i in ids]
        margin = np.full(len(ids), np.nan)
        oof = 1 << REASONS.index("out_of_fold_disagrees")
        for k in np.flatnonzero(found.reasons & oof).tolist():
            margin[k] = margin_for_label("B" if found.label_b[k] else "A", float(found.margin_b[k]))
        agreement = found.agreement.tolist()
        return cls(
            external_id=[external_id for external_id, _, _ in info],
            category=np.array(["" if c is None else str(c) for _, c, _ in info], dtype=object),
            date=[found.last_judged.get(i, created) for i, (_, _, created) in zip(ids, info, strict=True)],
            margin=margin,
            disagreement=np.array([round(1.0 - a, 3) if a == a else np.nan for a in agreement]),  # a == a: not NaN
            score=np.array([round(x, 3) for x in found.score.tolist()]),
        )

    def enrich(self, found: Candidates, i: int) -> dict[str, Any]:
        """Candidate `i`'s row with the fields the queue shows and sorts on."""
        r = found.row(i)
        margin, disagreement = float(self.margin[i]), float(self.disagreement[i])
        r.update(
            score=float(self.score[i]),
            external_id=self.external_id[i],
            category=self.category[i],
            date=self.date[i],
            margin=None if margin != margin else margin,
            disagreement=None if disagreement != disagreement else disagreement,
        )
        return r


@dataclass
class _Judged:
    """Who judged which candidate: (item id, labeler id) pairs sorted by item, and the names of the
    labelers who judged any candidate."""

    items: np.ndarray
    labelers: np.ndarray
    names: dict[int, str]

    @classmethod
    def of(cls, project: Project, candidates: np.ndarray) -> _Judged:
        rows = list(
            Judgment.objects.filter(item__project=project, item__is_gold=False)
            .order_by()
            .values_list("item_id", "labeler_id")
        )
        pairs = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=2 * len(rows)).reshape(-1, 2)
        pairs = pairs[np.isin(pairs[:, 0], candidates)]
        pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
        names = {
            lab: username or name
            for lab, username, name in Labeler.objects.filter(id__in=np.unique(pairs[:, 1]).tolist()).values_list(
                "id", "user__username", "name"
            )
        }
        return cls(pairs[:, 0].copy(), pairs[:, 1].copy(), names)

    def items_of(self, labeler_id: int) -> np.ndarray:
        return np.unique(self.items[self.labelers == labeler_id])

    def labelers_of(self, item_id: int) -> list[int]:
        lo, hi = np.searchsorted(self.items, [item_id, item_id + 1])
        return sorted(set(self.labelers[lo:hi].tolist()))


def _kept(f: ReviewFilters, found: Candidates, cols: _Columns, judged: _Judged) -> np.ndarray:
    """Which candidates the filters keep. A margin bound leaves out the rows without a margin."""
    keep = np.ones(len(found), dtype=bool)
    if f.reasons:
        keep &= (found.reasons & sum(1 << REASONS.index(r) for r in set(f.reasons))) != 0
    if f.labeler_id is not None:
        keep &= np.isin(found.item_id, judged.items_of(f.labeler_id))
    if f.category:
        keep &= cols.category == f.category
    with np.errstate(invalid="ignore"):  # NaN compares False: no margin, not kept
        if f.margin_min is not None:
            keep &= cols.margin >= f.margin_min
        if f.margin_max is not None:
            keep &= cols.margin <= f.margin_max
    return np.flatnonzero(keep)


def _ordered(sort: str, rows: np.ndarray, found: Candidates, cols: _Columns) -> np.ndarray:
    """`rows` (candidate indexes) in `sort` order; ties by item id, rows without the value last."""
    item_id = found.item_id[rows]
    field_name = sort.lstrip("-")
    if field_name == "evidence":
        return rows[np.lexsort((item_id, -cols.score[rows]))]
    if field_name == "item":
        external = [cols.external_id[k] for k in rows.tolist()]
        return rows[sorted(range(len(rows)), key=lambda k: (external[k], item_id[k]))]
    descending = {"margin": False, "disagreement": True, "date": True}[field_name] != sort.startswith("-")
    if field_name == "date":
        value = np.array([cols.date[k].timestamp() for k in rows.tolist()], dtype=np.float64)
    else:
        value = (cols.margin if field_name == "margin" else cols.disagreement)[rows]
    missing = np.isnan(value)
    key = np.where(missing, 0.0, -value if descending else value)
    return rows[np.lexsort((item_id, key, missing))]


def review_queue(project: Project, filters: ReviewFilters, *, page: int = 1, per_page: int = 50) -> ReviewQueue:
    """The project's review candidates (`curation.candidates`: uncurated items with evidence
    against their label), filtered, sorted and cut to one page.

    The candidates are found over the whole project, in aggregate and as columns, so the filters,
    the sort and the total are exact; a row (its evidence, texts and labelers) is made for the
    page's rows only, and for every matching row when `matching` is read (the bulk actions). The
    number of queries depends neither on the page size nor on the number of candidates."""
    from curation.candidates import details, find

    found = find(project)
    cols = _Columns.of(project, found)
    judged = _Judged.of(project, found.item_id)
    order = _ordered(filters.sort, _kept(filters, found, cols, judged), found, cols)
    pages = max(1, -(-len(order) // per_page))
    page = min(max(1, page), pages)
    shown = [cols.enrich(found, i) for i in order[(page - 1) * per_page : page * per_page].tolist()]
    details(shown)
    for r in shown:
        r["labeler_ids"] = judged.labelers_of(r["item_id"])
        r["labelers"] = sorted(judged.names[lab] for lab in r["labeler_ids"])
    return ReviewQueue(
        rows=shown,
        total=len(order),
        candidates=len(found),
        page=page,
        pages=pages,
        per_page=per_page,
        labelers=sorted(judged.names.items(), key=lambda kv: (kv[1].lower(), kv[0])),
        categories=sorted({c for c in cols.category.tolist() if c}),
        _matching=lambda: [cols.enrich(found, i) for i in order.tolist()],
    )


def bulk_actions(project: Project, batch: str) -> QuerySet[CurationAction]:
    """The actions one bulk action made (its id is in each action's evidence), newest first."""
    return CurationAction.objects.filter(project=project, evidence__bulk__id=batch)
