"""Routing simulated on a project's stored labels: real AI judgments against real human ones.

`simulation.py` makes up its AI labelers; here the AI side is what a project's AI labelers (LLM,
reward-model, density-ratio judges) stored as judgments, and the truth is the people's consensus
on the same items, so a router's gain over random routing is measured on errors nobody designed.

- The rows: the project's items (not gold, not dropped) with a human consensus that prefers one
  response (a tie is no truth to score against) and a judgment of at least one of the named AI
  labelers. The AI label is those labelers' majority (`routing.consensus_sign`; a split or a tie
  is 0.5, half right, and trains no reward model); the human label is the annotators' majority,
  or with `truth="imported"` the imported labels', or with `"people"` the annotators' where any
  and the imported ones elsewhere (as `route_project(calibrate_on_imported=True)` calibrates).
- The router sees the app's own features (`routing.item_features`), with the AI signals of the
  named labelers only, audited or not (`require_ai_audit` gates routing, not a simulation that
  asks about a labeler by name). They include the current reward model's margin and spread where it has
  scored the items: if that model trained on these items' human labels, its margin knows them, so
  simulate before rescoring or with a model that never saw the items.
- Per seed the rows are shuffled and split into calibration (the router learns there), pool (the
  routed items, the budget a share of them) and test (held-out human labels for the reward-model
  figure), 20 / 45 / 35 % as for the simulated judge; `simulation.run_seed` does the rest, so both
  paths report the same figures. The A/B order is the stored one: position effects of a real judge
  stay as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from annotation.models import Item, Judgment, LabelSource, Project, source_q
from models_srv.routing import ItemFeatures, consensus_sign, item_features, pair_representations
from models_srv.simulation import POLICIES, SeedSplit, SimulationResult, run_seed

TRUTHS = {
    "human": (LabelSource.HUMAN,),
    "imported": (LabelSource.IMPORTED,),
    "people": (LabelSource.HUMAN, LabelSource.IMPORTED),
}
PARTS = (0.2, 0.45)  # calibration and pool; the rest is the test part


class StoredLabelsError(ValueError):
    pass


@dataclass
class StoredLabels:
    """The rows of one project's simulation, in item-id order: 1 = the second response preferred."""

    name: str
    item_ids: list[int]
    human: Any  # 0 / 1
    ai: Any  # 0 / 1, or 0.5 where the AI labelers tie
    confidence: Any  # the AI judgments' mean confidence (0.5 where none is stored)
    features: list[ItemFeatures]
    x: Any  # repr(B) - repr(A) per row, or None

    def __len__(self) -> int:
        return len(self.item_ids)


def ai_labelers_named(project: Project, names: Sequence[str]) -> list[Any]:
    """The latest version of each named AI labeler of the project."""
    from annotation.models import Labeler

    found = []
    for name in names:
        labeler = (
            Labeler.objects.filter(source_q(LabelSource.AI, labeler=""), project=project, name=name)
            .order_by("-version")
            .first()
        )
        if labeler is None:
            known = sorted(
                set(
                    Labeler.objects.filter(source_q(LabelSource.AI, labeler=""), project=project).values_list(
                        "name", flat=True
                    )
                )
            )
            raise StoredLabelsError(f"no AI labeler {name!r} in {project.slug}; its AI labelers: {known or 'none'}")
        found.append(labeler)
    return found


def load_stored_labels(
    *, project: Project, ai_labelers: Sequence[str], truth: str = "human", config: Any = None, embed: bool = True
) -> StoredLabels:
    """The project's rows with a human preference and the named AI labelers' answer. `config` (a
    `TrainConfig`) chooses the frozen backbone of the reward-model figure; `embed=False` skips it
    (and the performance policy, which needs it)."""
    import numpy as np

    if truth not in TRUTHS:
        raise StoredLabelsError(f"truth must be one of {sorted(TRUTHS)}")
    labelers = ai_labelers_named(project, ai_labelers)
    items = {
        it.id: it
        for it in Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED).order_by("id")
    }
    people: dict[int, list[Judgment]] = {}
    imported: dict[int, list[Judgment]] = {}
    ai: dict[int, list[Judgment]] = {}
    rows = Judgment.objects.filter(
        source_q(*TRUTHS[truth]) | Q(labeler_id__in=[lab.id for lab in labelers]), item_id__in=list(items)
    ).select_related("labeler")
    for j in rows.order_by("id"):
        source = j.labeler.source
        target = {LabelSource.AI: ai, LabelSource.IMPORTED: imported}.get(source, people)
        target.setdefault(j.item_id, []).append(j)
    reference = {**imported, **people} if truth == "people" else (imported if truth == "imported" else people)
    ids, human, ai_label, confidence = [], [], [], []
    for item_id in sorted(reference.keys() & ai.keys()):
        if len(items[item_id].responses) < 2:
            continue
        h, a = consensus_sign(reference[item_id]), consensus_sign(ai[item_id])
        if not h or a is None:
            continue
        ids.append(item_id)
        human.append(1 if h > 0 else 0)
        ai_label.append(0.5 if a == 0 else 1.0 if a > 0 else 0.0)
        known = [j.confidence for j in ai[item_id] if j.confidence is not None]
        confidence.append(sum(known) / len(known) if known else 0.5)
    if len(ids) < 40:
        raise StoredLabelsError(
            f"{len(ids)} items have both a human preference ({truth}) and a label of {', '.join(ai_labelers)}: "
            "the simulation needs at least 40"
        )
    feats = item_features(project, [items[i] for i in ids], ai_labeler_ids=[lab.id for lab in labelers])
    x = pair_representations(ids, config=config) if embed else None
    return StoredLabels(
        name=f"{project.slug}: {'+'.join(ai_labelers)}",
        item_ids=ids,
        human=np.array(human, dtype=int),
        ai=np.array(ai_label, dtype=float),
        confidence=np.array(confidence, dtype=float),
        features=feats,
        x=x,
    )


def seed_split(data: StoredLabels, seed: int, parts: tuple[float, float] = PARTS) -> SeedSplit:
    import numpy as np

    n = len(data)
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([round(f * n) for f in parts])
    calibration, pool, test = np.split(perm, cuts)
    return SeedSplit(
        flip=None,
        x=data.x,
        human=data.human,
        ai=data.ai,
        ai_confidence=data.confidence,
        ai_consistent=None,
        ai_train=np.array([], dtype=int),
        calibration=calibration,
        pool=pool,
        test=test,
    )


def simulate_stored(
    data: StoredLabels,
    *,
    budgets: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    policies: Sequence[str] = POLICIES,
    progress: Any = None,
) -> SimulationResult:
    """Every policy at every budget on each seed's split of the stored rows."""
    if data.x is None:
        policies = [p for p in policies if p != "performance"]
    result = SimulationResult(data.name, list(budgets), list(seeds))

    def features(rows: Sequence[int]) -> list[ItemFeatures]:
        # Keyed by row, as the split and the router's targets are.
        return [ItemFeatures(int(k), data.features[int(k)].values) for k in rows]

    for seed in seeds:
        run_seed(result, seed_split(data, seed), features, seed=seed, policies=policies)
        if progress:
            progress(f"seed {seed} done")
    return result
