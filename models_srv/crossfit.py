"""Out-of-fold pair margins (cross-fitting): each pairwise label is judged by a reward model that
never trained on its item.

A model scores the labels it trained on as it learnt them, so its in-sample margins agree with a
wrong label about as often as with a right one; a model trained without the item has to predict it.
Here the items (not the examples) are dealt into `k` folds: an item's every label (several
annotators, a pair and its rubric ratings) lands in one fold, so none of them reaches the model
that scores it. The deal is a seeded hash of the item id, sorted and dealt round robin: the same
folds every time, of sizes that differ by at most one.

Each fold's model is trained by `engine.train` on the other k-1 folds (pairs, lists and ratings
alike) with the caller's `TrainConfig`, whatever its backbone or mode, so a better default model
makes these margins better too. In `frozen` mode the embeddings are cached in the database, so the
k fits embed each text once between them (the first fit embeds the k-1 folds it trains on, the
second the rest) and cost little more than their heads.

Pure computation: nothing is stored here but the embedding cache (`models_srv.services` keeps the
results of a project's run); torch is imported by the engine only when a fit starts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from models_srv.data import Examples, SplitData

DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class OutOfFold:
    """One pairwise example as scored by the model of its item's fold (trained without that fold)."""

    item_id: int
    fold: int
    chosen_score: float
    rejected_score: float
    spread: float  # the two responses' ensemble spreads combined, hypot(std_c, std_r); 0 for one head
    tie: bool = False

    @property
    def margin(self) -> float:
        """r(chosen) - r(rejected): below 0 the held-out model prefers the response the label rejected."""
        return self.chosen_score - self.rejected_score

    @property
    def probability(self) -> float:
        """sigmoid(margin): the held-out model's probability of the given label (meaningless for a tie)."""
        return sigmoid(self.margin)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def assign_folds(item_ids: Iterable[int], k: int, seed: int = 0) -> dict[int, int]:
    """{item id: fold in 0..k-1}: sorted by sha256(seed:id) and dealt round robin."""
    if k < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    ordered = sorted(set(item_ids), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return {item_id: n % k for n, item_id in enumerate(ordered)}


def split_by_fold(examples: Examples, folds: dict[int, int], fold: int) -> tuple[Examples, Examples]:
    """(train: every example of the other folds, held out: this fold's)."""
    train, held = Examples(), Examples()
    for kind in ("pairs", "lists", "ratings"):
        for ex in getattr(examples, kind):
            getattr(held if folds[ex.item_id] == fold else train, kind).append(ex)
    return train, held


def crossfit(
    examples: Examples,
    config: Any,
    *,
    k: int = DEFAULT_FOLDS,
    seed: int = 0,
    aspects: dict[str, tuple[int, int]] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[OutOfFold]:
    """Every pairwise example of `examples` scored out of fold, in the order of `examples.pairs`.

    `config` is an `engine.TrainConfig`; `seed` picks the folds (the config's own seed still seeds
    each fit). Raises `engine.TrainingCancelled` when `should_stop()` says so, and ValueError when
    there are fewer items than folds."""
    from models_srv import engine

    item_ids = [ex.item_id for kind in (examples.pairs, examples.lists, examples.ratings) for ex in kind]
    folds = assign_folds(item_ids, k, seed)
    if len(folds) < k:
        raise ValueError(f"{len(folds)} items cannot fill {k} folds")
    report = progress or (lambda _: None)
    scored: dict[int, OutOfFold] = {}  # position in examples.pairs -> result
    position = {id(ex): n for n, ex in enumerate(examples.pairs)}
    for fold in range(k):
        train, held = split_by_fold(examples, folds, fold)
        if not held.pairs:
            continue

        def fold_progress(info: dict[str, Any], fold: int = fold) -> None:
            report({**info, "fold": fold + 1, "folds": k})

        data = SplitData(train=train, eval=Examples(), aspects=dict(aspects or {}))
        model = engine.train(data, config, fold_progress, should_stop)
        n = len(held.pairs)
        texts = [(ex.prompt, ex.chosen) for ex in held.pairs] + [(ex.prompt, ex.rejected) for ex in held.pairs]
        mean, std, _ = model.score(texts)
        for j, ex in enumerate(held.pairs):
            scored[position[id(ex)]] = OutOfFold(
                item_id=ex.item_id,
                fold=fold,
                chosen_score=float(mean[j]),
                rejected_score=float(mean[n + j]),
                spread=math.hypot(float(std[j]), float(std[n + j])),
                tie=ex.tie,
            )
    return [scored[n] for n in range(len(examples.pairs))]
