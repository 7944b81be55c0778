"""Routing items between humans and AI labelers under a human budget ("Hybrid Preferences").

- Features per item, cheap and without an LLM: prompt and response lengths and their ratio,
  lexical overlap between the responses, metadata category, the AI labelers' confidence, agreement
  and order-swap consistency, and the current reward model's margin and ensemble spread.
- The calibration slice: items labeled by both humans and AI. On it a scikit-learn model learns
  P(AI label disagrees with the human consensus | features).
- Imported labels (`LabelSource.IMPORTED`) are a third source, neither human work nor AI: they
  do not spend the human budget, and the router does not calibrate on them
  (`CALIBRATION_SOURCES`; pass `calibrate_on_imported=True` to `route_project` to let an imported
  label stand in for an item's annotators where it has none). They labeled the item elsewhere,
  under other guidelines: what the router must predict is where AI disagrees with *our*
  annotators.
- Allocation: within the budget, the items with the highest predicted disagreement go to humans,
  the rest to AI; the human queue serves them in that order (Item.priority).
- A project with `require_ai_audit` routes on the judgments of trusted AI labelers only (a passing
  audit of their current config, `models_srv.judge_audit.audit_gate`): the others' judgments
  neither feed the features nor the calibration targets.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max

from annotation.models import Item, Judgment, LabelSource, Project, source_q
from annotation.schema import JudgmentRead
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
    return JudgmentRead.from_stored(payload).preference_sign


def item_features(
    project: Project, items: list[Item] | None = None, *, ai_labeler_ids: list[int] | None = None
) -> list[ItemFeatures]:
    """Features of every (or the given) item of a pairwise or ranking project, in a few queries.
    The AI signals come from every AI labeler the project trusts (`audit_gate`), or only from
    `ai_labeler_ids`, trusted or not (the simulation on stored labels routes one labeler's
    judgments at a time, also to see whether it is worth trusting)."""
    items = items if items is not None else list(Item.objects.filter(project=project, is_gold=False).order_by("id"))
    from models_srv.judge_audit import audit_gate

    ids = [it.id for it in items]
    ai: dict[int, list[Judgment]] = defaultdict(list)
    judgments = Judgment.objects.filter(source_q(LabelSource.AI), item_id__in=ids)
    if ai_labeler_ids is not None:  # named by the caller: the audit gate does not choose for it
        judgments = judgments.filter(labeler_id__in=ai_labeler_ids)
    else:
        judgments = judgments.filter(audit_gate(project).judgment_q())
    for j in judgments.select_related("labeler"):
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
        js = ai.get(it.id, [])
        sc = scores.get(it.id, {})
        values = pair_features(
            prompt=it.prompt,
            texts=[r["text"] for r in it.responses],
            n_turns=len(it.prompt_messages or []),
            category=str((it.metadata or {}).get("category", "")),
            common_categories=common,
            ai=[(_pref_sign(j.payload), j.confidence, _order_consistent(j)) for j in js],
            rm=(abs(sc[1][0] - sc[0][0]), (sc[0][1] + sc[1][1]) / 2) if 0 in sc and 1 in sc else None,
        )
        out.append(ItemFeatures(it.id, values))
    return out


def pair_features(
    *,
    prompt: str,
    texts: list[str],
    n_turns: int = 0,
    category: str = "",
    common_categories: Sequence[str] = (),
    ai: Sequence[tuple[int | None, float | None, bool | None]] = (),
    rm: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The router's features of one pairwise item from plain values (shared by the app and the
    simulation): `ai` holds each AI judgment's (preference sign, confidence, order-swap
    consistency), `rm` the current reward model's (margin, ensemble spread)."""
    la, lb = len(texts[0]), len(texts[1]) if len(texts) > 1 else 0
    wa, wb = _words(texts[0]), _words(texts[1]) if len(texts) > 1 else set()
    v = {
        "log_prompt_chars": math.log1p(len(prompt)),
        "log_len_a": math.log1p(la),
        "log_len_b": math.log1p(lb),
        "len_ratio": (la + 1) / (lb + 1),
        "abs_log_len_ratio": abs(math.log((la + 1) / (lb + 1))),
        "overlap": len(wa & wb) / max(1, len(wa | wb)),
        "n_turns": float(n_turns),
    }
    signs = [s for s, _, _ in ai if s is not None]
    top = Counter(signs).most_common(1)
    v["ai_count"] = float(len(ai))
    v["ai_confidence"] = sum(c if c is not None else 0.5 for _, c, _ in ai) / len(ai) if ai else 0.5
    v["ai_agreement"] = top[0][1] / len(signs) if signs else 0.0
    known = [c for _, _, c in ai if c is not None]
    v["ai_order_consistent"] = sum(known) / len(known) if known else 1.0
    v["rm_margin"], v["rm_uncertainty"] = rm if rm is not None else (0.0, 0.0)
    for c in common_categories:
        v[f"category={c}"] = 1.0 if category == c else 0.0
    return v


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


