"""The Quality page's preference groups: what a pluralistic reward model found
(`models_srv.selectors.pluralistic_latest`) and, from the project's own judgments read with its
group map, what separates the groups.

- the groups: size (the model's share of annotators), members with the posterior of their group;
- the items where the groups' votes differ most: per item each group's share of A / B / tie among
  its members' judgments, scored by the largest total-variation distance between two groups (1 =
  they voted opposite ways unanimously); their majorities side by side;
- per rubric aspect: the mean gap between the groups' mean ratings of the same response;
- the length effect: how often each group's longer response wins (ties and equal lengths aside,
  `curation.metrics.length_bias`, Wilson interval);
- the category effect: per item category (`metadata.category`, as the rest of the page), the share
  of items two groups both voted on whose majorities differ;
- agreement within against across: over every pair of annotators who judged the same item, the
  share of pairs with the same choice, for pairs in the same group and pairs in different groups.

Only judgments of labelers in the group map count (the model's training annotators)."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from curation.consensus import pairwise_consensus
from curation.metrics import length_bias, wilson_interval
from curation.quality import _J, ProjectData, _r, labeler_name
from models_srv.selectors import PreferenceGroups

TOP_ITEMS = 10
CHOICES = ("A", "B", "tie")


def _category(data: ProjectData, item_id: int) -> str:
    return str((data.items.get(item_id) or {}).get("metadata", {}).get("category", "")) or "(none)"


def _share(hits: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(hits, n) or (None, None)
    return {"share": _r(hits / n) if n else None, "low": _r(low), "high": _r(high), "n": n}


def _item_votes(js: list[_J], member: dict[int, tuple[int, float]]) -> dict[int, list[_J]]:
    by: dict[int, list[_J]] = defaultdict(list)
    for j in js:
        if j.labeler_id in member:
            by[member[j.labeler_id][0]].append(j)
    return by


def _distance(a: list[_J], b: list[_J]) -> float:
    """Total-variation distance between two groups' shares of A / B / tie."""
    ca, cb = Counter(j.choice for j in a), Counter(j.choice for j in b)
    return 0.5 * sum(abs(ca[c] / len(a) - cb[c] / len(b)) for c in CHOICES)


