"""Pluralistic reward model vs one Bradley-Terry model vs one model per annotator, on real HH pairs
with two planted groups of simulated annotators.

    .venv/bin/python bench/pluralistic/run.py                 # 3 seeds, mixes 50/70/90 %, 10/20/50 judgments
    .venv/bin/python bench/pluralistic/run.py --seeds 1 --judgments 20

The 1,600 shared HH-RLHF harmless pairs (`../shared/data/hh_harmless_pairs.jsonl.gz`) are split
once by pair into a training pool (80 %) and a test pool (20 %). Per seed, 20 simulated annotators
are dealt into two groups at a mixing ratio: group H follows the recorded human preference, group
L prefers the longer response; each annotator flips 10 % of their answers at random. Each annotator
judges `m` pairs drawn from the training pool and 20 from the test pool. Every method sees only the
training judgments and features of the responses:

- **pluralistic**: `models_srv.pluralistic` (EM for K = 1-4 on the training judgments, K chosen by
  BIC counted in annotators); an annotator is scored with their posterior mix;
- **one BT**: the same code with K = 1 (one logistic Bradley-Terry head for everyone);
- **per annotator**: one L2-regularized logistic head per annotator, on their own judgments.

Figures: mean per-annotator accuracy on their 20 test judgments (ties never occur), by group and
overall, and the adjusted Rand index of the groups found (each annotator's most likely head)
against the planted ones. Features: the frozen packaged MiniLM's embedding of (prompt, response)
(the app's `frozen` mode encoder, cached in `out/embeddings.sqlite3`) reduced to 8 principal
components fitted on the training pool, plus the response's log length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from common import load_hh_pairs, setup_embedded_django  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
FLIP = 0.10
N_ANNOTATORS = 20
TEST_PER_ANNOTATOR = 20


def setup_django() -> None:
    setup_embedded_django(OUT)


def embed(texts: list[tuple[str, str]], threads: int) -> np.ndarray:
    import torch

    from models_srv.engine import Encoder, TrainConfig, cached_embeddings

    torch.set_num_threads(threads)
    encoder = Encoder(TrainConfig(mode="frozen"), "cpu")
    return cached_embeddings(encoder, texts).numpy().astype(np.float64)


def per_annotator_lr(diffs: np.ndarray, l2: float) -> np.ndarray:
    from models_srv.pluralistic import _fit_head

    return _fit_head(diffs, np.ones(len(diffs)), np.ones(len(diffs)), l2, np.zeros(diffs.shape[1]))


def one_run(
    phi: np.ndarray,
    pairs: list[tuple[int, int]],
    human_first: np.ndarray,
    longer_first: np.ndarray,
    train_pool: np.ndarray,
    test_pool: np.ndarray,
    share_h: float,
    m: int,
    seed: int,
) -> dict[str, object]:
    from models_srv import pluralistic as pl

    rng = np.random.default_rng(seed)
    n_h = round(share_h * N_ANNOTATORS)
    groups = np.array([0] * n_h + [1] * (N_ANNOTATORS - n_h))
    rng.shuffle(groups)

    def judge(a: int, idx: np.ndarray) -> np.ndarray:
        """Rows phi(chosen) - phi(rejected) of annotator a's answers on pairs idx."""
        first = human_first[idx] if groups[a] == 0 else longer_first[idx]
        first = np.where(rng.random(len(idx)) < FLIP, ~first, first)
        a_rows = np.array([pairs[i][0] for i in idx])
        b_rows = np.array([pairs[i][1] for i in idx])
        return np.where(first[:, None], phi[a_rows] - phi[b_rows], phi[b_rows] - phi[a_rows])

    train_d, train_a, test = [], [], []
    for a in range(N_ANNOTATORS):
        train_d.append(judge(a, rng.choice(train_pool, size=m, replace=False)))
        train_a.append(np.full(m, a))
        test.append(judge(a, rng.choice(test_pool, size=TEST_PER_ANNOTATOR, replace=False)))
    d, ann = np.vstack(train_d), np.concatenate(train_a)
    t = np.ones(len(d))

    choice = pl.choose_k(d, t, ann, N_ANNOTATORS, seed=seed)
    mix = choice.mixture
    one = pl.fit(d, t, ann, N_ANNOTATORS, 1, seed=seed)
    acc: dict[str, list[float]] = {"pluralistic": [], "one BT": [], "per annotator": []}
    for a in range(N_ANNOTATORS):
        acc["pluralistic"].append(float(np.mean(mix.prob(mix.posterior[a], test[a]) > 0.5)))
        acc["one BT"].append(float(np.mean(one.prob(one.posterior[a], test[a]) > 0.5)))
        w = per_annotator_lr(train_d[a], 1.0)
        acc["per annotator"].append(float(np.mean(test[a] @ w > 0)))
    found = mix.posterior.argmax(axis=1)
    return {
        "k": choice.k,
        "ari": pl.adjusted_rand_index(list(groups), list(found)),
        "accuracy": {k: float(np.mean(v)) for k, v in acc.items()},
        "by_group": {
            k: {
                g: float(np.mean([v[a] for a in range(N_ANNOTATORS) if groups[a] == gi]))
                if (groups == gi).any()
                else None
                for gi, g in enumerate(("H", "L"))
            }
            for k, v in acc.items()
        },
    }


def mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) / len(values) ** 0.5:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mix", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="share of group H")
    parser.add_argument(
        "--judgments", type=int, nargs="+", default=[10, 20, 50], help="training judgments per annotator"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dims", type=int, default=8, help="principal components of the embedding the heads read")
    args = parser.parse_args()

    started = time.perf_counter()
    setup_django()
    hh = load_hh_pairs(1600)
    texts: list[tuple[str, str]] = []
    pairs: list[tuple[int, int]] = []
    for prompt, chosen, rejected in hh:
        pairs.append((len(texts), len(texts) + 1))
        texts += [(prompt, chosen), (prompt, rejected)]
    emb = embed(texts, args.threads)
    lengths = np.array([len(r) for _, r in texts])
    order = np.random.default_rng(12345).permutation(len(pairs))
    train_pool, test_pool = order[: int(0.8 * len(pairs))], order[int(0.8 * len(pairs)) :]
    train_rows = np.array([r for i in train_pool for r in pairs[i]])
    from models_srv.pluralistic import FeatureMap

    fmap = FeatureMap.fit(emb[train_rows], lengths[train_rows], dims=args.dims)
    phi = fmap(emb, lengths)
    human_first = np.ones(len(pairs), dtype=bool)  # the first of each pair is the recorded chosen one
    longer_first = np.array([lengths[a] > lengths[b] for a, b in pairs])
    print(f"{len(pairs)} pairs; embeddings ready in {time.perf_counter() - started:.0f} s", flush=True)

    rows = []
    for share in args.mix:
        for m in args.judgments:
            runs = [
                one_run(phi, pairs, human_first, longer_first, train_pool, test_pool, share, m, seed)
                for seed in range(args.seeds)
            ]
            row = {"share_h": share, "judgments": m, "runs": runs}
            rows.append(row)
            accs = {k: [r["accuracy"][k] for r in runs] for k in runs[0]["accuracy"]}
            print(
                f"H {share:.0%} / L {1 - share:.0%}, {m:3d} judgments each: "
                + ", ".join(f"{k} {mean_se(v)}" for k, v in accs.items())
                + f"; ARI {mean_se([r['ari'] for r in runs])}; K {[r['k'] for r in runs]}",
                flush=True,
            )
    (OUT / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
