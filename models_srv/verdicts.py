"""What an LLM judge's raw output records, read back through one typed shape.

An LLM judge's judgment, abstention or failure keeps its raw output as JSON (models_srv.judges
writes it):

    {"answers": [the model's text, one per order asked],
     "orders": [[stored response index at each shown position], ...],
     "verdicts": [{"choice": "A" | "B" | "tie", "strength": n} or {"ranking": [...]}, ...],
     "order_consistent": true | false,
     "abstained": true}            (only when the two orders disagreed and ties are not allowed)

`verdicts` are in **shown** order (the letters the model saw), one per entry of `orders`: what
position bias is measured from. Rows written before `verdicts` existed hold only `answers` (and
`orders` when both orders were asked): their verdicts are read again from the answer texts.

Reward-model and density-ratio judges score each response on its own; their raw output
(`rewards`) has no shown order, so no position is measured for them (`shown_answers` is empty).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Verdict(BaseModel):
    """One order's answer, in the order the responses were shown."""

    model_config = ConfigDict(extra="ignore")
    choice: str | None = None
    strength: int = 0
    ranking: list[int] | None = None

    def shown_choice(self) -> str | None:
        """ "A" (first shown wins), "B" or "tie" for a preference between two responses, else None."""
        if self.choice in ("A", "B", "tie"):
            return self.choice
        r = self.ranking
        if r and len(r) == 2:
            return "A" if r[0] < r[1] else "B" if r[1] < r[0] else "tie"
        return None


class RawOutput(BaseModel):
    model_config = ConfigDict(extra="allow")
    answers: list[str] = []
    orders: list[list[int]] = []
    verdicts: list[Verdict] = []
    order_consistent: bool | None = None
    abstained: bool = False


@dataclass(frozen=True)
class ShownAnswer:
    """One answer of a judge to a pair: the stored indexes in the order shown, and its choice in
    that order ("A" = the first shown)."""

    order: tuple[int, ...]
    choice: str

    @property
    def first_shown_won(self) -> bool | None:
        return None if self.choice == "tie" else self.choice == "A"

    @property
    def stored_choice(self) -> str:
        """The same answer in stored order ("A" = stored response 0)."""
        if self.choice == "tie":
            return "tie"
        return "AB"[self.order[0 if self.choice == "A" else 1]]


def read_raw(raw_output: str) -> RawOutput | None:
    if not raw_output or not raw_output.lstrip().startswith("{"):
        return None
    try:
        return RawOutput.model_validate(json.loads(raw_output))
    except (ValueError, ValidationError):
        return None


def shown_answers(raw_output: str) -> list[ShownAnswer]:
    """Every answer between two responses that this raw output records, with the order it was
    given in; empty where no shown order was recorded (reward-model judges, unreadable rows)."""
    raw = read_raw(raw_output)
    if raw is None:
        return []
    verdicts: Sequence[Verdict | None] = raw.verdicts or [_reread(text) for text in raw.answers]
    orders = raw.orders or ([[0, 1]] if len(verdicts) == 1 else [])
    out = []
    for order, verdict in zip(orders, verdicts, strict=False):
        choice = verdict.shown_choice() if verdict is not None else None
        if choice is not None and len(order) == 2:
            out.append(ShownAnswer(tuple(order), choice))
    return out


def _reread(text: str) -> Verdict | None:
    """A verdict from an answer text stored before verdicts were (letters as the model gave them)."""
    from models_srv.judges import extract_json

    try:
        answer: dict[str, Any] = extract_json(text)
    except ValueError:
        return None
    choice = str(answer.get("choice", "")).strip()
    if choice:
        return Verdict(choice="tie" if choice.lower() == "tie" else choice.upper())
    letters = [str(x).strip().upper() for x in answer.get("ranking") or []]
    if sorted(letters) == ["A", "B"]:
        return Verdict(ranking=[letters.index("A") + 1, letters.index("B") + 1])
    return None
