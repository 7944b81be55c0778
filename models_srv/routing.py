"""Routing items between humans and AI labelers under a human budget ("Hybrid Preferences").

- Features per item, cheap and without an LLM: prompt and response lengths and their ratio,
  lexical overlap between the responses, metadata category, the AI labelers' confidence, agreement
  and order-swap consistency, and the current reward model's margin and ensemble spread.
- The calibration slice: items labeled by both humans and AI. On it a scikit-learn model learns
  P(AI label disagrees with the human consensus | features).
- Allocation: within the budget, the items with the highest predicted disagreement go to humans,
  the rest to AI; the human queue serves them in that order (Item.priority).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max

from annotation.models import Item, Judgment, Project
from models_srv.models import ResponseScore, RewardModelVersion, RouterVersion

_WORD = re.compile(r"\w+", re.U)
NUMERIC = [
    "log_prompt_chars",
    "log_len_a",
    "log_len_b",
    "len_ratio",
    "abs_log_len_ratio",
    "overlap",
    "n_turns",
    "ai_confidence",
    "ai_agreement",
    "ai_order_consistent",
    "ai_count",
    "rm_margin",
    "rm_uncertainty",
]


@dataclass
class ItemFeatures:
    item_id: int
    values: dict[str, float]


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _pref_sign(payload: dict[str, Any]) -> int | None:
    p = payload.get("pairwise")
    if p:
        return {"A": -1, "B": 1, "tie": 0}[p["choice"]]
    ranking = payload.get("ranking")
    if ranking and len(ranking) >= 2:
        return (ranking[0] > ranking[1]) - (ranking[0] < ranking[1])
    return None


def item_features(project: Project, items: list[Item] | None = None) -> list[ItemFeatures]:
    """Features of every (or the given) item of a pairwise or ranking project, in a few queries."""
    items = items if items is not None else list(Item.objects.filter(project=project, is_gold=False).order_by("id"))
    ids = [it.id for it in items]
    ai: dict[int, list[Judgment]] = defaultdict(list)
    for j in (
        Judgment.objects.filter(item_id__in=ids)
        .select_related("labeler")
        .exclude(labeler__kind__in=["human", "imported"])
    ):
        ai[j.item_id].append(j)
    current = RewardModelVersion.objects.filter(project=project, is_current=True).first()
    scores: dict[int, dict[int, tuple[float, float]]] = defaultdict(dict)
    if current is not None:
        for s in ResponseScore.objects.filter(version=current, item_id__in=ids):
            scores[s.item_id][s.response_index] = (s.score, s.uncertainty)
    categories = Counter(str((it.metadata or {}).get("category", "")) for it in items)
    common = [c for c, _ in categories.most_common(8) if c]
    out = []
    for it in items:
        texts = [r["text"] for r in it.responses]
        la, lb = len(texts[0]), len(texts[1]) if len(texts) > 1 else 0
        wa, wb = _words(texts[0]), _words(texts[1]) if len(texts) > 1 else set()
        v = {
            "log_prompt_chars": math.log1p(len(it.prompt)),
            "log_len_a": math.log1p(la),
            "log_len_b": math.log1p(lb),
            "len_ratio": (la + 1) / (lb + 1),
            "abs_log_len_ratio": abs(math.log((la + 1) / (lb + 1))),
            "overlap": len(wa & wb) / max(1, len(wa | wb)),
            "n_turns": float(len(it.prompt_messages or [])),
        }
        js = ai.get(it.id, [])
        signs = [s for j in js if (s := _pref_sign(j.payload)) is not None]
        top = Counter(signs).most_common(1)
        v["ai_count"] = float(len(js))
        v["ai_confidence"] = sum(j.confidence or 0.5 for j in js) / len(js) if js else 0.5
        v["ai_agreement"] = top[0][1] / len(signs) if signs else 0.0
        consistent = [_order_consistent(j) for j in js]
        known = [c for c in consistent if c is not None]
        v["ai_order_consistent"] = sum(known) / len(known) if known else 1.0
        sc = scores.get(it.id, {})
        if 0 in sc and 1 in sc:
            v["rm_margin"] = abs(sc[1][0] - sc[0][0])
            v["rm_uncertainty"] = (sc[0][1] + sc[1][1]) / 2
        else:
            v["rm_margin"], v["rm_uncertainty"] = 0.0, 0.0
        category = str((it.metadata or {}).get("category", ""))
        for c in common:
            v[f"category={c}"] = 1.0 if category == c else 0.0
        out.append(ItemFeatures(it.id, v))
    return out


def _order_consistent(j: Judgment) -> bool | None:
    import json

    try:
        raw = json.loads(j.raw_output) if j.raw_output else {}
    except ValueError:
        return None
    value = raw.get("order_consistent") if isinstance(raw, dict) else None
    return bool(value) if value is not None else None


def consensus_sign(judgments: list[Judgment]) -> int | None:
    signs = [s for j in judgments if (s := _pref_sign(j.payload)) is not None]
    if not signs:
        return None
    (best, n), *rest = Counter(signs).most_common()
    return 0 if rest and rest[0][1] == n else best


def calibration_targets(project: Project) -> dict[int, int]:
    """For items judged by both humans and AI: 1 when the AI consensus disagrees with the humans'."""
    human: dict[int, list[Judgment]] = defaultdict(list)
    ai: dict[int, list[Judgment]] = defaultdict(list)
    for j in Judgment.objects.filter(item__project=project, item__is_gold=False).select_related("labeler"):
        (human if j.labeler.is_human else ai)[j.item_id].append(j)
    out = {}
    for item_id in human.keys() & ai.keys():
        h, a = consensus_sign(human[item_id]), consensus_sign(ai[item_id])
        if h is not None and a is not None:
            out[item_id] = int(h != a)
    return out


