"""Noisy-label detection on the shared HH-RLHF pairs with planted flips: out-of-fold margins
(`models_srv.crossfit`) against confident learning on the same probabilities and the in-sample rule.

    .venv/bin/pip install -r bench/requirements.txt   # cleanlab, for the comparison only
    .venv/bin/python bench/noise/run.py [--rates 0.05,0.1,0.2] [--seeds 3] [--folds 5] [--threads 1]

For each rate and seed a share of the 1,600 pairs gets its label flipped (chosen and rejected
swapped). Then, through the app's training path (`engine.train`, the default `TrainConfig`):
- (a) cross-fit: `crossfit` (k folds by item) gives every pair the probability of its given label
  from a model that never saw it; the ranking is lowest probability first, the set is p < 0.5
  (what the review queue lists);
- (b) cleanlab's `find_label_issues` on the same out-of-fold probabilities (two classes: the
  response on side A or side B is preferred; sides are placed by a hash of the id, as the importer
  does);
- (c) the in-sample rule the review queue used before: one model trained on every pair, a pair
  flagged when its margin contradicts the label by more than twice the ensemble's spread; its
  ranking is the in-sample probability of the given label.

Figures: precision at k (k = the number planted; for a ranking, recall at k is the same number),
precision and recall of each flagged set, and the ranking's AUC (planted vs clean), as mean and
standard error over seeds. Then a separable synthetic set (the preferred response carries words
such as "helpful, correct", the other "wrong, rude"), with flips planted the same way, where the
cross-fit recall must reach 0.95.

Embeddings are cached in a SQLite database under `bench/noise/out/` (the app's `EmbeddingCache`),
so only the first run embeds (about a minute per 3,200 texts on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from common import load_hh_pairs, setup_embedded_django  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
GOOD = ["helpful", "correct", "clear", "kind", "accurate", "polite", "thorough", "honest"]
BAD = ["wrong", "rude", "useless", "confusing", "false", "dismissive", "harmful", "lazy"]


def setup_django() -> None:
    setup_embedded_django(OUT)


def synthetic(n: int) -> list[tuple[str, str, str]]:
    rng = random.Random(1234)
    topics = ["a recipe", "a bug", "a poem", "tax rules", "a trip", "a cat", "a loan", "chess"]
    out = []
    for i in range(n):
        filler = " ".join(rng.choices(["the", "answer", "is", "about", "this", "some", "text", "here"], k=8))
        prompt = f"Human: tell me about {rng.choice(topics)} (case {i})"
        good = f"{filler}. This reply is {rng.choice(GOOD)} and {rng.choice(GOOD)}."
        bad = f"{filler}. This reply is {rng.choice(BAD)} and {rng.choice(BAD)}."
        out.append((prompt, good, bad))
    return out


def plant(n: int, rate: float, seed: int) -> set[int]:
    return set(random.Random(seed).sample(range(n), round(rate * n)))


def examples(pairs: list[tuple[str, str, str]], flipped: set[int]):
    from models_srv.data import Examples, PairExample

    return Examples(
        pairs=[
            PairExample(i, p, r, c, 1) if i in flipped else PairExample(i, p, c, r, 1)
            for i, (p, c, r) in enumerate(pairs)
        ]
    )


def side_b(i: int) -> bool:
    """Which side the given label's preferred response sits on (a hash of the id, as on import)."""
    return hashlib.sha256(f"side:{i}".encode()).digest()[0] % 2 == 1


