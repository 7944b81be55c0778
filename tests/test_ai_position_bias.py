"""Each AI labeler's position and length bias on the Quality page, from its raw answers: one per
order asked (abstentions included), or the one shown order when swapping is off. Where nothing
was measured the figures are None and the page says "n/a", never p = 1.0. LLM judges run against
the fake OpenAI-compatible server (tests/fake_openai.py)."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Item, Judgment, Labeler
from curation import quality
from tests.fake_openai import FakeOpenAI
from tests.test_ai_order_disagreement import N, label_all, llm_labeler, varied_project


def _row(project, name: str) -> dict:
    return {b["labeler"]: b for b in quality.report(project, bootstrap=0)["biases"]}[name]


def _page_row(project, curator, name: str) -> str:
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:quality", args=[project.slug])).content.decode()
    start = page.index(f'data-labeler="{name}"')
    return page[start : page.index("</tr>", start)]


@pytest.mark.parametrize("allow_tie", [True, False])
def test_an_always_a_judge_shows_its_position_bias(make_project, curator, allow_tie) -> None:
    """Its labels are all ties (or, without ties, all abstentions), yet every raw answer picked
    the response shown first."""
    project = varied_project(
        make_project, curator, f"pos-{str(allow_tie).lower()}", allow_tie=allow_tie, case="always-a-shorter"
    )
    with FakeOpenAI(delay=0) as server:
        label_all(project, llm_labeler(project, server.url))
    row = _row(project, "judge")
    assert (row["judgments"], row["abstained"]) == ((N, 0) if allow_tie else (0, N))
    assert (row["first_shown_wins"], row["first_shown_n"]) == (1.0, 2 * N)
    assert row["first_shown_p"] < 1e-20
    # Mapped back, its answers pick each stored response once per item: the longer wins half.
    assert (row["longer_wins"], row["longer_n"]) == (0.5, 2 * N)
    assert "n/a" not in _page_row(project, curator, "judge")


def test_without_swapping_the_one_shown_order_is_measured(make_project, curator) -> None:
    project = varied_project(make_project, curator, "noswap", allow_tie=True, case="always-a-shorter")
    with FakeOpenAI(delay=0) as server:
        label_all(project, llm_labeler(project, server.url, swap_positions=False))
        assert sum(server.calls.values()) == N
    row = _row(project, "judge")
    assert (row["first_shown_wins"], row["first_shown_n"]) == (1.0, N)
    # Shown in stored order, "A" is stored response 0: the shorter on even items, the longer on odd.
    assert (row["longer_wins"], row["longer_n"]) == (0.5, N)


def test_a_judge_without_position_bias(make_project, curator) -> None:
    project = varied_project(make_project, curator, "fair", allow_tie=False, case="longer")
    with FakeOpenAI(delay=0) as server:
        label_all(project, llm_labeler(project, server.url))
    row = _row(project, "judge")
    assert (row["first_shown_wins"], row["first_shown_n"], row["first_shown_p"]) == (0.5, 2 * N, 1.0)
    assert (row["longer_wins"], row["longer_n"]) == (1.0, 2 * N)


def test_nothing_measured_is_na_not_p_1(make_project, curator) -> None:
    """Imported labels have no shown order and a reward-model judge scores each response alone:
    no position figure, and the page says n/a. Rows stored before verdicts were are re-read."""
    project = varied_project(make_project, curator, "na", allow_tie=True, case="none", n=4)
    rm = Labeler.objects.create(project=project, kind="reward_model", name="rm", config={})
    imported = Labeler.objects.create(project=project, kind="imported", name="file", config={})
    old = Labeler.objects.create(project=project, kind="llm", name="old-llm", config={})
    for item in Item.objects.filter(project=project):
        common = {"item": item, "schema_version": 1, "payload": {"pairwise": {"choice": "B", "strength": 1}}}
        Judgment.objects.create(labeler=rm, raw_output=json.dumps({"rewards": [0.1, 0.9]}), **common)
        Judgment.objects.create(labeler=imported, **common)
        answers = ['{"choice": "A", "strength": 1}', '```json\n{"choice": "A", "strength": 1}\n```']
        old_raw = {"answers": answers, "orders": [[0, 1], [1, 0]], "order_consistent": False}
        Judgment.objects.create(
            labeler=old,
            raw_output=json.dumps(old_raw),
            **{**common, "payload": {"pairwise": {"choice": "tie", "strength": 0}}},
        )
    for name in ("rm", "imported"):
        row = _row(project, name)
        assert (row["first_shown_wins"], row["first_shown_p"], row["first_shown_n"]) == (None, None, 0), name
        assert "n/a" in _page_row(project, curator, name)
    assert _row(project, "rm")["longer_n"] == 4  # its labels still show length bias
    row = _row(project, "old-llm")
    assert (row["first_shown_wins"], row["first_shown_n"]) == (1.0, 8)