@dataclass
class Router:
    feature_names: list[str]
    model: Any
    scaler: Any

    def predict(self, feats: list[ItemFeatures]) -> list[float]:
        import numpy as np

        if not feats:
            return []
        x = np.array([[f.values.get(n, 0.0) for n in self.feature_names] for f in feats])
        return [float(p) for p in self.model.predict_proba(self.scaler.transform(x))[:, 1]]

    def top_features(self, f: ItemFeatures, k: int = 3) -> list[tuple[str, float]]:
        import numpy as np

        x = self.scaler.transform(np.array([[f.values.get(n, 0.0) for n in self.feature_names]]))[0]
        contrib = x * self.model.coef_[0]
        order = np.argsort(-np.abs(contrib))[:k]
        return [(self.feature_names[i], round(float(contrib[i]), 4)) for i in order]


def train_router(feats: list[ItemFeatures], targets: dict[int, int], seed: int = 0) -> Router:
    """Logistic regression on standardized features: P(the AI label disagrees with the humans)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rows = [f for f in feats if f.item_id in targets]
    y = np.array([targets[f.item_id] for f in rows])
    if len(rows) < 10 or len(set(y.tolist())) < 2:
        raise ValueError("the calibration slice needs at least 10 items with both outcomes to train a router")
    names = sorted({n for f in feats for n in f.values})
    x = np.array([[f.values.get(n, 0.0) for n in names] for f in rows])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed, class_weight="balanced").fit(
        scaler.transform(x), y
    )
    return Router(names, model, scaler)


def allocate(scores: dict[int, float], budget: int, calibration: set[int] = frozenset()) -> dict[int, str]:
    """Exactly `budget` items to humans (the highest scores; calibration items count against it and
    go to both), the rest to AI. Never over budget."""
    budget = max(0, min(budget, len(scores)))
    routes = {i: "both" for i in calibration if i in scores}
    left = budget - len(routes)
    if left < 0:
        raise ValueError(f"the calibration slice ({len(routes)} items) is larger than the human budget ({budget})")
    ranked = sorted((i for i in scores if i not in routes), key=lambda i: (-scores[i], i))
    for n, i in enumerate(ranked):
        routes[i] = "human" if n < left else "ai"
    return routes


def calibration_metrics(
    router: Router | None, feats: list[ItemFeatures], targets: dict[int, int], seed: int = 0
) -> dict[str, Any]:
    """Predicted vs observed disagreement on the calibration slice, with a cross-validated AUC."""
    observed = sum(targets.values()) / len(targets) if targets else None
    out: dict[str, Any] = {"calibration_items": len(targets), "observed_disagreement": observed}
    if router is None:
        return out
    rows = [f for f in feats if f.item_id in targets]
    predicted = router.predict(rows)
    out["predicted_disagreement"] = round(sum(predicted) / len(predicted), 4)
    y = [targets[f.item_id] for f in rows]
    if min(sum(y), len(y) - sum(y)) >= 3:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.array([[f.values.get(n, 0.0) for n in router.feature_names] for f in rows])
        folds = StratifiedKFold(n_splits=min(5, min(sum(y), len(y) - sum(y))), shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))
        p = cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]
        out["cv_auc"] = round(float(roc_auc_score(y, p)), 4)
    return out


def route_project(
    *, project: Project, calibration_fraction: float = 0.1, seed: int = 0, created_by: Any = None
) -> dict[str, int]:
    """(Re-)route every item within the human budget (`project.human_budget` x items).

    Items humans already judged spend the budget first (route `both` when AI judged them too).
    Then a random calibration share of the rest goes to `both`, so the router keeps learning; the
    remaining budget goes to the items with the highest predicted disagreement (or, before a router
    can be trained, the least confident AI side); everything else to `ai`. Each item keeps its
    score and top features; human items are served in score order (Item.priority)."""
    import random

    items = list(Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED).order_by("id"))
    feats = item_features(project, items)
    targets = calibration_targets(project)
    try:
        router = train_router(feats, targets, seed)
        scores = dict(zip([f.item_id for f in feats], router.predict(feats), strict=True))
    except ValueError:
        router = None  # cold start: the less sure the AI side, the more a human is worth
        scores = {f.item_id: (1 - f.values["ai_confidence"]) + f.values["rm_uncertainty"] for f in feats}
    budget = round(project.human_budget * len(items))
    labeled = set(
        Judgment.objects.filter(item__in=items, labeler__kind__in=["human", "imported"]).values_list(
            "item_id", flat=True
        )
    )
    fixed = {i: ("both" if i in targets else "human") for i in sorted(labeled)[:budget]}
    open_ids = [it.id for it in items if it.id not in labeled]
    left = max(0, budget - len(fixed))
    rng = random.Random(seed)
    want = min(left, max(0, round(calibration_fraction * len(items)) - len(targets)), len(open_ids))
    calibration = set(rng.sample(open_ids, want)) if want else set()
    routes = {**fixed, **allocate({i: scores[i] for i in open_ids}, left, calibration)}
    for i in labeled - fixed.keys():
        routes[i] = "ai"  # over budget already: no more human work on these
    by_id = {f.item_id: f for f in feats}
    counts = dict(Counter(routes.values()))
    with transaction.atomic():
        number = (RouterVersion.objects.filter(project=project).aggregate(n=Max("version"))["n"] or 0) + 1
        # A list, not an object: jsonb does not keep key order, and the order is the point.
        weights = (
            sorted(
                ([n, round(float(c), 4)] for n, c in zip(router.feature_names, router.model.coef_[0], strict=True)),
                key=lambda kv: -abs(kv[1]),
            )
            if router
            else []
        )
        version = RouterVersion.objects.create(
            project=project,
            version=number,
            learned=router is not None,
            budget=budget,
            counts=counts,
            metrics=calibration_metrics(router, feats, targets, seed),
            feature_weights=weights,
            created_by=created_by,
        )
        for it in items:
            route = routes[it.id]
            top = router.top_features(by_id[it.id]) if router else []
            Item.objects.filter(id=it.id).update(
                route=route,
                priority=round(scores[it.id], 6) if route != "ai" else 0.0,
                route_info={
                    "score": round(scores[it.id], 6),
                    "top_features": top,
                    "router_version": version.version,
                    "learned": router is not None,
                },
            )
    return counts
