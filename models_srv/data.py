"""Training data: snapshots of judgments, split by item, turned into pairwise, listwise and rating
examples. Pure Python: no torch here, so the web process can build snapshots cheaply."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet

from annotation.models import Item, Judgment, Project, source_q
from annotation.schema import JudgmentRead
from models_srv.models import DataSnapshot, LabelSource


@dataclass
class PairExample:
    item_id: int
    prompt: str
    chosen: str
    rejected: str
    strength: int  # 1.. for a preference, 0 for a tie
    tie: bool = False
    source: str = "human"
    category: str = ""
    annotator: int = 0  # the labeler's id: the pluralistic model learns who prefers what


@dataclass
class ListExample:
    item_id: int
    prompt: str
    responses: list[str]
    ranks: list[int]  # 1 = best; equal ranks are ties
    source: str = "human"
    category: str = ""


@dataclass
class RatingExample:
    item_id: int
    prompt: str
    response: str
    ratings: dict[str, float]  # aspect -> value on the schema's scale
    source: str = "human"
    category: str = ""


@dataclass
class Examples:
    pairs: list[PairExample] = field(default_factory=list)
    lists: list[ListExample] = field(default_factory=list)
    ratings: list[RatingExample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs) + len(self.lists) + len(self.ratings)

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every (prompt, response) the examples score."""
        for p in self.pairs:
            yield p.prompt, p.chosen
            yield p.prompt, p.rejected
        for x in self.lists:
            for r in x.responses:
                yield x.prompt, r
        for rated in self.ratings:
            yield rated.prompt, rated.response


@dataclass
class SplitData:
    train: Examples
    eval: Examples
    aspects: dict[str, tuple[int, int]]  # aspect -> (min, max) of its scale


def is_eval_item(external_id: str, seed: int, fraction: float) -> bool:
    """Held out by a hash of the item's external id: the same items whatever the import order."""
    digest = hashlib.sha256(f"{seed}:{external_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def held_out(*, split: str, external_id: str, seed: int, fraction: float) -> bool:
    """The app's rule for an item kept out of training: the project put it in its eval split, or
    `is_eval_item` draws it. Training snapshots and the dataset export's `test` split both use it."""
    return split == Item.Split.EVAL or is_eval_item(external_id, seed, fraction)


def _source_filter(qs: QuerySet[Judgment], source: str) -> QuerySet[Judgment]:
    return qs.filter(source_q(*LabelSource(source).sources))


def training_judgments(project: Project, label_source: str) -> QuerySet[Judgment]:
    """The project's judgments a reward model of `label_source` learns from: not gold checks, not
    dropped items (snapshots take them; a pluralistic model places newcomers from the same)."""
    qs = Judgment.objects.filter(item__project=project, item__is_gold=False).exclude(item__status=Item.Status.DROPPED)
    return _source_filter(qs, label_source)


def snapshot_create(
    *,
    project: Project,
    label_source: str = LabelSource.PEOPLE,
    seed: int = 0,
    eval_fraction: float = 0.2,
    created_by: User | None = None,
) -> DataSnapshot:
    """Record the judgments a run will use (not gold checks, not dropped items) and the split."""
    qs = training_judgments(project, label_source).order_by("id")
    rows = list(qs.values_list("id", "item_id", "item__external_id", "item__split"))
    eval_items = sorted(
        {
            item_id
            for _, item_id, external_id, split in rows
            if held_out(split=split, external_id=external_id, seed=seed, fraction=eval_fraction)
        }
    )
    return DataSnapshot.objects.create(
        project=project,
        label_source=label_source,
        seed=seed,
        eval_fraction=eval_fraction,
        judgment_ids=[r[0] for r in rows],
        eval_item_ids=eval_items,
        counts={"judgments": len(rows), "items": len({r[1] for r in rows}), "eval_items": len(eval_items)},
        created_by=created_by,
    )


def examples_from_judgment(item: Item, payload: dict[str, Any], source: str, annotator: int = 0) -> Examples:
    out = Examples()
    texts = [r["text"] for r in item.responses]
    category = str((item.metadata or {}).get("category", ""))
    read = JudgmentRead.from_stored(payload)
    pairwise = read.pairwise
    if pairwise and len(texts) == 2:
        if pairwise.choice == "tie":
            out.pairs.append(
                PairExample(item.id, item.prompt, texts[0], texts[1], 0, True, source, category, annotator)
            )
        else:
            win = 0 if pairwise.choice == "A" else 1
            assert pairwise.strength is not None  # a stored answer passed validation: an integer
            out.pairs.append(
                PairExample(
                    item.id,
                    item.prompt,
                    texts[win],
                    texts[1 - win],
                    int(pairwise.strength),
                    False,
                    source,
                    category,
                    annotator,
                )
            )
    if read.ranking:
        out.lists.append(ListExample(item.id, item.prompt, texts, list(read.ranking.ranks), source, category))
    for i, ratings in enumerate(read.fine.rubric or ()):
        if ratings:
            out.ratings.append(RatingExample(item.id, item.prompt, texts[i], dict(ratings), source, category))
    return out


def _extend(into: Examples, more: Examples) -> None:
    into.pairs += more.pairs
    into.lists += more.lists
    into.ratings += more.ratings


def load_snapshot(snapshot: DataSnapshot) -> SplitData:
    """Rebuild the exact training and held-out examples a snapshot describes."""
    schema = snapshot.project.judgment_schema
    aspects = {a.name: (a.scale.min, a.scale.max) for a in schema.rubric.aspects} if schema.rubric else {}
    eval_items = set(snapshot.eval_item_ids)
    train, held = Examples(), Examples()
    for chunk in _chunks(snapshot.judgment_ids, 2000):
        for j in Judgment.objects.filter(id__in=chunk).select_related("item", "labeler").order_by("id"):
            source = j.labeler.source.value
            _extend(
                held if j.item_id in eval_items else train,
                examples_from_judgment(j.item, j.payload, source, j.labeler_id),
            )
    return SplitData(train=train, eval=held, aspects=aspects)


def _chunks(values: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]
