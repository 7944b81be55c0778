"""Offline simulation of routing policies ("which items should humans label?").

Given pairs with human labels and an AI labeler, each policy picks which items of a pool get the
human label under a budget; the rest get the AI label. A cheap reward model (the app's frozen mode:
a Bradley-Terry linear head on frozen backbone embeddings) is trained on each mix and scored on
held-out human labels.

Per seed the pairs are shuffled (and their A/B order randomized) and split into four disjoint parts:
- `ai_train`: only used to train the `rm` AI labeler;
- `calibration`: labeled by both humans and AI, where the learned routers are trained (as the paper
  trains its router on MultiPref before routing other data). It is outside the routed pool and the
  budget, and no policy trains its reward model on it;
- `pool`: the items being routed; the budget is a share of it;
- `test`: held-out human labels for the accuracy figure.

Policies: `all_ai`, `all_human`, `random`, `learned` (the app's logistic router: predicted
probability that the AI label disagrees with the humans) and `performance` (the paper's
performance-prediction regressor over binned features; experimental, see the README).

Two figures per policy and budget: `rm_accuracy`, the cheap reward model's accuracy on the `test`
part's human labels (what the paper measures), and `label_accuracy`, the share of the `pool`'s
final labels (human where routed, AI elsewhere) that agree with the human label (an AI tie counts
half): the router's own aim, without a reward model's noise on top.

AI labelers available offline:
- `rm`: a reward model of the app's frozen kind trained on the `ai_train` part. Real, but on these
  data its errors are nearly unpredictable and its labels are almost as useful as human ones;
- `biased_judge`: a simulated LLM judge with the failure modes reported for LLM judges (verbosity
  bias when the lengths differ a lot, position bias when they are close, weaker on long dialogues),
  asked in both orders so order-swap consistency is observable. Its errors depend on the length
  ratio and the turn count, which are router features: part of the router's gain on it is built in.

Real AI labelers' stored judgments are simulated the same way by `models_srv.simulation_stored`,
which builds a `SeedSplit` from a project and runs `run_seed` on it; `simulation_report` writes
the CSV, tables, JSON and plot.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from models_srv.routing import (
    ItemFeatures,
    cheap_rm_accuracy,
    fit_cheap_rm,
    pair_features,
    train_performance_router,
    train_router,
)

POLICIES = ["all_ai", "random", "learned", "performance", "all_human"]
METRICS = ["rm_accuracy", "label_accuracy"]
JUDGES = ["rm", "biased_judge"]


@dataclass
class Pairs:
    """Pairs in the human-preferred-first orientation: `chosen` beat `rejected`."""

    prompts: list[str]
    n_turns: list[int]
    chosen: list[str]
    rejected: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def load_pairs(path: Path, limit: int | None = None) -> Pairs:
    """HH-RLHF rows ({"chosen", "rejected"} whole dialogues) or {"prompt", "chosen", "rejected"}
    rows, from .jsonl or .jsonl.gz. Rows that cannot be split into prompt + final turns are skipped."""
    from annotation.importing import hh_messages, split_hh_dialogue

    opener = gzip.open if path.suffix == ".gz" else open
    out = Pairs([], [], [], [])
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" in row:
                prompt, chosen, rejected = str(row["prompt"]), str(row["chosen"]), str(row["rejected"])
                turns = 1
            else:
                try:
                    prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"])
                except ValueError:
                    continue
                turns = len(hh_messages(prompt))
            out.prompts.append(prompt)
            out.n_turns.append(turns)
            out.chosen.append(chosen)
            out.rejected.append(rejected)
            if limit and len(out) >= limit:
                break
    return out


def embed_pairs(pairs: Pairs, config: Any, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """Frozen-backbone embeddings of (prompt, chosen) and (prompt, rejected), cached in a .npz file
    keyed by the backbone and the texts, so repeated simulations skip the encoder."""
    import numpy as np

    from models_srv.engine import Encoder, pick_device

    digest = hashlib.sha256()
    digest.update(config.model_dump_json().encode())
    for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected, strict=True):
        digest.update(f"{p}\x00{c}\x00{r}\x01".encode())
    path = cache_dir / f"sim-embeddings-{digest.hexdigest()[:16]}.npz" if cache_dir else None
    if path is not None and path.exists():
        data = np.load(path)
        return data["chosen"], data["rejected"]
    encoder = Encoder(config, pick_device(config.device))
    n = len(pairs)
    texts = list(zip(pairs.prompts, pairs.chosen, strict=True)) + list(zip(pairs.prompts, pairs.rejected, strict=True))
    vectors = encoder.embed(texts).numpy()
    chosen, rejected = vectors[:n], vectors[n:]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, chosen=chosen, rejected=rejected)
    return chosen, rejected


@dataclass
class SeedSplit:
    """One seed's view: A/B order, labels (1 = B preferred; an AI tie is 0.5), pair
    representations `x` (None: no reward model is trained) and the four parts, as index arrays."""

    flip: Any
    x: Any
    human: Any
    ai: Any
    ai_confidence: Any
    ai_consistent: Any
    ai_train: Any
    calibration: Any
    pool: Any
    test: Any
    texts_a: list[str] = field(default_factory=list)
    texts_b: list[str] = field(default_factory=list)


def _biased_judge(a: str, b: str, truth: int, turns: int, rng: random.Random) -> int:
    """One call of the simulated judge on (first=a, second=b); returns 1 when it prefers b."""
    ratio = math.log((len(b) + 1) / (len(a) + 1))
    if abs(ratio) > 0.5 and rng.random() < 0.8:
        return int(ratio > 0)  # verbosity bias: the longer one
    if abs(ratio) < 0.15 and rng.random() < 0.35:
        return 0  # position bias: the first one shown
    accuracy = 0.9 if turns < 4 else 0.7
    return truth if rng.random() < accuracy else 1 - truth


def make_split(
    pairs: Pairs,
    chosen_emb: Any,
    rejected_emb: Any,
    *,
    seed: int,
    judge: str,
    parts: tuple[float, float, float] | None = None,
) -> SeedSplit:
    import numpy as np

    n = len(pairs)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    flip = rng.random(n) < 0.5  # B is the human-preferred one where flipped
    a_emb = np.where(flip[:, None], rejected_emb, chosen_emb)
    b_emb = np.where(flip[:, None], chosen_emb, rejected_emb)
    x = b_emb - a_emb
    human = flip.astype(int)
    # Shares of ai_train, calibration and pool (the rest is the test part). Only the `rm` labeler
    # needs training data; the simulated judge leaves more for the pool and the test.
    parts = parts or ((0.2, 0.2, 0.4) if judge == "rm" else (0.0, 0.2, 0.45))
    cuts = np.cumsum([round(f * n) for f in parts])
    ai_train, calibration, pool, test = np.split(perm, cuts)
    texts_a = [r if f else c for c, r, f in zip(pairs.chosen, pairs.rejected, flip, strict=True)]
    texts_b = [c if f else r for c, r, f in zip(pairs.chosen, pairs.rejected, flip, strict=True)]
    if judge == "rm":
        coef = fit_cheap_rm(x[ai_train], human[ai_train])
        margin = x @ coef
        ai = (margin > 0).astype(int)
        confidence = 1 / (1 + np.exp(-np.abs(margin)))
        consistent = np.ones(n, dtype=bool)  # a reward model scores each response alone
    elif judge == "biased_judge":
        calls = random.Random(seed * 7919 + 1)
        first = np.array([_biased_judge(texts_a[i], texts_b[i], human[i], pairs.n_turns[i], calls) for i in range(n)])
        swapped = np.array(
            [1 - _biased_judge(texts_b[i], texts_a[i], 1 - human[i], pairs.n_turns[i], calls) for i in range(n)]
        )
        ai = first
        consistent = first == swapped
        confidence = np.where(consistent, 0.9, 0.55)
    else:
        raise ValueError(f"unknown AI labeler {judge!r}; choose from {JUDGES}")
    return SeedSplit(flip, x, human, ai, confidence, consistent, ai_train, calibration, pool, test, texts_a, texts_b)


def split_features(pairs: Pairs, s: SeedSplit, ids: Sequence[int]) -> list[ItemFeatures]:
    return [
        ItemFeatures(
            int(i),
            pair_features(
                prompt=pairs.prompts[i],
                texts=[s.texts_a[i], s.texts_b[i]],
                n_turns=pairs.n_turns[i],
                ai=[(1 if s.ai[i] else -1, float(s.ai_confidence[i]), bool(s.ai_consistent[i]))],
            ),
        )
        for i in ids
    ]


Features = Callable[[Sequence[int]], list[ItemFeatures]]


def policy_scores(policy: str, s: SeedSplit, features: Features, seed: int) -> list[float] | None:
    """A learned policy's score per pool item (higher = send to a human first); None for the others.
    `features(ids)` gives the router's features of those rows, in order."""
    import numpy as np

    if policy not in ("learned", "performance"):
        return None
    cal = features(s.calibration)
    feats = features(s.pool)
    if policy == "learned":
        targets = {int(i): int(s.ai[i] != s.human[i]) for i in s.calibration}  # an AI tie disagrees
        return train_router(cal, targets, seed).predict(feats)
    if s.x is None:
        raise ValueError("the performance policy needs pair representations")
    # As in the app (`routing._performance_router`): only calibration items with an AI preference.
    keep = [k for k, i in enumerate(s.calibration) if s.ai[i] != 0.5]
    ids = np.asarray(s.calibration)[keep]
    ai = np.asarray(s.ai[ids]).astype(int)
    return train_performance_router([cal[k] for k in keep], s.x[ids], s.human[ids], ai, seed=seed).gains(feats)


