"""An LLM judge's two response orders that disagree never become a preference: a tie where the
schema allows ties, an abstention (no judgment, counted on the run, both answers kept and shown)
where it does not. A judge whose orders agree keeps today's labels. Through the real client code
against the fake OpenAI-compatible server on 127.0.0.1 (tests/fake_openai.py)."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Judgment, Labeler
from annotation.schema import JudgmentSchema
from models_srv.judges import reconcile
from models_srv.labeling import LabelerError, labeler_create, run_execute, run_start
from models_srv.models import AILabelFailure
from tests.conftest import jsonl
from tests.fake_openai import FakeOpenAI

N = 50
STRENGTHS = ["better", "much better"]


def varied_project(make_project, curator, slug: str, *, allow_tie: bool, case: str, n: int = N):
    """`n` pairs whose shorter response alternates between stored positions 0 and 1, and whose
    lengths vary, all asked of the fake judge `case`."""
    project = make_project(slug, curator=curator, schema={"pairwise": {"strengths": STRENGTHS, "allow_tie": allow_tie}})
    rows = []
    for i in range(n):
        short = f"Short answer {i}."
        long = f"A longer answer {i} that explains the reasoning, " + "with more detail " * (1 + i % 5)
        rows.append(
            {
                "id": f"v{i:03d}",
                "prompt": f"Question {i}? case:{case}",
                "response_a": short if i % 2 == 0 else long,
                "response_b": long if i % 2 == 0 else short,
            }
        )
    import_items(project=project, fileobj=jsonl(rows))
    return project


def llm_labeler(project, url: str, name: str = "judge", **extra) -> Labeler:
    config = {"base_url": url, "model": "judge-1", "concurrency": 4, "backoff_s": 0.01, "max_retries": 2, **extra}
    return labeler_create(project=project, kind="llm", name=name, config=config, api_key="sk-test")


def label_all(project, labeler: Labeler):
    return run_execute(run_id=run_start(project=project, labeler=labeler, enqueue=False).id)


def test_an_always_a_judge_whose_strength_follows_length_ties_every_item(make_project, curator) -> None:
    """The issue's judge: "A", strength 2 when the first shown is shorter, else 1. Before, the
    strengths' mean (-0.5) made 48 of 50 items preferences for the shorter response."""
    project = varied_project(make_project, curator, "tie-ok", allow_tie=True, case="always-a-shorter")
    with FakeOpenAI(delay=0) as server:
        run = label_all(project, llm_labeler(project, server.url))
    assert (run.status, run.done, run.failed, run.abstained) == ("succeeded", N, 0, 0)
    judgments = list(Judgment.objects.filter(item__project=project))
    assert len(judgments) == N
    assert {json.dumps(j.payload["pairwise"]) for j in judgments} == {json.dumps({"choice": "tie", "strength": 0})}
    for j in judgments:
        raw = json.loads(j.raw_output)
        assert raw["order_consistent"] is False
        assert raw["orders"] == [[0, 1], [1, 0]]
        assert [v["choice"] for v in raw["verdicts"]] == ["A", "A"]  # in shown order
        assert sorted(v["strength"] for v in raw["verdicts"]) == [1, 2]
        assert j.confidence == pytest.approx(0.8 * 0.3)


def test_without_ties_disagreeing_orders_abstain_and_are_counted_shown_and_kept(make_project, curator) -> None:
    project = varied_project(make_project, curator, "no-tie", allow_tie=False, case="always-a-shorter")
    with FakeOpenAI(delay=0) as server:
        labeler = llm_labeler(project, server.url)
        run = label_all(project, labeler)
        asked = sum(server.calls.values())
        # An abstention is the labeler's answer: a later run asks nothing again.
        with pytest.raises(LabelerError, match=rf"answered all {N} items already \({N} abstained"):
            run_start(project=project, labeler=labeler, enqueue=False)
        assert sum(server.calls.values()) == asked == 2 * N
    assert (run.status, run.done, run.failed, run.abstained) == ("succeeded", 0, 0, N)
    assert not Judgment.objects.filter(item__project=project).exists()  # never "A" in stored order
    held = list(AILabelFailure.objects.filter(run=run))
    assert len(held) == N and all(f.abstained for f in held)
    raw = json.loads(held[0].raw_output)
    assert raw["abstained"] is True and raw["order_consistent"] is False and len(raw["answers"]) == 2

    c = Client()
    c.force_login(curator)
    page = c.get(reverse("models_srv:ai_run", args=[run.uuid])).content.decode()
    assert f"{N} abstained" in page and 'data-testid="abstentions"' in page and "v000" in page
    assert f"{N} abstained" in c.get(reverse("models_srv:ai", args=[project.slug])).content.decode()

    from tests.test_api import token_for

    api = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    body = api.get(f"/api/v1/ai-runs/{run.uuid}").json()
    assert (body["done"], body["failed"], body["abstained"]) == (0, 0, N)
    assert body["failures"] == [] and len(body["abstentions"]) == N
    assert body["abstentions"][0]["reason"].startswith("abstained")