# Whose labels the router learns "the human answer" from: annotators' judgments only, by default.
CALIBRATION_SOURCES = (LabelSource.HUMAN,)


def _human_and_ai(
    project: Project, *, calibrate_on_imported: bool = False
) -> tuple[dict[int, list[Judgment]], dict[int, list[Judgment]]]:
    """Each item's reference judgments (its annotators'; with `calibrate_on_imported`, its imported
    labels where no annotator judged it) and its AI judgments."""
    human: dict[int, list[Judgment]] = defaultdict(list)
    imported: dict[int, list[Judgment]] = defaultdict(list)
    ai: dict[int, list[Judgment]] = defaultdict(list)
    from models_srv.judge_audit import audit_gate

    sources = (*CALIBRATION_SOURCES, LabelSource.AI) + ((LabelSource.IMPORTED,) if calibrate_on_imported else ())
    judgments = Judgment.objects.filter(
        source_q(*sources), audit_gate(project).judgment_q(), item__project=project, item__is_gold=False
    )
    for j in judgments.select_related("labeler"):
        source = j.labeler.source
        {LabelSource.AI: ai, LabelSource.IMPORTED: imported}.get(source, human)[j.item_id].append(j)
    for item_id, js in imported.items():
        human.setdefault(item_id, js)
    return human, ai


def calibration_targets(project: Project, *, calibrate_on_imported: bool = False) -> dict[int, int]:
    """For items judged by both annotators and AI: 1 when the AI consensus disagrees with the
    annotators'. Imported labels count only with `calibrate_on_imported`."""
    human, ai = _human_and_ai(project, calibrate_on_imported=calibrate_on_imported)
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


def allocate(scores: dict[int, float], budget: int, calibration: Set[int] = frozenset()) -> dict[int, str]:
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
    *,
    project: Project,
    calibration_fraction: float | None = None,
    seed: int = 0,
    created_by: Any = None,
    calibrate_on_imported: bool = False,
) -> dict[str, int]:
    """(Re-)route every item within the human budget (`project.human_budget` x items).

    Items annotators already judged spend the budget first (route `both` when AI judged them too);
    imported labels spend none of it, and calibrate the router only with `calibrate_on_imported`.
    Then a random calibration share of the rest goes to `both`, so the router keeps learning; the
    remaining budget goes to the items with the highest predicted disagreement (or, before a router
    can be trained, the least confident AI side); everything else to `ai`. Each item keeps its
    score and top features; human items are served in score order (Item.priority)."""
    import random

    if calibration_fraction is None:
        calibration_fraction = project.calibration_share
    items = list(Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED).order_by("id"))
    feats = item_features(project, items)
    targets = calibration_targets(project, calibrate_on_imported=calibrate_on_imported)
    policy = project.routing_policy
    router: Router | PerformanceRouter | None = None
    if policy == Project.RoutingPolicy.PERFORMANCE:
        try:
            router = _performance_router(project, feats, seed, calibrate_on_imported=calibrate_on_imported)
            scores = dict(zip([f.item_id for f in feats], router.gains(feats), strict=True))
        except ValueError:
            router = None
    elif policy == Project.RoutingPolicy.LEARNED:
        try:
            router = train_router(feats, targets, seed)
            scores = dict(zip([f.item_id for f in feats], router.predict(feats), strict=True))
        except ValueError:
            router = None
    if router is None:  # cold start: the less sure the AI side, the more a human is worth
        scores = {f.item_id: (1 - f.values["ai_confidence"]) + f.values["rm_uncertainty"] for f in feats}
    if policy == Project.RoutingPolicy.ALL_HUMAN:
        budget = len(items)
    elif policy == Project.RoutingPolicy.ALL_AI:
        budget = 0
    else:
        budget = round(project.human_budget * len(items))
    labeled = set(
        Judgment.objects.filter(source_q(LabelSource.HUMAN), item__in=items).values_list("item_id", flat=True)
    )
    # A curator's "send back to humans" stands until it is undone: those items stay with humans
    # (and keep their place at the front), ahead of the budget.
    from curation.selectors import curation_states

    ids = {it.id for it in items}
    requeued = {i for i, a in curation_states(project=project).items() if a.action == "requeue" and i in ids}
    fixed = {i: ("both" if i in targets else "human") for i in sorted(requeued)}
    for i in sorted(labeled - requeued)[: max(0, budget - len(fixed))]:
        fixed[i] = "both" if i in targets else "human"
    open_ids = [it.id for it in items if it.id not in labeled and it.id not in requeued]
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
        pairs: Iterable[tuple[str, Any]]
        if isinstance(router, PerformanceRouter):
            pairs = zip(router.bins.names, router.weights, strict=True)
            metrics = {**calibration_metrics(None, feats, targets, seed), **router.metrics}
        elif router is not None:
            pairs = zip(router.feature_names, router.model.coef_[0], strict=True)
            metrics = calibration_metrics(router, feats, targets, seed)
        else:
            pairs, metrics = iter(()), calibration_metrics(None, feats, targets, seed)
        rounded = [(n, round(float(c), 6)) for n, c in pairs]
        weights = [[n, c] for n, c in sorted(rounded, key=lambda nc: -abs(nc[1]))]
        version = RouterVersion.objects.create(
            project=project,
            version=number,
            strategy=(
                "performance"
                if isinstance(router, PerformanceRouter)
                else "disagreement"
                if router is not None
                else policy
                if policy in (Project.RoutingPolicy.ALL_HUMAN, Project.RoutingPolicy.ALL_AI)
                else "cold_start"
            ),
            learned=router is not None,
            budget=budget,
            counts=counts,
            metrics=metrics,
            feature_weights=weights,
            created_by=created_by,
        )
        for it in items:
            priority = round(scores[it.id], 6) if routes[it.id] != "ai" else 0.0
            it.route = routes[it.id]
            it.priority = max(priority, it.priority) if it.id in requeued else priority
            it.route_info = {
                "score": round(scores[it.id], 6),
                "top_features": router.top_features(by_id[it.id]) if router else [],
                "router_version": version.version,
                "learned": router is not None,
            }
        Item.objects.bulk_update(items, ["route", "priority", "route_info"], batch_size=1000)
    return counts