def choose_humans(policy: str, s: SeedSplit, budget: int, seed: int, scores: list[float] | None) -> set[int]:
    """The pool items a policy sends to humans: exactly `budget` of them (all for `all_human`)."""
    pool = [int(i) for i in s.pool]
    if policy == "all_human":
        return set(pool)
    if budget <= 0 or policy == "all_ai":
        return set()
    if policy == "random":
        return set(random.Random(seed * 31 + budget).sample(pool, min(budget, len(pool))))
    if scores is None:
        raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")
    ranked = sorted(range(len(pool)), key=lambda k: (-scores[k], pool[k]))
    return {pool[k] for k in ranked[:budget]}


@dataclass
class SimulationResult:
    """Per metric, policy and budget, one figure per seed (in seed order, so policies pair up)."""

    judge: str
    budgets: list[float]
    seeds: list[int]
    accuracy: dict[str, dict[float, list[float]]] = field(default_factory=dict)  # rm_accuracy
    label_accuracy: dict[str, dict[float, list[float]]] = field(default_factory=dict)
    ai_accuracy: list[float] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)

    def metric(self, name: str) -> dict[str, dict[float, list[float]]]:
        return {"rm_accuracy": self.accuracy, "label_accuracy": self.label_accuracy}[name]

    def summary(self) -> list[dict[str, Any]]:
        """One row per metric, policy and budget: mean and std over seeds, and the paired
        difference from `random` (mean and its standard error over seeds)."""
        import numpy as np

        rows = []
        for metric in METRICS:
            for policy, by_budget in self.metric(metric).items():
                gains = self.paired_gain(policy, metric=metric) if "random" in self.metric(metric) else {}
                for budget, values in by_budget.items():
                    v = np.array(values)
                    gain, se = gains.get(budget, (None, None))
                    rows.append(
                        {
                            "judge": self.judge,
                            "metric": metric,
                            "policy": policy,
                            "budget": budget,
                            "mean": round(float(v.mean()), 4),
                            "std": round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4),
                            "n": len(v),
                            "minus_random": gain,
                            "minus_random_se": se,
                        }
                    )
        return rows

    def paired_gain(
        self, policy: str, baseline: str = "random", metric: str = "rm_accuracy"
    ) -> dict[float, tuple[float, float]]:
        """Mean and standard error over seeds of (policy - baseline) at each budget."""
        import numpy as np

        figures = self.metric(metric)
        out = {}
        for budget in self.budgets:
            d = np.array(figures[policy][budget]) - np.array(figures[baseline][budget])
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
            out[budget] = (round(float(d.mean()), 4), round(se, 4))
        return out


