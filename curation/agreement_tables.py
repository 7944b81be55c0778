"""Two tables of the Quality dashboard, read from the same pass over the judgments (`quality.load`):

- the AI labelers' consensus per item, by majority and weighted by each judgment's stored
  confidence (0.5 where none is stored): the rule of `models_srv.labeling.ai_consensus`, here for
  every item at once and without a query per item, skipping the same labelers where the project
  requires audited ones. An A/B split counts as a tie, as there. Each
  method's answers are counted and set against the annotators' consensus and the imported labels';
  the items where the two methods differ are listed;
- Cohen's kappa on the pairwise choice (A / B / tie; for rankings, the first two responses) for
  every pair of labelers with items in common: annotators, imported labelers and AI labelers alike,
  so a pair of annotators who read the guidelines differently stands out, and so does an AI labeler
  that agrees with one annotator and not another.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import TYPE_CHECKING, Any

from annotation.models import LabelSource, source_of_kind
from curation.consensus import Consensus, pairwise_consensus
from curation.metrics import cohen_kappa

if TYPE_CHECKING:
    from curation.quality import ProjectData

AI_METHODS = ("majority", "weighted")
AI_DEFAULT_CONFIDENCE = 0.5  # the weight of an AI judgment stored without a confidence
DIFFERING_SHOWN = 20  # items where the methods differ, on the page (all of them in the CSV)


def _label(c: Consensus) -> str | None:
    """An A/B split is a tie, as `ai_consensus` answers it."""
    return "tie" if c.tied else c.label


def ai_consensus_items(data: ProjectData) -> dict[int, dict[str, Consensus]]:
    """Each AI-judged item's consensus by each method, among the labelers the project's audit gate
    lets through (all of them unless it requires audited labelers), as `ai_consensus` counts."""
    from models_srv.judge_audit import audit_gate

    gate = audit_gate(data.project)
    out = {}
    for item_id, judged in data.by_item_ai.items():
        js = [j for j in judged if gate.allows(j.labeler_id)]
        votes = [(j.choice, j.strength) for j in js if j.choice]
        if not votes:
            continue
        weights = [j.confidence if j.confidence is not None else AI_DEFAULT_CONFIDENCE for j in js if j.choice]
        out[item_id] = {"majority": pairwise_consensus(votes), "weighted": pairwise_consensus(votes, weights)}
    return out


def ai_consensus_table(data: ProjectData, annotators: dict[int, Consensus]) -> dict[str, Any]:
    """Per method: items, answers, mean agreement behind the answer, and agreement with the
    annotators' and the imported labels' consensus; then the items where the methods differ."""
    from curation.quality import _r, human_consensus

    per_item = ai_consensus_items(data)
    references = {
        "annotators": {i: c.label for i, c in annotators.items() if c.label},
        "imported": {i: c.label for i, c in human_consensus(data, LabelSource.IMPORTED).items() if c.label},
    }
    methods = []
    for method in AI_METHODS:
        labels = {i: _label(m[method]) for i, m in per_item.items()}
        row: dict[str, Any] = {
            "method": method,
            "items": len(labels),
            "A": sum(v == "A" for v in labels.values()),
            "B": sum(v == "B" for v in labels.values()),
            "tie": sum(v == "tie" for v in labels.values()),
            "mean_agreement": _r(sum(m[method].agreement for m in per_item.values()) / len(per_item))
            if per_item
            else None,
        }
        for name, reference in references.items():
            both = [i for i in labels if i in reference]
            row[f"vs_{name}_items"] = len(both)
            row[f"vs_{name}"] = _r(sum(labels[i] == reference[i] for i in both) / len(both)) if both else None
        methods.append(row)
    differ = []
    for item_id, m in sorted(per_item.items()):
        majority, weighted = _label(m["majority"]), _label(m["weighted"])
        if majority != weighted:
            differ.append(
                {
                    "external_id": (data.items.get(item_id) or {}).get("external_id", str(item_id)),
                    "ai_judgments": m["majority"].n,
                    "majority": majority,
                    "majority_agreement": _r(m["majority"].agreement),
                    "weighted": weighted,
                    "weighted_agreement": _r(m["weighted"].agreement),
                    "annotators": references["annotators"].get(item_id),
                }
            )
    return {"methods": methods, "differ": differ, "differ_shown": differ[:DIFFERING_SHOWN]}


def kappa_pairs(data: ProjectData) -> list[dict[str, Any]]:
    """Cohen's kappa and percent agreement on the choice for every pair of labelers sharing an
    item (a labeler's latest judgment of an item counts); the pairs with most items first."""
    from curation.quality import _r, labeler_name

    latest: dict[int, dict[int, str]] = defaultdict(dict)  # item -> labeler -> choice
    for j in data.judgments:  # in id order: a later judgment of the same labeler replaces one
        if j.choice:
            latest[j.item_id][j.labeler_id] = j.choice
    shared: dict[tuple[int, int], list[tuple[str, str]]] = defaultdict(list)
    for choices in latest.values():
        for a, b in combinations(sorted(choices), 2):
            shared[(a, b)].append((choices[a], choices[b]))
    rows = []
    for (a, b), pairs in shared.items():
        left, right = [x for x, _ in pairs], [y for _, y in pairs]
        rows.append(
            {
                "labeler_a": labeler_name(data, a),
                "source_a": source_of_kind(data.labelers[a]["kind"]).value,
                "labeler_b": labeler_name(data, b),
                "source_b": source_of_kind(data.labelers[b]["kind"]).value,
                "items": len(pairs),
                "percent_agreement": _r(sum(x == y for x, y in pairs) / len(pairs)),
                "cohen_kappa": _r(cohen_kappa(left, right)),
            }
        )
    order = {LabelSource.HUMAN: 0, LabelSource.IMPORTED: 1, LabelSource.AI: 2}
    return sorted(
        rows,
        key=lambda r: (
            order[LabelSource(r["source_a"])] + order[LabelSource(r["source_b"])],
            -r["items"],
            r["labeler_a"],
            r["labeler_b"],
        ),
    )
