"""What curators read every morning: quality figures of a project and its noisy-label candidates.

One pass over the project's judgments (values only, no model instances) feeds every table:
- agreement among humans: Krippendorff's alpha (ordinal, on the signed strength scale from
  "A much better" to "B much better", and per rubric aspect), Fleiss' kappa on the choice, percent
  agreement, Kendall's W for rankings; alpha by the week the items were completed;
- each annotator: judgments, agreement with the others' majority (leave-one-out), gold accuracy
  (both with Wilson 95 % intervals), median time per item, skips and flags;
- human vs AI: each AI labeler's agreement with the human consensus, overall and per category;
- biases for humans and each AI labeler: label distribution, position bias (the response shown
  first wins) and length bias (the longer response wins), with exact binomial p-values and Wilson
  intervals. People's come from the order each was shown. An AI labeler's come from its raw
  answers, one per order it was asked (models_srv.verdicts), abstentions included: the reconciled
  label of a judge that always picks the first shown is a tie, or no label at all, and would hide
  the very bias. Where nothing was measured (imported labels, reward-model judges, which score
  each response alone) the figures are None, shown "n/a", never a p-value of 1;
- drift: weekly agreement with consensus per annotator, per AI labeler and per category;
- model leaderboard: Bradley-Terry ratings of the responses' source models with bootstrap CIs,
  separately from human and from AI labels;
- reward-model metrics over versions;
- the AI labelers' consensus per item (majority and confidence-weighted) against the annotators',
  and Cohen's kappa for every pair of labelers (`curation.agreement_tables`).

The review queue's noisy-label candidates are found apart, in aggregate (`curation.candidates`);
`reference_consensus` here is the label they are checked against, judgment by judgment.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.db.models import Count, Q, Sum

from annotation.models import Assignment, Item, Judgment, Labeler, LabelSource, Project, source_of_kind
from curation.agreement_tables import ai_consensus_table, kappa_pairs
from curation.candidates import LOW_AGREEMENT, order_consistent
from curation.consensus import Consensus, dawid_skene, pairwise_consensus, ranking_consensus
from curation.metrics import (
    agreement_over_time,
    bradley_terry,
    fleiss_kappa,
    krippendorff_alpha,
    label_distribution,
    length_bias,
    pairwise_agreement,
    position_bias,
    wilson_interval,
)
from models_srv.verdicts import ShownAnswer, shown_answers


@dataclass
class _J:
    item_id: int
    labeler_id: int
    source: str  # LabelSource: annotators ("human"), imported labels, AI
    choice: str | None  # "A" | "B" | "tie" in stored order
    strength: int
    ranking: list[int] | None
    rubric: list[dict[str, int]] | None
    shown_first: int | None  # stored index of the response shown first
    time_ms: int | None
    created_at: datetime
    order_consistent: bool | None
    answers: tuple[ShownAnswer, ...] = ()  # an AI judgment's answer per order asked, in shown order
    confidence: float | None = None  # an AI labeler's, as stored

    @property
    def human(self) -> bool:
        return self.source == LabelSource.HUMAN


@dataclass
class ProjectData:
    project: Project
    # Rows as `load` reads them with values(), read-only.
    items: dict[int, Mapping[str, Any]]  # the items with a judgment or a flag: the only ones a figure reads
    labelers: dict[int, Mapping[str, Any]]
    judgments: list[_J]
    by_item_human: dict[int, list[_J]] = field(default_factory=dict)  # annotators' judgments
    by_item_imported: dict[int, list[_J]] = field(default_factory=dict)
    by_item_ai: dict[int, list[_J]] = field(default_factory=dict)
    # AI labelers' abstentions (no judgment: the orders disagreed where ties are not allowed):
    # (labeler id, item id, its answers), for the biases.
    abstentions: list[tuple[int, int, tuple[ShownAnswer, ...]]] = field(default_factory=list)

    def by_item(self, source: str) -> dict[int, list[_J]]:
        return {
            LabelSource.HUMAN: self.by_item_human,
            LabelSource.IMPORTED: self.by_item_imported,
            LabelSource.AI: self.by_item_ai,
        }[LabelSource(source)]

    item_count: int = 0  # all items (gold excluded), judged or not
    # Per labeler: (sum, count) of the scores of their answers to gold items. Gold items feed no
    # other figure, so only these two numbers are read of them.
    gold: dict[int, tuple[float, int]] = field(default_factory=dict)


def _choice(payload: dict[str, Any]) -> tuple[str | None, int]:
    p = payload.get("pairwise")
    if p:
        return p["choice"], int(p.get("strength") or 0)
    r = payload.get("ranking")
    if r and len(r) >= 2:
        return ("A" if r[0] < r[1] else "B" if r[1] < r[0] else "tie"), 1
    return None, 0


def load(project: Project) -> ProjectData:
    """Everything the figures need, in five queries. Of the items, only those judged or flagged
    are read whole (texts included): reading every item of a 100,000-item project with 3,000
    judgments took 3.4 s, most of the dashboard's and the review page's time."""
    non_gold = Item.objects.filter(project=project, is_gold=False)
    # No ordering in the union's parts: SQLite refuses ORDER BY inside a compound statement.
    judged = Judgment.objects.filter(item__project=project).order_by().values("item_id")
    flagged = Assignment.objects.filter(item__project=project, flagged=True).order_by().values("item_id")
    items: dict[int, Mapping[str, Any]] = {
        i["id"]: i
        for i in non_gold.filter(id__in=judged.union(flagged)).values(
            "id", "external_id", "responses", "metadata", "status", "split", "prompt"
        )
    }
    labelers: dict[int, Mapping[str, Any]] = {
        lab["id"]: lab
        for lab in Labeler.objects.filter(Q(project=project) | Q(judgments__item__project=project))
        .distinct()
        .values("id", "kind", "name", "user__username")
    }
    judgments = []
    rows = (
        Judgment.objects.filter(item__project=project, item__is_gold=False)
        .values_list(
            "item_id",
            "labeler_id",
            "payload",
            "response_order",
            "time_spent_ms",
            "created_at",
            "raw_output",
            "confidence",
        )
        .order_by("id")
    )
    for item_id, labeler_id, payload, order, time_ms, created, raw, confidence in rows.iterator(chunk_size=5000):
        choice, strength = _choice(payload)
        source = source_of_kind(labelers[labeler_id]["kind"])
        ai = source == LabelSource.AI
        judgments.append(
            _J(
                item_id,
                labeler_id,
                source,
                choice,
                strength,
                payload.get("ranking"),
                payload.get("rubric"),
                order[0] if order else None,
                time_ms,
                created,
                order_consistent(raw) if ai else None,
                tuple(shown_answers(raw)) if ai else (),
                confidence,
            )
        )
    gold = {
        row["labeler_id"]: (row["total"], row["n"])
        for row in Judgment.objects.filter(item__project=project, item__is_gold=True, gold_score__isnull=False)
        .order_by()
        .values("labeler_id")
        .annotate(total=Sum("gold_score"), n=Count("id"))
    }
    data = ProjectData(project, items, labelers, judgments, item_count=non_gold.count(), gold=gold)
    data.abstentions = _abstentions(project, items, labelers)
    for j in judgments:
        data.by_item(j.source).setdefault(j.item_id, []).append(j)
    return data


def _abstentions(
    project: Project, items: dict[int, Mapping[str, Any]], labelers: dict[int, Mapping[str, Any]]
) -> list[tuple[int, int, tuple[ShownAnswer, ...]]]:
    """Each AI labeler's abstentions on the project's items (once per labeler and item), with
    their answers; the items are added to `items` (their texts feed the length bias)."""
    from models_srv.models import AILabelFailure

    rows = (
        AILabelFailure.objects.filter(run__project=project, abstained=True, item__is_gold=False)
        .order_by("id")
        .values_list("run__labeler_id", "item_id", "raw_output")
    )
    out, seen = [], set()
    for labeler_id, item_id, raw in rows.iterator(chunk_size=5000):
        if (labeler_id, item_id) not in seen and labeler_id in labelers:
            seen.add((labeler_id, item_id))
            out.append((labeler_id, item_id, tuple(shown_answers(raw))))
    missing = {item_id for _, item_id, _ in out} - items.keys()
    for row in Item.objects.filter(id__in=missing).values(
        "id", "external_id", "responses", "metadata", "status", "split", "prompt"
    ):
        items[row["id"]] = row
    return out


def labeler_name(data: ProjectData, labeler_id: int) -> str:
    lab = data.labelers[labeler_id]
    return lab["user__username"] or lab["name"]


def human_consensus(data: ProjectData, source: str = LabelSource.HUMAN) -> dict[int, Consensus]:
    """Each item's pairwise consensus of one source: the annotators' by default (or the imported labels')."""
    return {
        item_id: pairwise_consensus([(j.choice, j.strength) for j in js if j.choice])
        for item_id, js in data.by_item(source).items()
        if any(j.choice for j in js)
    }


def reference_consensus(data: ProjectData) -> dict[int, Consensus]:
    """The label a curator checks an item against: its annotators' consensus, or for an item no
    annotator judged, its imported labels' consensus (what noisy-label detection reviews)."""
    return {**human_consensus(data, LabelSource.IMPORTED), **human_consensus(data)}


def _signed(j: _J) -> float | None:
    if j.choice is None:
        return None
    return 0.0 if j.choice == "tie" else (-1 if j.choice == "A" else 1) * max(1, j.strength)


def agreement(data: ProjectData, source: str = LabelSource.HUMAN) -> dict[str, Any]:
    """Agreement within one source's judgments (annotators by default; imported labels apart)."""
    units = [js for js in data.by_item(source).values() if len(js) >= 2]
    out: dict[str, Any] = {"items_with_overlap": len(units)}
    if any(j.choice for js in units for j in js):
        out["alpha_strength_ordinal"] = _r(krippendorff_alpha([[_signed(j) for j in js] for js in units], "ordinal"))
        out["kappa_choice_fleiss"] = _r(fleiss_kappa([[j.choice for j in js if j.choice] for js in units]))
        out["percent_agreement"] = _r(pairwise_agreement([[j.choice for j in js] for js in units]))
    rankings = [[j.ranking for j in js if j.ranking] for js in units]
    ws = [ranking_consensus(r)[1] for r in rankings if len(r) >= 2]
    if ws:
        out["kendall_w_mean"] = _r(sum(ws) / len(ws))
    aspects: dict[str, list[list[float | None]]] = defaultdict(list)
    for js in units:
        rated = [j.rubric for j in js if j.rubric]
        if len(rated) < 2:
            continue
        for k in range(len(rated[0])):
            for aspect in rated[0][k]:
                aspects[aspect].append([r[k].get(aspect) if k < len(r) else None for r in rated])
    if aspects:
        out["alpha_rubric_ordinal"] = {a: _r(krippendorff_alpha(u, "ordinal")) for a, u in sorted(aspects.items())}
    return out


def agreement_by_week(data: ProjectData) -> list[dict[str, Any]]:
    """Krippendorff's alpha (ordinal, signed strength) of the annotators, week by week: each item
    with 2+ annotators' judgments counts in the ISO week of its last one (when it was complete),
    so a week's alpha is that of the items finished then; `units` is how many."""
    weeks: dict[tuple[int, int], list[list[float | None]]] = defaultdict(list)
    for js in data.by_item_human.values():
        if len(js) < 2 or not any(j.choice for j in js):
            continue
        year, week, _ = max(j.created_at for j in js).isocalendar()
        weeks[(year, week)].append([_signed(j) for j in js])
    return [
        {"week": f"{year}-W{week:02d}", "alpha": _r(krippendorff_alpha(units, "ordinal")), "units": len(units)}
        for (year, week), units in sorted(weeks.items())
    ]


def annotators(data: ProjectData, consensus: dict[int, Consensus]) -> list[dict[str, Any]]:
    from curation.metrics import annotator_vs_consensus

    # Each annotator against the others of the same source: imported labels are not held against
    # the annotators' majority, nor the annotators against the imported labels'.
    loo = {}
    for source in (LabelSource.HUMAN, LabelSource.IMPORTED):
        loo.update(
            annotator_vs_consensus(
                (j.item_id, j.labeler_id, j.choice) for js in data.by_item(source).values() for j in js if j.choice
            )
        )
    per: dict[int, list[_J]] = defaultdict(list)
    for j in data.judgments:
        if j.source != LabelSource.AI:
            per[j.labeler_id].append(j)
    for lab_id in data.gold:  # an annotator who has answered only gold items so far
        kind = data.labelers.get(lab_id, {}).get("kind")
        if kind and source_of_kind(kind) != LabelSource.AI:
            per.setdefault(lab_id, [])
    users = {lab_id: lab for lab_id, lab in data.labelers.items() if lab["kind"] == "human"}
    skips = dict(
        Assignment.objects.filter(item__project=data.project, state="skipped")
        .values_list("annotator__labeler__id")
        .annotate(n=Count("id"))
        .values_list("annotator__labeler__id", "n")
    )
    flags = dict(
        Assignment.objects.filter(item__project=data.project, flagged=True)
        .values_list("annotator__labeler__id")
        .annotate(n=Count("id"))
        .values_list("annotator__labeler__id", "n")
    )
    rows = []
    for lab_id, js in per.items():
        agreed, compared = loo.get(lab_id, (0, 0))
        gold_total, gold_n = data.gold.get(lab_id, (0.0, 0))
        times = [j.time_ms for j in js if j.time_ms]
        agreement_ci = wilson_interval(agreed, compared) or (None, None)
        # Gold scores may be fractions (a rubric's share right): the interval of their mean is
        # Wilson's with the sum of scores as the successes, an approximation there.
        gold_ci = wilson_interval(gold_total, gold_n) or (None, None)
        rows.append(
            {
                "annotator": labeler_name(data, lab_id),
                "kind": data.labelers[lab_id]["kind"],
                "source": js[0].source,
                "judgments": len(js),
                "agreement_with_consensus": _r(agreed / compared) if compared else None,
                "compared": compared,
                "agreement_low": _r(agreement_ci[0]),
                "agreement_high": _r(agreement_ci[1]),
                "gold_accuracy": _r(gold_total / gold_n) if gold_n else None,
                "gold_items": gold_n,
                "gold_low": _r(gold_ci[0]),
                "gold_high": _r(gold_ci[1]),
                "median_seconds": _r(statistics.median(times) / 1000, 1) if times else None,
                "skips": skips.get(lab_id, 0) if lab_id in users else None,
                "flags": flags.get(lab_id, 0) if lab_id in users else None,
            }
        )
    return sorted(rows, key=lambda r: (r["source"] != LabelSource.HUMAN, -r["judgments"], r["annotator"]))


def human_vs_ai(data: ProjectData, consensus: dict[int, Consensus]) -> list[dict[str, Any]]:
    """Agreement of other sources with a reference: AI labelers and imported labels against the
    annotators' consensus (`consensus`), and AI labelers against the imported labels' consensus."""
    imported = human_consensus(data, LabelSource.IMPORTED)
    comparisons = (
        (LabelSource.AI, LabelSource.HUMAN, consensus),
        (LabelSource.IMPORTED, LabelSource.HUMAN, consensus),
        (LabelSource.AI, LabelSource.IMPORTED, imported),
    )
    per: dict[tuple[int, LabelSource], list[tuple[str, bool]]] = defaultdict(list)
    for source, reference, against in comparisons:
        for item_id, js in data.by_item(source).items():
            c = against.get(item_id)
            if c is None or c.label is None:
                continue
            category = str((data.items.get(item_id) or {}).get("metadata", {}).get("category", "")) or "(none)"
            for j in js:
                if j.choice:
                    per[(j.labeler_id, reference)].append((category, j.choice == c.label))
    rows = []
    for (lab_id, reference), hits in per.items():
        by_cat: dict[str, list[bool]] = defaultdict(list)
        for cat, ok in hits:
            by_cat[cat].append(ok)
        kind = data.labelers[lab_id]["kind"]
        rows.append(
            {
                "labeler": labeler_name(data, lab_id),
                "kind": kind,
                "source": source_of_kind(kind).value,
                "reference": reference.value,
                "items": len(hits),
                "agreement": _r(sum(ok for _, ok in hits) / len(hits)),
                "by_category": {c: {"n": len(v), "agreement": _r(sum(v) / len(v))} for c, v in sorted(by_cat.items())},
            }
        )
    return sorted(rows, key=lambda r: (r["reference"] != LabelSource.HUMAN, r["source"], r["labeler"]))


def biases(data: ProjectData) -> list[dict[str, Any]]:
    """Per group (annotators, imported labels, each AI labeler by name): label distribution,
    position and length bias. A figure with nothing behind it is None (shown "n/a")."""
    groups: dict[str, list[_J]] = defaultdict(list)
    # (item id, answer) for each AI group: every answer its labelers gave, abstentions included.
    answers: dict[str, list[tuple[int, ShownAnswer]]] = defaultdict(list)
    abstained: Counter[str] = Counter()
    pooled: dict[str, str] = {LabelSource.HUMAN: "annotators", LabelSource.IMPORTED: "imported"}
    for j in data.judgments:
        if j.choice:
            group = pooled.get(j.source)
            groups[group or labeler_name(data, j.labeler_id)].append(j)
            answers[group or labeler_name(data, j.labeler_id)] += [(j.item_id, a) for a in j.answers]
    for labeler_id, item_id, given in data.abstentions:
        name = labeler_name(data, labeler_id)
        groups.setdefault(name, [])
        abstained[name] += 1
        answers[name] += [(item_id, a) for a in given]
    rows = []
    first = {"annotators": 0, "imported": 1}
    for name, js in sorted(groups.items(), key=lambda kv: (first.get(kv[0], 2), kv[0])):
        texts = {i: (data.items.get(i) or {}).get("responses") or [] for i in {j.item_id for j in js}}
        texts.update({i: (data.items.get(i) or {}).get("responses") or [] for i, _ in answers[name]})
        if answers[name]:  # an AI labeler: each answer in the order it was asked
            shown = [a.choice for _, a in answers[name]]
            stored = [(i, a.stored_choice) for i, a in answers[name]]
        else:
            shown = []
            for j in js:
                if j.shown_first is not None:
                    first_shown = "A" if j.shown_first == 0 else "B"
                    shown.append("tie" if j.choice == "tie" else "A" if j.choice == first_shown else "B")
            stored = [(j.item_id, j.choice) for j in js if j.choice]  # all of them: grouped with a choice
        lengths = [
            (len(texts[i][0]["text"]), len(texts[i][1]["text"]), choice) for i, choice in stored if len(texts[i]) >= 2
        ]
        pos, length = position_bias(shown), length_bias(lengths)
        pos_ci = wilson_interval(pos.hits, pos.n) or (None, None)
        length_ci = wilson_interval(length.hits, length.n) or (None, None)
        rows.append(
            {
                "labeler": name,
                "judgments": len(js),
                "abstained": abstained[name],
                "distribution": label_distribution([j.choice for j in js], ["A", "B", "tie"]),
                "first_shown_wins": _r(pos.share),
                "first_shown_p": _r(pos.p_value, 4) if pos.n else None,
                "first_shown_n": pos.n,
                "first_shown_low": _r(pos_ci[0]),
                "first_shown_high": _r(pos_ci[1]),
                "longer_wins": _r(length.share),
                "longer_p": _r(length.p_value, 4) if length.n else None,
                "longer_n": length.n,
                "longer_low": _r(length_ci[0]),
                "longer_high": _r(length_ci[1]),
            }
        )
    return rows


# The drift series' groups and their headings on the dashboard (the keys name the CSV's groups).
DRIFT_GROUPS = {"annotators": "Annotators", "ai_labelers": "AI labelers", "categories": "Categories"}


def drift(
    data: ProjectData, consensus: dict[int, Consensus], bucket: Literal["day", "week"] = "week"
) -> dict[str, Any]:
    """Weekly agreement with the human consensus, per annotator (leave-one-out), AI labeler and category."""
    people, ai, cats = [], [], []
    for item_id, js in data.by_item_human.items():
        category = str((data.items.get(item_id) or {}).get("metadata", {}).get("category", "")) or "(none)"
        for j in js:
            others = [(o.choice, o.strength) for o in js if o is not j and o.choice]
            if not j.choice or not others:
                continue
            c = pairwise_consensus(others)
            if c.label is None:
                continue
            people.append((j.created_at, labeler_name(data, j.labeler_id), j.choice == c.label))
            cats.append((j.created_at, category, j.choice == c.label))
    for item_id, js in data.by_item_ai.items():
        found = consensus.get(item_id)
        if found is None or found.label is None:
            continue
        for j in js:
            if j.choice:
                ai.append((j.created_at, labeler_name(data, j.labeler_id), j.choice == found.label))

    def series(rows: list[tuple[datetime, str, bool]]) -> dict[str, list[dict[str, Any]]]:
        return {
            str(k): [{"bucket": p.bucket, "share": _r(p.share), "n": p.n} for p in points]
            for k, points in sorted(agreement_over_time(rows, bucket).items(), key=lambda kv: str(kv[0]))
        }

    return {"annotators": series(people), "ai_labelers": series(ai), "categories": series(cats)}


def leaderboard(data: ProjectData, bootstrap: int = 200) -> dict[str, list[dict[str, Any]]]:
    """Bradley-Terry over the responses' source models, from each source's labels (annotators,
    imported, AI; imported only where there are any)."""
    out = {}
    for source in LabelSource.values:
        if source == LabelSource.IMPORTED and not data.by_item_imported:
            continue
        comparisons = []
        for j in data.judgments:
            if j.source != source:
                continue
            models = [str(r.get("model") or "") for r in (data.items.get(j.item_id) or {}).get("responses", [])]
            if len(models) < 2 or not all(models):
                continue
            if j.ranking and len(j.ranking) == len(models):
                for a in range(len(models)):
                    for b in range(a + 1, len(models)):
                        ra, rb = j.ranking[a], j.ranking[b]
                        comparisons.append((models[a], models[b], 1.0 if ra < rb else 0.0 if rb < ra else 0.5))
            elif j.choice:
                comparisons.append((models[0], models[1], {"A": 1.0, "B": 0.0, "tie": 0.5}[j.choice]))
        rows = bradley_terry(comparisons, bootstrap=bootstrap, seed=0) if comparisons else []
        out[source] = [
            {
                "rank": r.rank,
                "model": r.model,
                "rating": _r(r.rating, 1),
                "ci_low": _r(r.ci_low, 1),
                "ci_high": _r(r.ci_high, 1),
                "wins": r.wins,
                "losses": r.losses,
                "ties": r.ties,
                "comparisons": r.n,
            }
            for r in rows
        ]
    return out


def reward_models(project: Project) -> list[dict[str, Any]]:
    from models_srv.models import RewardModelVersion

    rows = []
    for v in RewardModelVersion.objects.filter(project=project, status="succeeded").order_by("version"):
        m = v.metrics or {}
        pw, rk = m.get("pairwise") or {}, m.get("ranking") or {}
        rows.append(
            {
                "version": v.version,
                "created_at": v.created_at.isoformat(timespec="minutes"),
                "pairwise_accuracy": pw.get("accuracy"),
                "ece": pw.get("ece"),
                "ranking_pairwise_accuracy": rk.get("pairwise_accuracy"),
                "top1_accuracy": rk.get("top1_accuracy"),
                "current": v.is_current,
            }
        )
    return rows


REPORT_CACHE_SECONDS = 60


def cached_report(project: Project, *, fresh: bool = False) -> dict[str, Any]:
    """`report()`, kept for a minute per project so that the dashboard and its CSV downloads do
    not recompute a large project's figures (bootstrap included) on every request; `fresh`
    recomputes now. The result carries `computed_at`."""
    from django.core.cache import cache
    from django.utils import timezone

    key = f"quality-report:{project.pk}"
    rep = None if fresh else cache.get(key)
    if rep is None:
        rep = report(project)
        rep["computed_at"] = timezone.now()
        cache.set(key, rep, timeout=REPORT_CACHE_SECONDS)
    return rep


def report(project: Project, *, bootstrap: int = 200) -> dict[str, Any]:
    data = load(project)
    consensus = human_consensus(data)
    ds = dawid_skene(
        [(j.item_id, j.labeler_id, j.choice) for js in data.by_item_human.values() for j in js if j.choice],
        ["A", "B", "tie"],
        iterations=200,
    )
    tied = sum(1 for c in consensus.values() if c.tied)
    low = sum(1 for c in consensus.values() if c.n >= 2 and c.agreement < LOW_AGREEMENT)
    return {
        "overview": {
            "items": data.item_count,
            "judged_by_humans": len(data.by_item_human),
            "judged_by_ai": len(data.by_item_ai),
            "judged_by_imported": len(data.by_item_imported),
            "human_judgments": sum(1 for j in data.judgments if j.source == LabelSource.HUMAN),
            "imported_judgments": sum(1 for j in data.judgments if j.source == LabelSource.IMPORTED),
            "ai_judgments": sum(1 for j in data.judgments if j.source == LabelSource.AI),
            "tied_items": tied,
            "low_agreement_items": low,
            "majority_vs_dawid_skene_differ": sum(
                1 for i, c in consensus.items() if c.label and ds.labels.get(i) and ds.labels[i] != c.label
            ),
        },
        "agreement": agreement(data),
        "agreement_imported": agreement(data, LabelSource.IMPORTED),
        "agreement_by_week": agreement_by_week(data),
        "annotators": annotators(data, consensus),
        "human_vs_ai": human_vs_ai(data, consensus),
        "biases": biases(data),
        "drift": drift(data, consensus),
        "leaderboard": leaderboard(data, bootstrap),
        "reward_models": reward_models(project),
        "ai_consensus": ai_consensus_table(data, consensus),
        "kappa_pairs": kappa_pairs(data),
        "groups": preference_groups(data),
    }


def preference_groups(data: ProjectData) -> dict[str, Any] | None:
    """The preference groups panel (`curation.groups`) of the project's latest pluralistic reward
    model, or None when it has none."""
    from curation.groups import panel
    from models_srv.selectors import pluralistic_latest, unplaced_labelers

    found = pluralistic_latest(data.project)
    if found is None:
        return None
    return {**panel(data, found), "unplaced": unplaced_labelers(found)}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)