def panel(data: ProjectData, found: PreferenceGroups, top: int = TOP_ITEMS) -> dict[str, Any]:
    member = found.members()
    numbers = [int(g["group"]) for g in found.groups]
    lengths: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    pairs: dict[int | None, list[bool]] = defaultdict(list)  # group (None: across groups) -> agreed?
    items: list[dict[str, Any]] = []
    cats: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # category -> [items compared, majorities differ]
    judged: Counter[int] = Counter()
    aspects: dict[str, list[float]] = defaultdict(list)  # aspect -> gaps between group means
    aspect_means: dict[tuple[str, int], list[float]] = defaultdict(list)
    by_item: dict[int, list[_J]] = defaultdict(list)
    for j in data.judgments:
        if j.labeler_id in member:
            by_item[j.item_id].append(j)
    for item_id, js in sorted(by_item.items()):
        texts = (data.items.get(item_id) or {}).get("responses") or []
        chosen = [j for j in js if j.choice]
        for j in chosen:
            g = member[j.labeler_id][0]
            judged[g] += 1
            if len(texts) >= 2:
                lengths[g].append((len(texts[0]["text"]), len(texts[1]["text"]), str(j.choice)))
        for a, b in combinations(chosen, 2):
            if a.labeler_id != b.labeler_id:
                ga, gb = member[a.labeler_id][0], member[b.labeler_id][0]
                pairs[ga if ga == gb else None].append(a.choice == b.choice)
        votes = _item_votes(chosen, member)
        if len(votes) >= 2:
            majority = {g: pairwise_consensus([(str(j.choice), j.strength) for j in v]).label for g, v in votes.items()}
            decided = {label for label in majority.values() if label is not None}
            differ = len(decided) > 1
            cat = _category(data, item_id)
            cats[cat][0] += 1
            cats[cat][1] += differ
            score = max(_distance(votes[g], votes[h]) for g, h in combinations(sorted(votes), 2))
            it = data.items.get(item_id) or {}
            items.append(
                {
                    "item_id": item_id,
                    "external_id": it.get("external_id", ""),
                    "prompt": str(it.get("prompt", ""))[:160],
                    "category": cat,
                    "score": round(score, 3),
                    "differ": differ,
                    "groups": [
                        {
                            "group": g,
                            "majority": majority.get(g),
                            "votes": dict(Counter(str(j.choice) for j in votes.get(g, []))),
                        }
                        for g in numbers
                    ],
                }
            )
        _rubric_gaps(js, member, aspects, aspect_means)
    items.sort(key=lambda r: (-r["score"], not r["differ"], r["external_id"]))
    groups: list[dict[str, Any]] = []
    for grp in found.groups:
        n = int(grp["group"])
        bias = length_bias(lengths[n])
        within = pairs.get(n, [])
        groups.append(
            {
                "group": n,
                "size": grp.get("size"),
                "length_weight": grp.get("length_weight"),
                "members": sorted(
                    (
                        {
                            "labeler": labeler_name(data, int(m["labeler"])),
                            "confidence": m["confidence"],
                            "placed_from": m.get("placed_from"),
                        }
                        for m in grp["members"]
                        if int(m["labeler"]) in data.labelers
                    ),
                    key=lambda m: (-m["confidence"], m["labeler"]),
                ),
                "judgments": judged[n],
                "longer_wins": _share(bias.hits, bias.n),
                "within": _share(sum(within), len(within)),
            }
        )
    within_all = [ok for g, oks in pairs.items() if g is not None for ok in oks]
    across = pairs.get(None, [])
    version = found.version
    return {
        "version": {"version": version.version, "uuid": str(version.uuid), "current": version.is_current},
        "k": found.k,
        "groups": groups,
        "placed": sum(1 for grp in groups for m in grp["members"] if m["placed_from"]),
        "agreement": {"within": _share(sum(within_all), len(within_all)), "across": _share(sum(across), len(across))},
        "items": items,  # the page shows the first `top`, the CSV all
        "top": top,
        "items_compared": len(items),
        "items_differ": sum(1 for r in items if r["differ"]),
        "aspects": [
            {
                "aspect": a,
                "responses": len(gaps),
                "mean_gap": _r(sum(gaps) / len(gaps)),
                "means": {n: _mean(aspect_means.get((a, n), [])) for n in numbers},
            }
            for a, gaps in sorted(aspects.items())
        ],
        "categories": [
            {"category": c, "items": n, "differ": d, "share": _r(d / n)} for c, (n, d) in sorted(cats.items())
        ],
    }


def _mean(values: list[float]) -> float | None:
    return _r(sum(values) / len(values)) if values else None


def _rubric_gaps(
    js: list[_J],
    member: dict[int, tuple[int, float]],
    gaps: dict[str, list[float]],
    means: dict[tuple[str, int], list[float]],
) -> None:
    """Per aspect and response of one item: each group's mean rating, and the gap between the
    highest and lowest group mean where two groups or more rated it."""
    ratings: dict[tuple[str, int], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in js:
        for k, scores in enumerate(j.rubric or []):
            for aspect, value in (scores or {}).items():
                if isinstance(value, int | float):
                    ratings[(aspect, k)][member[j.labeler_id][0]].append(float(value))
    for (aspect, _), per_group in ratings.items():
        group_means = {g: sum(v) / len(v) for g, v in per_group.items()}
        for g, m in group_means.items():
            means[(aspect, g)].append(m)
        if len(group_means) >= 2:
            gaps[aspect].append(max(group_means.values()) - min(group_means.values()))
