"""Pluralistic reward models: a mixture of K reward heads, each annotator a weighting over them.

People disagree for reasons, not only by noise. One Bradley-Terry model fitted to everyone's
labels averages distinct preference groups into a model nobody holds; one model per annotator has
too few labels to learn anything. The mixture sits between: annotators belong to one of K latent
groups, each group has its own linear reward head over shared features, and an annotator's
weighting over the heads is the posterior probability of their group given their judgments.

    P(annotator a prefers x over y) = sum_k  q_ak * sigmoid(w_k . (phi(x) - phi(y)))

where q_a is the posterior over groups. It is fitted by EM (the mixture-of-experts view of a
latent class per annotator): the E-step computes each annotator's posterior from the likelihood of
all of their judgments under each head, refitted without that annotator so that nobody is pulled
into a group by a head they bent themselves; the M-step refits each head by L2-regularized
logistic regression (Newton steps, full batch) on all judgments weighted by their annotator's
posterior, and the group sizes as the posteriors' means. Several starts (k-means on each
annotator's own head, and one random); the best training likelihood wins.

K is chosen by the Bayesian information criterion with the number of annotators as the sample
size (`choose_k`): a group is a set of annotators, and it must explain enough of its members'
judgments to pay for its head. A new annotator starts from the population mix (the
group sizes) and is placed by Bayes' rule as their judgments arrive (`place`).

Features (`features`): the frozen encoder's embedding of (prompt, response), reduced by PCA to a
few dimensions fitted on the project's texts, plus the response's log length, standardized. Linear
heads over them keep EM fast (a fit of thousands of judgments takes well under a second) and
readable: a head's weight on length says whether its group prefers longer answers.

Everything here is numpy over arrays; `models_srv.services` trains, versions and scores through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A comparison: (annotator index, chosen row, rejected row, target), the target the probability the
# chosen row wins (1.0 for a preference, 0.5 for a tie). Rows index the feature matrix.
Comparison = tuple[int, int, int, float]


@dataclass
class Mixture:
    """A fitted mixture: heads (K x d), group sizes (K), each training annotator's posterior
    (A x K) and the training log-likelihood."""

    heads: np.ndarray
    sizes: np.ndarray
    posterior: np.ndarray
    loglik: float
    iterations: int = 0
    history: list[float] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.heads.shape[0])

    def place(self, diffs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """The posterior over groups of an annotator with these judgments (rows of
        phi(chosen) - phi(rejected) and their targets), starting from the group sizes; with no
        judgments, the group sizes themselves."""
        logp = np.log(np.maximum(self.sizes, 1e-12))
        if len(diffs):
            logp = logp + _loglik_per_head(diffs, targets, self.heads).sum(axis=0)
        return _softmax(logp)

    def prob(self, weights: np.ndarray, diffs: np.ndarray) -> np.ndarray:
        """P(first preferred) for each row of `diffs`, under the group weighting `weights`."""
        return _sigmoid(diffs @ self.heads.T) @ weights

    def scores(self, weights: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """A reward per row of `phi` for an annotator (or a population) with group weights
        `weights`: the weighted heads' scores."""
        return (phi @ self.heads.T) @ weights


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softmax(logp: np.ndarray) -> np.ndarray:
    z = logp - logp.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _loglik_per_head(diffs: np.ndarray, targets: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """Log-likelihood of each comparison (rows) under each head (columns)."""
    z = diffs @ heads.T
    # log sigmoid(z) and log sigmoid(-z), stably
    log_p = -np.logaddexp(0.0, -z)
    log_q = -np.logaddexp(0.0, z)
    t = targets[:, None]
    return t * log_p + (1.0 - t) * log_q


def _fit_head(diffs: np.ndarray, targets: np.ndarray, weights: np.ndarray, l2: float, w: np.ndarray) -> np.ndarray:
    """Weighted L2-regularized logistic regression without intercept, a few Newton steps from w."""
    d = diffs.shape[1]
    for _ in range(8):
        p = _sigmoid(diffs @ w)
        grad = diffs.T @ (weights * (targets - p)) - l2 * w
        s = weights * p * (1.0 - p)
        hess = (diffs * s[:, None]).T @ diffs + l2 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if float(np.abs(step).max()) < 1e-6:
            break
    return w


def fit(
    diffs: np.ndarray,
    targets: np.ndarray,
    annotators: np.ndarray,
    n_annotators: int,
    k: int,
    *,
    l2: float = 3.0,
    restarts: int = 4,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> Mixture:
    """EM for the mixture. `diffs[j]` = phi(chosen) - phi(rejected) of judgment j, `targets[j]` the
    probability the chosen one wins, `annotators[j]` its annotator's index (0 .. n_annotators-1).

    The E-step scores each annotator under every head refitted without them (`_left_out`), so an
    annotator is not drawn into a group by a head their own judgments bent; EM stops when no
    posterior moves by more than `tol` or the training log-likelihood by a relative 1e-6. The
    best of `restarts` starts by training log-likelihood."""
    rng = np.random.default_rng(seed)
    order = np.argsort(annotators, kind="stable")
    rows = np.split(order, np.searchsorted(annotators[order], np.arange(1, n_annotators)))
    starts = _starts(diffs, targets, annotators, n_annotators, k, l2, restarts, rng)
    best: Mixture | None = None
    for post in starts:
        heads = np.zeros((k, diffs.shape[1]))
        history: list[float] = []
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007 - kept for the result
            sizes = _sizes(post)
            weights = post[annotators]  # judgment j's weight in head k: its annotator's posterior
            heads = np.stack([_fit_head(diffs, targets, weights[:, c], l2, heads[c]) for c in range(k)])
            per = _left_out(diffs, targets, annotators, rows, heads, weights, l2)  # annotator x head
            joint = per + np.log(sizes)[None, :]
            moved, post = post, np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
            history.append(_loglik(diffs, targets, rows, heads, _sizes(post)))
            if float(np.abs(post - moved).max()) < tol or (
                len(history) > 1 and abs(history[-1] - history[-2]) < 1e-6 * abs(history[-1])
            ):
                break
        m = Mixture(heads=heads, sizes=_sizes(post), posterior=post, loglik=history[-1], iterations=it, history=history)
        if best is None or m.loglik > best.loglik:
            best = m
    assert best is not None
    return best


def _sizes(post: np.ndarray) -> np.ndarray:
    return (post.sum(axis=0) + 1e-3) / (post.shape[0] + post.shape[1] * 1e-3)


def _by_annotator(values: np.ndarray, annotators: np.ndarray, n_annotators: int) -> np.ndarray:
    """Sums of the rows of `values` (judgments x columns) per annotator (annotators x columns)."""
    return np.stack([np.bincount(annotators, weights=col, minlength=n_annotators) for col in values.T], axis=1)


def _loglik(
    diffs: np.ndarray, targets: np.ndarray, rows: Sequence[np.ndarray], heads: np.ndarray, sizes: np.ndarray
) -> float:
    """The training log-likelihood: each annotator's judgments (`rows[a]`) under the mixture of heads."""
    per = _loglik_per_head(diffs, targets, heads)
    joint = np.stack([per[r].sum(axis=0) for r in rows]) + np.log(sizes)[None, :]
    return float(np.logaddexp.reduce(joint, axis=1).sum())


def _left_out(
    diffs: np.ndarray,
    targets: np.ndarray,
    annotators: np.ndarray,
    rows: Sequence[np.ndarray],
    heads: np.ndarray,
    weights: np.ndarray,
    l2: float,
) -> np.ndarray:
    """Log-likelihood of each annotator's judgments (rows: `rows[a]` indexes annotator a's) under
    each head refitted without them (columns): one Newton step from the fitted head with the
    annotator's weighted gradient and curvature taken out. A head fitted mostly on one
    annotator's judgments fits them by construction; left out, it predicts them no better than
    its prior."""
    n = len(rows)
    out = np.zeros((n, heads.shape[0]))
    eye = l2 * np.eye(diffs.shape[1])
    for c, w in enumerate(heads):
        p = _sigmoid(diffs @ w)
        grad = _by_annotator(diffs * (weights[:, c] * (targets - p))[:, None], annotators, n)  # annotator x d
        scaled = diffs * (weights[:, c] * p * (1 - p))[:, None]
        curv = np.stack([scaled[r].T @ diffs[r] for r in rows])  # annotator x d x d
        left = w - np.linalg.solve(curv.sum(axis=0) + eye - curv, grad[..., None])[..., 0]  # annotator x d
        z = np.einsum("jd,jd->j", diffs, left[annotators])
        ll = targets * -np.logaddexp(0.0, -z) + (1.0 - targets) * -np.logaddexp(0.0, z)
        out[:, c] = np.bincount(annotators, weights=ll, minlength=n)
    return out


def _starts(
    diffs: np.ndarray,
    targets: np.ndarray,
    annotators: np.ndarray,
    n_annotators: int,
    k: int,
    l2: float,
    restarts: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Initial posteriors (annotator x K): k-means (cosine, k-means++ seeding) on each annotator's
    own head, fitted on their judgments alone with a strong prior, once per restart, plus one
    random start. Annotators who agree on what they prefer start in the same group, which EM from
    random posteriors often fails to find with few judgments each."""
    if k == 1:
        return [np.ones((n_annotators, 1))]
    own = np.zeros((n_annotators, diffs.shape[1]))
    for a in range(n_annotators):
        rows = annotators == a
        if rows.any():
            own[a] = _fit_head(diffs[rows], targets[rows], np.ones(int(rows.sum())), 10.0 * l2, own[a])
    unit = own / (np.linalg.norm(own, axis=1, keepdims=True) + 1e-12)
    starts = []
    for _ in range(max(1, restarts)):
        centers = [unit[rng.integers(n_annotators)]]
        while len(centers) < k:
            dist = np.min([1.0 - unit @ c for c in centers], axis=0).clip(0)
            p = dist / dist.sum() if dist.sum() > 0 else np.full(n_annotators, 1 / n_annotators)
            centers.append(unit[rng.choice(n_annotators, p=p)])
        c = np.array(centers)
        for _ in range(20):
            label = (unit @ c.T).argmax(axis=1)
            c = np.array([unit[label == j].mean(axis=0) if (label == j).any() else c[j] for j in range(k)])
            c /= np.linalg.norm(c, axis=1, keepdims=True) + 1e-12
        post = np.full((n_annotators, k), 0.1 / k)
        post[np.arange(n_annotators), (unit @ c.T).argmax(axis=1)] += 0.9
        starts.append(post)
    starts.append(rng.dirichlet(np.ones(k), size=n_annotators))
    return starts


@dataclass
class Choice:
    k: int
    scores: dict[int, float]  # K -> the BIC-penalized training log-likelihood per judgment (higher is better)
    mixture: Mixture  # the chosen K's fit


def choose_k(
    diffs: np.ndarray,
    targets: np.ndarray,
    annotators: np.ndarray,
    n_annotators: int,
    ks: Sequence[int] = (1, 2, 3, 4),
    *,
    l2: float = 3.0,
    seed: int = 0,
) -> Choice:
    """The K with the best Bayesian information criterion counted in annotators: the training
    log-likelihood of the K-group mixture less half its parameters (K heads and K - 1 sizes) times
    log(number of annotators). Groups are a property of annotators, not of single judgments: a
    group earns its head only if it explains enough of its members' judgments, however many each
    made. (Held-out judgments split within each annotator picked K = 1 or 4 at 20 judgments each
    about as often as the true 2: the held-out share of a small group is a handful of judgments.)"""
    n_params = diffs.shape[1] + 1
    penalty = 0.5 * math.log(max(n_annotators, 2))
    fits = {k: fit(diffs, targets, annotators, n_annotators, k, l2=l2, seed=seed) for k in ks}
    scores = {k: (m.loglik - penalty * (k * n_params - 1)) / len(diffs) for k, m in fits.items()}
    best = max(ks, key=lambda k: scores[k])
    return Choice(k=best, scores=scores, mixture=fits[best])


# ---------------------------------------------------------------------------------------------
# Features


@dataclass
class FeatureMap:
    """Embedding -> the first `dims` principal components (fitted on a project's texts) and the
    response's log length, standardized: what the heads read."""

    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray
    length_mean: float
    length_scale: float

    @classmethod
    def fit(cls, embeddings: np.ndarray, lengths: np.ndarray, dims: int = 8) -> FeatureMap:
        mean = embeddings.mean(axis=0)
        centered = embeddings - mean
        dims = max(1, min(dims, centered.shape[0] - 1, centered.shape[1]))
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        comps = vt[:dims]
        proj = centered @ comps.T
        scale = proj.std(axis=0) + 1e-8
        loglen = np.log1p(lengths.astype(np.float64))
        return cls(mean, comps, scale, float(loglen.mean()), float(loglen.std() + 1e-8))

    def __call__(self, embeddings: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        proj = (embeddings - self.mean) @ self.components.T / self.scale
        loglen = (np.log1p(lengths.astype(np.float64)) - self.length_mean) / self.length_scale
        return np.hstack([proj, loglen[:, None]])

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "scale": self.scale.tolist(),
            "length_mean": self.length_mean,
            "length_scale": self.length_scale,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureMap:
        return cls(
            np.asarray(data["mean"]),
            np.asarray(data["components"]),
            np.asarray(data["scale"]),
            float(data["length_mean"]),
            float(data["length_scale"]),
        )


def adjusted_rand_index(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Adjusted Rand index of two labelings of the same things (1 = the same partition, about 0
    = chance)."""
    if len(a) != len(b):
        raise ValueError("labelings of different lengths")
    n = len(a)
    if n < 2:
        return 1.0
    la, lb = {x: i for i, x in enumerate(dict.fromkeys(a))}, {x: i for i, x in enumerate(dict.fromkeys(b))}
    table = np.zeros((len(la), len(lb)))
    for x, y in zip(a, b, strict=True):
        table[la[x], lb[y]] += 1

    def pairs(v: np.ndarray) -> float:
        return float((v * (v - 1) / 2).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = rows * cols / (n * (n - 1) / 2)
    top = (rows + cols) / 2
    if math.isclose(top, expected):
        return 1.0
    return (index - expected) / (top - expected)


# ---------------------------------------------------------------------------------------------
# The reward model's mode


@dataclass
class Plural:
    """A trained pluralistic reward model: the mixture, the feature map, and which labeler each
    posterior row belongs to. Scores for the population weight the heads by the groups' sizes; for
    a known annotator, by their posterior; for a new one, by `Mixture.place` on their judgments."""

    mixture: Mixture
    fmap: FeatureMap
    annotators: list[int]  # labeler ids, in the order of the posterior's rows
    k_scores: dict[int, float]

    def phi(self, embeddings: np.ndarray, responses: Sequence[str]) -> np.ndarray:
        return self.fmap(embeddings, np.array([len(r) for r in responses]))

    def group_scores(self, embeddings: np.ndarray, responses: Sequence[str]) -> np.ndarray:
        """Each group head's reward per text (texts x K)."""
        return self.phi(embeddings, responses) @ self.mixture.heads.T

    def population_scores(self, embeddings: np.ndarray, responses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(reward, spread across the groups) per text, the heads weighted by the groups' sizes."""
        s = self.group_scores(embeddings, responses)
        w = self.mixture.sizes
        mean = s @ w
        return mean, np.sqrt(((s - mean[:, None]) ** 2) @ w)

    def weights_for(self, labeler_id: int) -> np.ndarray:
        """The labeler's weighting over the heads: their posterior if they were in training, else
        the population mix."""
        try:
            return self.mixture.posterior[self.annotators.index(labeler_id)]
        except ValueError:
            return self.mixture.sizes

    def to_json(self) -> dict[str, Any]:
        m = self.mixture
        return {
            "heads": m.heads.tolist(),
            "sizes": m.sizes.tolist(),
            "posterior": m.posterior.tolist(),
            "loglik": m.loglik,
            "iterations": m.iterations,
            "annotators": self.annotators,
            "k_scores": {str(k): v for k, v in self.k_scores.items()},
            "features": self.fmap.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plural:
        mixture = Mixture(
            heads=np.asarray(data["heads"]),
            sizes=np.asarray(data["sizes"]),
            posterior=np.asarray(data["posterior"]),
            loglik=float(data["loglik"]),
            iterations=int(data["iterations"]),
        )
        scores = {int(k): float(v) for k, v in data["k_scores"].items()}
        return cls(mixture, FeatureMap.from_json(data["features"]), [int(a) for a in data["annotators"]], scores)


def pair_rows(pairs: Sequence[Any], index: dict[tuple[str, str], int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chosen rows, rejected rows, targets) of pair examples, skipping identical responses; a tie
    targets 0.5."""
    chosen, rejected, targets = [], [], []
    for p in pairs:
        if p.chosen == p.rejected:
            continue
        chosen.append(index[(p.prompt, p.chosen)])
        rejected.append(index[(p.prompt, p.rejected)])
        targets.append(0.5 if p.tie else 1.0)
    return np.array(chosen, dtype=int), np.array(rejected, dtype=int), np.array(targets)


def train_plural(
    pairs: Sequence[Any],
    embeddings: np.ndarray,
    index: dict[tuple[str, str], int],
    responses: Sequence[str],
    config: Any,
) -> Plural:
    """Fit the mixture on pair examples (each with its `annotator`, a labeler id): the feature map
    on every text's embedding (row `index[(prompt, response)]`), K from `config.groups` or chosen
    by `choose_k`, EM seeded by `config.seed`."""
    kept = [p for p in pairs if p.chosen != p.rejected]
    if not kept:
        raise ValueError("no pairwise judgments between different responses to learn from")
    fmap = FeatureMap.fit(embeddings, np.array([len(r) for r in responses]), dims=config.group_dims)
    phi = fmap(embeddings, np.array([len(r) for r in responses]))
    c, r, targets = pair_rows(kept, index)
    labelers = sorted({p.annotator for p in kept})
    row_of = {a: i for i, a in enumerate(labelers)}
    ann = np.array([row_of[p.annotator] for p in kept])
    diffs = phi[c] - phi[r]
    if config.groups:
        return Plural(fit(diffs, targets, ann, len(labelers), config.groups, seed=config.seed), fmap, labelers, {})
    ks = [k for k in (1, 2, 3, 4) if k <= max(1, len(labelers))]
    choice = choose_k(diffs, targets, ann, len(labelers), ks, seed=config.seed)
    return Plural(choice.mixture, fmap, labelers, choice.scores)
