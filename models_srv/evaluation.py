"""Held-out metrics of a reward model: pairwise accuracy (overall, by category, by label source)
with length baselines, calibration error, ranking accuracy for K-wise items, per-aspect error and
rank correlation. Plain Python on numbers; the scores come from RewardModel.score."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
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


def _acc(hits: Sequence[float]) -> float | None:
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
    untied = [p for p in examples.pairs if not p.tie]
    pairs = [p for p in untied if p.chosen != p.rejected]
    if untied:
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
            "ties_excluded": len(examples.pairs) - len(untied),
            # a preference between two identical texts says nothing a model could get right
            "identical_excluded": len(untied) - len(pairs),
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
                    better, worse = (i, j) if x.ranks[i] < x.ranks[j] else (j, i)
                    hit = _win(s[better], s[worse])
                    pair_hits.append(hit)
                    concordant += hit == 1.0
                    discordant += hit == 0.0
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


Scores = tuple[dict[tuple[str, str], float], dict[tuple[str, str], dict[str, float]], dict[tuple[str, str], float]]


def score_examples(model: Any, examples: Examples, progress: Any = None, batch: int = 256) -> Scores:
    """(score, aspect predictions, ensemble spread) per text of `examples`, scored in batches so a
    long evaluation reports `progress(done, total)` as it goes."""
    texts = list(dict.fromkeys(examples.texts()))
    score: dict[tuple[str, str], float] = {}
    unc: dict[tuple[str, str], float] = {}
    aspect_pred: dict[tuple[str, str], dict[str, float]] = {}
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        mean, std, aspects = model.score(chunk)
        for i, t in enumerate(chunk):
            score[t], unc[t] = float(mean[i]), float(std[i])
            if aspects is not None:
                aspect_pred[t] = {a: float(aspects[i, k]) for k, a in enumerate(model.aspects)}
        if progress:
            progress(start + len(chunk), len(texts))
    return score, aspect_pred, unc


def evaluate_model(model: Any, examples: Examples, progress: Any = None) -> dict[str, Any]:
    """Score every text of `examples` with a RewardModel and compute the metrics."""
    if not len(examples):
        return {}
    score, aspect_pred, unc = score_examples(model, examples, progress)
    metrics = evaluate(examples, score, aspect_pred, unc)
    if getattr(model, "plural", None) is not None:
        metrics["pluralistic"] = pluralistic_metrics(model, examples)
    return metrics


def pluralistic_metrics(model: Any, examples: Examples) -> dict[str, Any]:
    """What a pluralistic model learned and how it does per annotator on held-out pairs: the
    groups (size, members with their confidence, the head's weight on response length), and each
    annotator's accuracy scored with their own weighting against the population's."""
    import numpy as np

    from models_srv.engine import cached_embeddings

    plural = model.plural
    mix = plural.mixture
    groups = [
        {
            "group": k + 1,
            "size": round(float(mix.sizes[k]), 4),
            "length_weight": round(float(mix.heads[k, -1]), 4),
            "members": [
                {"labeler": a, "confidence": round(float(mix.posterior[i, k]), 4)}
                for i, a in enumerate(plural.annotators)
                if int(mix.posterior[i].argmax()) == k
            ],
        }
        for k in range(mix.k)
    ]
    pairs = [p for p in examples.pairs if not p.tie and p.chosen != p.rejected]
    per: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"own": [], "population": []})
    if pairs:
        texts = list(dict.fromkeys(t for p in pairs for t in ((p.prompt, p.chosen), (p.prompt, p.rejected))))
        row = {t: i for i, t in enumerate(texts)}
        s = plural.group_scores(cached_embeddings(model.encoder, texts).double().numpy(), [r for _, r in texts])
        for p in pairs:
            diff = s[row[(p.prompt, p.chosen)]] - s[row[(p.prompt, p.rejected)]]
            probs = 1 / (1 + np.exp(-diff))
            per[p.annotator]["own"].append(_win(float(probs @ plural.weights_for(p.annotator)), 0.5))
            per[p.annotator]["population"].append(_win(float(probs @ mix.sizes), 0.5))
    by_annotator = {
        str(a): {"n": len(v["own"]), "own": _acc(v["own"]), "population": _acc(v["population"])}
        for a, v in sorted(per.items())
    }
    return {
        "k": mix.k,
        "k_scores": {str(k): round(v, 5) for k, v in plural.k_scores.items()},
        "groups": groups,
        "per_annotator": by_annotator,
        "own_accuracy": _acc([x for v in per.values() for x in v["own"]]),
        "population_accuracy": _acc([x for v in per.values() for x in v["population"]]),
    }


def outcomes(
    examples: Examples, score: dict[tuple[str, str], float], aspect_pred: dict[tuple[str, str], dict[str, float]]
) -> list[float]:
    """One number per judged unit, higher is better, in a fixed order: what two models are paired
    on. A preference between different texts scores 1 / 0.5 / 0 (as `_win`); each ordered pair of
    a ranking the same; each rubric rating minus its absolute error. Ties and identical texts say
    nothing about which model is better and are left out."""
    out: list[float] = []
    for p in examples.pairs:
        if not p.tie and p.chosen != p.rejected:
            out.append(_win(score[(p.prompt, p.chosen)], score[(p.prompt, p.rejected)]))
    for x in examples.lists:
        s = [score[(x.prompt, r)] for r in x.responses]
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if x.ranks[i] != x.ranks[j] and x.responses[i] != x.responses[j]:
                    better, worse = (i, j) if x.ranks[i] < x.ranks[j] else (j, i)
                    out.append(_win(s[better], s[worse]))
    for r in examples.ratings:
        pred = aspect_pred.get((r.prompt, r.response), {})
        for aspect, value in sorted(r.ratings.items()):
            if aspect in pred:
                out.append(-abs(float(value) - pred[aspect]))
    return out


def sign_test(new: list[float], old: list[float]) -> dict[str, Any]:
    """Paired sign test of `new` against `old` on the same units: wins, losses, units alike, and the
    one-sided exact binomial p-value of at least this many wins if neither model were better."""
    wins = sum(a > b for a, b in zip(new, old, strict=True))
    losses = sum(a < b for a, b in zip(new, old, strict=True))
    n = wins + losses
    p = sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n if n else 1.0
    return {"units": len(new), "wins": wins, "losses": losses, "same": len(new) - n, "p_value": round(p, 6)}