def test_a_judge_whose_orders_agree_keeps_its_labels(make_project, curator) -> None:
    project = varied_project(make_project, curator, "agree", allow_tie=False, case="longer")
    with FakeOpenAI(delay=0) as server:
        run = label_all(project, llm_labeler(project, server.url))
    assert (run.done, run.failed, run.abstained) == (N, 0, 0)
    for j in Judgment.objects.filter(item__project=project).select_related("item"):
        texts = j.item.response_texts
        assert j.payload["pairwise"] == {"choice": "AB"[int(len(texts[1]) > len(texts[0]))], "strength": 2}
        assert json.loads(j.raw_output)["order_consistent"] is True


PAIR = JudgmentSchema.model_validate({"pairwise": {"strengths": STRENGTHS, "allow_tie": True}})
PAIR_NO_TIE = JudgmentSchema.model_validate({"pairwise": {"strengths": STRENGTHS, "allow_tie": False}})


def _p(choice: str, strength: int) -> dict:
    return {"pairwise": {"choice": choice, "strength": strength}}


@pytest.mark.parametrize(
    ("schema", "a", "b", "expected", "consistent"),
    [
        (PAIR, _p("A", 2), _p("A", 1), _p("A", 2), True),  # agreeing orders: the mean strength, as before
        (PAIR, _p("B", 1), _p("B", 1), _p("B", 1), True),
        (PAIR, _p("tie", 0), _p("tie", 0), _p("tie", 0), True),
        (PAIR, _p("A", 2), _p("B", 1), _p("tie", 0), False),  # the preferred response differs: a tie
        (PAIR, _p("A", 2), _p("tie", 0), _p("tie", 0), False),
        (PAIR_NO_TIE, _p("A", 2), _p("B", 1), None, False),  # no tie allowed: abstain, whatever the strengths
        (PAIR_NO_TIE, _p("B", 1), _p("A", 2), None, False),
        (PAIR_NO_TIE, _p("A", 1), _p("A", 2), _p("A", 2), True),
    ],
)
def test_reconcile_pairwise(schema, a, b, expected, consistent) -> None:
    payload, confidence, same = reconcile(schema, (a, 0.9), (b, 0.5))
    assert payload == expected and same is consistent
    assert confidence == pytest.approx(0.7 * (1.0 if consistent else 0.3))


def test_reconcile_rankings_abstain_only_where_ties_are_not_allowed() -> None:
    ranked = JudgmentSchema.model_validate({"ranking": {"k": 3, "allow_ties": False}})
    tied = JudgmentSchema.model_validate({"ranking": {"k": 3, "allow_ties": True}})
    # An always-first judge: the first shown is ranked best in both orders.
    first, second = {"ranking": [1, 2, 3]}, {"ranking": [3, 2, 1]}
    assert reconcile(ranked, (first, None), (second, None))[0] is None
    assert reconcile(tied, (first, None), (second, None))[0] == {"ranking": [1, 1, 1]}
    # Partly disagreeing orders whose mean ranks still separate the responses keep a ranking.
    assert reconcile(ranked, (first, None), ({"ranking": [2, 3, 1]}, None))[0] == {"ranking": [1, 3, 2]}
    assert reconcile(ranked, (first, None), (first, None)) == ({"ranking": [1, 2, 3]}, 0.7, True)