def auc(scores: list[float], positive: list[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


def at_k(p_given: list[float], planted: set[int]) -> float:
    k = len(planted)
    order = sorted(range(len(p_given)), key=lambda i: (p_given[i], i))[:k]
    return sum(i in planted for i in order) / k


def set_figures(flagged: set[int], planted: set[int]) -> dict[str, float]:
    hit = len(flagged & planted)
    return {
        "flagged": len(flagged),
        "precision": hit / len(flagged) if flagged else float("nan"),
        "recall": hit / len(planted),
    }


def cleanlab_set(p_given: list[float]) -> set[int]:
    import numpy as np
    from cleanlab.filter import find_label_issues

    labels = np.array([1 if side_b(i) else 0 for i in range(len(p_given))])
    p_b = np.array([p if side_b(i) else 1 - p for i, p in enumerate(p_given)])
    pred_probs = np.stack([1 - p_b, p_b], axis=1)
    return {int(i) for i in np.flatnonzero(find_label_issues(labels, pred_probs))}


def one_run(pairs, rate: float, seed: int, args, config, in_sample: bool = True) -> dict[str, dict[str, float]]:
    from models_srv import engine
    from models_srv.crossfit import crossfit
    from models_srv.data import Examples, SplitData

    n = len(pairs)
    planted = plant(n, rate, seed)
    truth = [i in planted for i in range(n)]
    ex = examples(pairs, planted)
    t0 = time.perf_counter()
    oof = crossfit(ex, config, k=args.folds, seed=seed)
    p_oof = [o.probability for o in oof]
    row: dict[str, dict[str, float]] = {
        "crossfit": {
            "p_at_k": at_k(p_oof, planted),
            "auc": auc([-p for p in p_oof], truth),
            **set_figures({i for i, p in enumerate(p_oof) if p < 0.5}, planted),
        },
        "cleanlab": set_figures(cleanlab_set(p_oof), planted),
    }
    t1 = time.perf_counter()
    if in_sample:
        model = engine.train(SplitData(train=ex, eval=Examples(), aspects={}), config)
        texts = [(e.prompt, e.chosen) for e in ex.pairs] + [(e.prompt, e.rejected) for e in ex.pairs]
        mean, std, _ = model.score(texts)
        margin = [float(mean[i] - mean[n + i]) for i in range(n)]
        spread = [math.hypot(float(std[i]), float(std[n + i])) for i in range(n)]
        p_in = [1 / (1 + math.exp(-m)) for m in margin]
        rule = {i for i in range(n) if margin[i] < 0 and -margin[i] > 2 * max(spread[i], 1e-6)}
        row["in_sample"] = {
            "p_at_k": at_k(p_in, planted),
            "auc": auc([-p for p in p_in], truth),
            **set_figures(rule, planted),
        }
    row["seconds"] = {"crossfit": t1 - t0, "in_sample": time.perf_counter() - t1}
    return row


def mean_se(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {se:.3f}"


def summarize(name: str, rate: float, runs: list[dict]) -> list[str]:
    lines = []
    for method in ("crossfit", "cleanlab", "in_sample"):
        if method not in runs[0]:
            continue
        col = {
            k: mean_se([r[method].get(k, float("nan")) for r in runs]) for k in ("p_at_k", "auc", "precision", "recall")
        }
        flagged = statistics.fmean(r[method]["flagged"] for r in runs)
        lines.append(
            f"| {name} | {rate:.0%} | {method} | {col['p_at_k']} | {col['auc']} | {flagged:.0f} | "
            f"{col['precision']} | {col['recall']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="0.05,0.1,0.2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=1600)
    parser.add_argument("--synthetic", type=int, default=400, help="synthetic pairs (0: skip)")
    parser.add_argument("--config", default="{}", help='TrainConfig fields as JSON, e.g. \'{"backbone": "org/m"}\'')
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    setup_django()
    import torch

    from models_srv.engine import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig.model_validate(json.loads(args.config))
    rates = [float(r) for r in args.rates.split(",") if r]
    started = time.perf_counter()
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"config {config.model_dump(exclude_defaults=True) or 'default'}, k={args.folds}, seeds {args.seeds}",
        flush=True,
    )
    header = [
        "| data | planted | method | P@k (= R@k) | AUC | flagged | precision | recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table: list[str] = []
    results: dict[str, list] = {}
    hh = load_hh_pairs(args.pairs)
    for rate in rates:
        runs = []
        for seed in range(args.seeds):
            run = one_run(hh, rate, seed, args, config.model_copy(update={"seed": seed}))
            print(f"hh {rate:.0%} seed {seed}: {json.dumps(run)}", flush=True)
            runs.append(run)
        results[f"hh-{rate}"] = runs
        table += summarize(f"HH ({len(hh)})", rate, runs)
    if args.synthetic:
        syn = synthetic(args.synthetic)
        runs = []
        for seed in range(args.seeds):
            run = one_run(syn, 0.1, seed, args, config.model_copy(update={"seed": seed}), in_sample=False)
            print(f"synthetic 10% seed {seed}: {json.dumps(run)}", flush=True)
            runs.append(run)
        results["synthetic-0.1"] = runs
        table += summarize(f"synthetic ({len(syn)})", 0.1, runs)
    print("\n".join(header + table))
    wall = time.perf_counter() - started
    print(f"wall {wall:.0f} s")
    (OUT / "results.json").write_text(json.dumps({"args": vars(args), "wall_s": wall, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