def _performance_router(
    project: Project, feats: list[ItemFeatures], seed: int, *, calibrate_on_imported: bool = False
) -> PerformanceRouter:
    """The performance-prediction router on the project's calibration items (judged by both, with a
    non-tie human and AI preference), the cheap reward model working on frozen embeddings."""
    import numpy as np

    human, ai = _human_and_ai(project, calibrate_on_imported=calibrate_on_imported)
    by_id = {f.item_id: f for f in feats}
    rows = []
    for item_id in sorted(human.keys() & ai.keys() & by_id.keys()):
        h, a = consensus_sign(human[item_id]), consensus_sign(ai[item_id])
        if h and a:
            rows.append((item_id, int(h > 0), int(a > 0)))
    if len(rows) < 40:
        raise ValueError("the calibration pool needs at least 40 items labeled by both to simulate mixes")
    x = pair_representations([r[0] for r in rows])
    return train_performance_router(
        [by_id[r[0]] for r in rows], x, np.array([r[1] for r in rows]), np.array([r[2] for r in rows]), seed=seed
    )


def pair_representations(item_ids: list[int], max_length: int = 128, config: Any = None) -> Any:
    """repr(B) - repr(A) for the first two responses, from the default frozen backbone (or the
    given `TrainConfig`'s), cached per backbone and text."""
    from models_srv.engine import Encoder, TrainConfig, cached_embeddings, pick_device

    config = config or TrainConfig(max_length=max_length)
    items = Item.objects.in_bulk(item_ids)
    texts = [(items[i].prompt, items[i].responses[k]["text"]) for i in item_ids for k in (0, 1)]
    vectors = cached_embeddings(Encoder(config, pick_device(config.device)), texts).numpy()
    return vectors[1::2] - vectors[0::2]


# ---------------------------------------------------------------------------------------------
# Second strategy: performance prediction over binned features (the paper's own method)


@dataclass
class FeatureBins:
    """Binary indicators per item: numeric features cut at the calibration pool's tertiles, plus
    the category indicators as they are."""

    cuts: dict[str, tuple[float, float]]
    flags: list[str]

    @classmethod
    def fit(cls, feats: list[ItemFeatures]) -> FeatureBins:
        import numpy as np

        names = sorted({n for f in feats for n in f.values})
        flags = [n for n in names if n.startswith("category=")]
        cuts = {}
        for n in names:
            if n in flags:
                continue
            col = np.array([f.values.get(n, 0.0) for f in feats])
            lo, hi = np.quantile(col, [1 / 3, 2 / 3])
            if hi > lo:
                cuts[n] = (float(lo), float(hi))
            elif col.min() < col.max():
                cuts[n] = (float(lo), float(lo))  # a skewed feature: below-or-at vs above
        return cls(cuts, flags)

    @property
    def names(self) -> list[str]:
        out = []
        for n, (lo, hi) in self.cuts.items():
            out += [f"{n}<={lo:.3g}", f"{n}>{hi:.3g}"] + ([f"{lo:.3g}<{n}<={hi:.3g}"] if hi > lo else [])
        return out + self.flags

    def transform(self, feats: list[ItemFeatures]) -> Any:
        import numpy as np

        rows = []
        for f in feats:
            row = []
            for n, (lo, hi) in self.cuts.items():
                v = f.values.get(n, 0.0)
                row += [v <= lo, v > hi] + ([lo < v <= hi] if hi > lo else [])
            row += [f.values.get(n, 0.0) > 0.5 for n in self.flags]
            rows.append(row)
        return np.array(rows, dtype=float).reshape(len(feats), len(self.names))


