"""The shared HH-RLHF harmless pairs: 1,600 items with their human judgments, idempotent, all or nothing."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from annotation.importing import ImportRefused, import_items
from annotation.models import Item, Judgment, Project
from tests.conftest import HH_FILE, needs_shared

pytestmark = [needs_shared(HH_FILE), pytest.mark.shared_data]


def test_hh_file_yields_1600_items_with_their_human_judgments(project: Project) -> None:
    with HH_FILE.open("rb") as fh:
        result = import_items(project=project, fileobj=fh)
    assert (result.rows_read, result.items_created, result.judgments_created) == (1600, 1600, 1600)

    raw = {(r["chosen"], r["rejected"]) for r in _rows()}
    judgments = {j.item.external_id: j for j in Judgment.objects.select_related("item", "labeler")}
    assert len(judgments) == 1600
    sides = {"A": 0, "B": 0}
    items = {i.external_id: i for i in Item.objects.filter(project=project)}
    for item in items.values():
        j = judgments[item.external_id]
        assert j.labeler.kind == "imported"
        choice = j.payload["pairwise"]["choice"]
        sides[choice] += 1
        chosen_text = item.responses[0 if choice == "A" else 1]["text"]
        rejected_text = item.responses[1 if choice == "A" else 0]["text"]
        # The original dialogues are exactly prompt + final turn, whichever side the pair landed on.
        prompt_text = "".join(
            f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in item.prompt_messages
        )
        assert (prompt_text + "\n\nAssistant: " + chosen_text, prompt_text + "\n\nAssistant: " + rejected_text) in raw
        assert item.prompt_messages[-1]["role"] == "user"
    assert min(sides.values()) > 700, f"chosen responses should land on both sides, got {sides}"

    with HH_FILE.open("rb") as fh:
        again = import_items(project=project, fileobj=fh)
    assert (again.items_created, again.items_existing, again.judgments_created) == (0, 1600, 0)
    assert Item.objects.filter(project=project).count() == 1600
    assert Judgment.objects.filter(item__project=project).count() == 1600


def _rows() -> list[dict[str, str]]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_hh_responses_with_turn_markers_stay_whole(project: Project) -> None:
    with HH_FILE.open("rb") as fh:
        import_items(project=project, fileobj=fh)
    item = Item.objects.get(project=project, prompt__contains="Isn't that drag kings?")
    texts = {r["text"] for r in item.responses}
    assert any("Human: Then how do they come to be called drag kings" in t for t in texts)
    assert item.prompt_messages[-1] == {"role": "user", "content": "Isn't that drag kings?"}


def test_hh_file_with_one_malformed_row_in_the_middle_is_refused_and_nothing_stored(project: Project) -> None:
    lines = [json.dumps(r) for r in _rows()]
    lines[799] = json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: a"})  # line 800: no rejected
    with pytest.raises(ImportRefused) as refused:
        import_items(project=project, fileobj=io.BytesIO(("\n".join(lines) + "\n").encode()), batch_size=256)
    assert [str(e) for e in refused.value.errors] == ["line 800: chosen and rejected must both be given"]
    assert Item.objects.filter(project=project).count() == 0
    assert Judgment.objects.count() == 0


def test_hh_file_imports_into_a_project_that_asks_annotators_for_a_justification(make_project, curator) -> None:
    schema = {
        "pairwise": {"justification": "required"},
        "rubric": {"aspects": [{"name": "harmless"}], "required": True},
    }
    project = make_project("hh-strict", schema=schema, curator=curator)
    with HH_FILE.open("rb") as fh:
        result = import_items(project=project, fileobj=fh)
    assert (result.items_created, result.judgments_created) == (1600, 1600)