def simulate(
    pairs: Pairs,
    chosen_emb: Any,
    rejected_emb: Any,
    *,
    judge: str,
    budgets: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    policies: Sequence[str] = POLICIES,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    result = SimulationResult(judge, list(budgets), list(seeds))
    for seed in seeds:
        s = make_split(pairs, chosen_emb, rejected_emb, seed=seed, judge=judge)
        run_seed(result, s, partial(split_features, pairs, s), seed=seed, policies=policies)
        if progress:
            progress(f"seed {seed} done")
    return result


def run_seed(result: SimulationResult, s: SeedSplit, features: Features, *, seed: int, policies: Sequence[str]) -> None:
    """Every policy at every budget of `result` on one seed's split; appends one figure per
    metric (the reward-model one only where `s.x` is given)."""
    import numpy as np

    result.sizes = {k: len(getattr(s, k)) for k in ("ai_train", "calibration", "pool", "test")}
    where = s.test if len(s.test) else s.pool
    result.ai_accuracy.append(float(1 - np.abs(s.ai[where] - s.human[where]).mean()))
    pool = np.asarray(s.pool)
    for policy in policies:
        scores = policy_scores(policy, s, features, seed)
        for budget in result.budgets:
            humans = choose_humans(policy, s, round(budget * len(pool)), seed, scores)
            labels = np.array([s.human[i] if int(i) in humans else s.ai[i] for i in pool], dtype=float)
            right = float(1 - np.abs(labels - s.human[pool]).mean())  # an AI tie is half right
            result.label_accuracy.setdefault(policy, {}).setdefault(budget, []).append(right)
            if s.x is None:
                continue
            known = labels != 0.5  # a tie says nothing about which response is better
            coef = fit_cheap_rm(s.x[pool[known]], labels[known].astype(int))
            acc = cheap_rm_accuracy(coef, s.x[s.test], s.human[s.test])
            result.accuracy.setdefault(policy, {}).setdefault(budget, []).append(acc)