def fit_cheap_rm(x: Any, y: Any) -> Any:
    """The cheap reward model used to score mixes: a Bradley-Terry linear head on frozen pair
    representations (x = repr(B) - repr(A), y = 1 when B is preferred), fitted antisymmetrically."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    x, y = np.vstack([x, -x]), np.concatenate([y, 1 - y])  # both orders: no position term, both classes
    return LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(x, y).coef_[0]


def cheap_rm_accuracy(coef: Any, x: Any, y: Any) -> float:
    import numpy as np

    return float(((np.asarray(x) @ coef > 0).astype(int) == np.asarray(y)).mean())


@dataclass
class PerformanceRouter:
    """Predicts the held-out accuracy of a reward model trained on a mix from how many human-routed
    items carry each binned feature; an item's expected gain is the sum of its bins' weights."""

    bins: FeatureBins
    weights: Any  # one per bin, accuracy gained per human-routed item carrying it
    metrics: dict[str, Any]

    def gains(self, feats: list[ItemFeatures]) -> list[float]:
        if not feats:
            return []
        return [float(v) for v in self.bins.transform(feats) @ self.weights]

    def top_features(self, f: ItemFeatures, k: int = 3) -> list[tuple[str, float]]:
        import numpy as np

        contrib = self.bins.transform([f])[0] * self.weights
        order = np.argsort(-np.abs(contrib))[:k]
        return [(self.bins.names[i], round(float(contrib[i]), 6)) for i in order if contrib[i] != 0]


def train_performance_router(
    feats: list[ItemFeatures], x: Any, human_y: Any, ai_y: Any, *, mixes: int = 160, seed: int = 0
) -> PerformanceRouter:
    """Simulate `mixes` random human/AI mixes on the calibration pool (items labeled by both): for
    each, train the cheap reward model on one half and score it on the other half's human labels
    (and back); then fit a ridge regression from the per-bin counts of human-routed items to that
    score. As in "Hybrid Preferences", the fitted model ranks unseen items by predicted gain."""
    import numpy as np
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    n = len(feats)
    if n < 40:
        raise ValueError("the calibration pool needs at least 40 items labeled by both to simulate mixes")
    rng = np.random.default_rng(seed)
    x, human_y, ai_y = np.asarray(x), np.asarray(human_y), np.asarray(ai_y)
    bins = FeatureBins.fit(feats)
    b = bins.transform(feats)
    halves = np.array_split(rng.permutation(n), 2)
    counts, scores = [], []
    for m in range(mixes):
        share = (m + 0.5) / mixes  # shares spread evenly over 0..1, the items drawn at random
        human = rng.random(n) < share
        labels = np.where(human, human_y, ai_y)
        # Cross-fitted: train on one half, score on the other half's human labels, and back.
        acc = [
            cheap_rm_accuracy(fit_cheap_rm(x[fit], labels[fit]), x[held], human_y[held])
            for fit, held in (halves, halves[::-1])
        ]
        scores.append(sum(acc) / 2)
        counts.append(b[human].sum(axis=0) / n)
    counts_arr, scores_arr = np.array(counts), np.array(scores)
    model = RidgeCV(alphas=np.logspace(-4, 1, 12)).fit(counts_arr, scores_arr)
    r2 = cross_val_score(RidgeCV(alphas=np.logspace(-4, 1, 12)), counts_arr, scores_arr, cv=4, scoring="r2")
    metrics = {
        "mixes": mixes,
        "calibration_items": n,
        "score_min": round(float(scores_arr.min()), 4),
        "score_max": round(float(scores_arr.max()), 4),
        "cv_r2": round(float(r2.mean()), 4),
    }
    return PerformanceRouter(bins, model.coef_ / n, metrics)


def reroute_due(*, min_new_calibration: int = 20) -> list[int]:
    """Projects with a learned policy whose calibration slice grew by `min_new_calibration` items
    since their last routing (or that were never routed): re-route them, so the router retrains as
    human labels accumulate. Returns the ids of the projects routed."""
    done = []
    learned = [Project.RoutingPolicy.LEARNED, Project.RoutingPolicy.PERFORMANCE]
    for project in Project.objects.filter(routing_policy__in=learned).order_by("id"):
        last = RouterVersion.objects.filter(project=project).first()
        seen = (last.metrics or {}).get("calibration_items", 0) if last else -min_new_calibration
        if len(calibration_targets(project)) - seen >= min_new_calibration:
            route_project(project=project)
            done.append(project.id)
    return done
