"""An answer as the page sends it, made into the judgment to store: mapped from the order shown
to the stored order of the responses, and scored against the item's gold answer.

Responses are shown in a per-assignment random order (`Assignment.response_order`, stored display
position -> stored index). Answers arrive in display order and are mapped back to the stored
order here, so position bias can be measured and undone and the client cannot mislabel it.
"""

from __future__ import annotations

from typing import Any

from annotation.schema import JudgmentRead, JudgmentSchema, PayloadError


def to_stored_order(payload: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """Map an answer given in display order onto the stored order of the responses."""
    if not isinstance(payload, dict):
        raise PayloadError("a judgment payload is a JSON object")
    n = len(order)
    out = dict(payload)
    pairwise = payload.get("pairwise")
    if isinstance(pairwise, dict) and pairwise.get("choice") in ("A", "B"):
        if n != 2:
            raise PayloadError(f"a pairwise answer needs an item with 2 responses; this one has {n}")
        shown = 0 if pairwise["choice"] == "A" else 1
        out["pairwise"] = {**pairwise, "choice": "AB"[order[shown]]}
    for key in ("ranking", "rubric"):
        values = payload.get(key)
        if isinstance(values, list):
            if len(values) != n:
                raise PayloadError(f"{key} must give one entry per response ({n})")
            stored: list[Any] = [None] * n
            for shown, value in enumerate(values):
                stored[order[shown]] = value
            out[key] = stored
    spans = payload.get("spans")
    if isinstance(spans, list):
        mapped = []
        for mark in spans:
            if not isinstance(mark, dict) or not isinstance(mark.get("response"), int) or not 0 <= mark["response"] < n:
                raise PayloadError("each span names a response shown on screen")
            mapped.append({**mark, "response": order[mark["response"]]})
        out["spans"] = mapped
    return out


def gold_score(schema: JudgmentSchema, answer: dict[str, Any], gold: dict[str, Any]) -> float | None:
    """Agreement of an answer with the gold answer, 0..1, averaged over the parts gold gives."""
    a, g = JudgmentRead.from_stored(answer), JudgmentRead.from_stored(gold)
    parts: list[float] = []
    if g.pairwise and a.pairwise:
        parts.append(1.0 if a.pairwise.choice == g.pairwise.choice else 0.0)
    if g.ranking and a.ranking:
        gr, ar = g.ranking.ranks, a.ranking.ranks
        pairs = [(i, j) for i in range(len(gr)) for j in range(i + 1, len(gr)) if gr[i] != gr[j]]
        if pairs:
            parts.append(sum((gr[i] < gr[j]) == (ar[i] < ar[j]) for i, j in pairs) / len(pairs))
    if g.fine.rubric and a.fine.rubric and schema.rubric:
        spans = {aspect.name: aspect.scale.max - aspect.scale.min for aspect in schema.rubric.aspects}
        # Only ratings the annotator gave are compared: an aspect left blank (where the schema
        # allows it) is neither right nor wrong, and an answer with none is not scored.
        errors = [
            abs(ratings[name] - given[name]) / spans[name]
            for ratings, given in zip(g.fine.rubric, a.fine.rubric, strict=False)
            for name in ratings
            if name in spans and given.get(name) is not None
        ]
        if errors:
            parts.append(1.0 - sum(errors) / len(errors))
    return sum(parts) / len(parts) if parts else None
