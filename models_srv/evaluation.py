"""Held-out metrics of a reward model: pairwise accuracy (overall, by category, by label source)
with length baselines, calibration error, ranking accuracy for K-wise items, per-aspect error and
rank correlation. Plain Python on numbers; the scores come from RewardModel.score."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from models_srv.data import Examples


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-max(-60.0, min(60.0, x))))


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else None


def expected_calibration_error(confidences: list[float], correct: list[float], bins: int = 10) -> float | None:
    if not confidences:
        return None
    total = 0.0
    for b in range(bins):
        lo, hi = 0.5 + b * 0.5 / bins, 0.5 + (b + 1) * 0.5 / bins
        idx = [i for i, c in enumerate(confidences) if lo <= c < hi or (b == bins - 1 and c == hi)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / len(confidences) * abs(acc - conf)
    return total


def _acc(hits: list[float]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def _win(better: float, worse: float) -> float:
    """1 when the chosen side scores higher, 0 when lower, 0.5 on equal scores (a coin flip, not a
    miss: identical responses score alike)."""
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


def evaluate(
    examples: Examples,
    score: dict[tuple[str, str], float],
    aspect_pred: dict[tuple[str, str], dict[str, float]],
    uncertainty: dict[tuple[str, str], float] | None = None,
) -> dict[str, Any]:
    """Metrics for `examples`, given the model's score (and aspect predictions) per (prompt, response)."""
    metrics: dict[str, Any] = {}
    pairs = [p for p in examples.pairs if not p.tie]
    if pairs:
        hits, conf, by_cat, by_src, shorter, longer = [], [], defaultdict(list), defaultdict(list), [], []
        for p in pairs:
            diff = score[(p.prompt, p.chosen)] - score[(p.prompt, p.rejected)]
            hit = _win(diff, 0.0)
            hits.append(hit)
            conf.append(max(_sigmoid(diff), 1 - _sigmoid(diff)))
            by_cat[p.category or "(none)"].append(hit)
            by_src[p.source].append(hit)
            # the baselines on the same pairs as the model, equal lengths counting half
            shorter.append(_win(len(p.rejected), len(p.chosen)))
            longer.append(_win(len(p.chosen), len(p.rejected)))
        metrics["pairwise"] = {
            "n": len(pairs),
            "accuracy": _acc(hits),
            "ece": round(expected_calibration_error(conf, hits) or 0.0, 4),
            "by_category": {k: {"n": len(v), "accuracy": _acc(v)} for k, v in sorted(by_cat.items())},
            "by_source": {k: {"n": len(v), "accuracy": _acc(v)} for k, v in sorted(by_src.items())},
            "baseline_prefer_shorter": _acc(shorter),
            "baseline_prefer_longer": _acc(longer),
            "ties_excluded": len(examples.pairs) - len(pairs),
        }
        if uncertainty:
            spread = [uncertainty[(p.prompt, p.chosen)] + uncertainty[(p.prompt, p.rejected)] for p in pairs]
            metrics["pairwise"]["mean_uncertainty"] = round(sum(spread) / len(spread) / 2, 4)
    if examples.lists:
        pair_hits, top1, taus = [], [], []
        for x in examples.lists:
            s = [score[(x.prompt, r)] for r in x.responses]
            concordant = discordant = 0
            for i in range(len(s)):
                for j in range(i + 1, len(s)):
                    if x.ranks[i] == x.ranks[j]:
                        continue
                    ok = (s[i] > s[j]) == (x.ranks[i] < x.ranks[j])
                    pair_hits.append(ok)
                    concordant += ok
                    discordant += not ok
            best = min(x.ranks)
            top1.append(x.ranks[max(range(len(s)), key=lambda i: s[i])] == best)
            if concordant + discordant:
                taus.append((concordant - discordant) / (concordant + discordant))
        metrics["ranking"] = {
            "n": len(examples.lists),
            "pairwise_accuracy": _acc(pair_hits),
            "top1_accuracy": _acc(top1),
            "kendall_tau": round(sum(taus) / len(taus), 4) if taus else None,
        }
    if examples.ratings:
        per: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"true": [], "pred": []})
        for r in examples.ratings:
            pred = aspect_pred.get((r.prompt, r.response), {})
            for aspect, value in r.ratings.items():
                if aspect in pred:
                    per[aspect]["true"].append(float(value))
                    per[aspect]["pred"].append(float(pred[aspect]))
        metrics["aspects"] = {
            a: {
                "n": len(v["true"]),
                "mae": round(sum(abs(t - p) for t, p in zip(v["true"], v["pred"], strict=True)) / len(v["true"]), 4),
                "spearman": (round(rho, 4) if (rho := spearman(v["true"], v["pred"])) is not None else None),
            }
            for a, v in sorted(per.items())
            if v["true"]
        }
    return metrics


def evaluate_model(model: Any, examples: Examples) -> dict[str, Any]:
    """Score every text of `examples` with a RewardModel and compute the metrics."""
    texts = list(dict.fromkeys(examples.texts()))
    if not texts:
        return {}
    mean, std, aspects = model.score(texts)
    score = {t: float(mean[i]) for i, t in enumerate(texts)}
    unc = {t: float(std[i]) for i, t in enumerate(texts)}
    aspect_pred = {}
    if aspects is not None:
        aspect_pred = {t: {a: float(aspects[i, k]) for k, a in enumerate(model.aspects)} for i, t in enumerate(texts)}
    return evaluate(examples, score, aspect_pred, unc)


def headline(metrics: dict[str, Any]) -> float | None:
    """The one number that decides whether a new version beats the current one."""
    if metrics.get("pairwise", {}).get("accuracy") is not None:
        return metrics["pairwise"]["accuracy"]
    if metrics.get("ranking", {}).get("pairwise_accuracy") is not None:
        return metrics["ranking"]["pairwise_accuracy"]
    rhos = [a["spearman"] for a in metrics.get("aspects", {}).values() if a.get("spearman") is not None]
    return sum(rhos) / len(rhos) if rhos else None
