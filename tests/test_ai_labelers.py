"""AI labelers: the LLM judge against a fake OpenAI-compatible server (a real HTTP server on
127.0.0.1, through the real client code), and the AI consensus."""

from __future__ import annotations

import json

import pytest

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler
from models_srv.judges import public_config
from models_srv.labeling import LabelerError, ai_consensus, labeler_create, run_execute, run_start
from models_srv.models import AILabelFailure, AILabelRun
from tests.conftest import jsonl
from tests.fake_openai import FakeOpenAI

CASES = ["good", "malformed-once", "rate-limited", "flaky", "biased", "never"]


@pytest.fixture
def judged_project(make_project, curator):
    project = make_project(
        "llm", curator=curator, schema={"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}
    )
    rows = []
    for i, case in enumerate(CASES):
        good_first = i % 2 == 0
        rows.append(
            {
                "id": case,
                "prompt": f"Question {i}? case:{case}",
                "response_a": "GOOD answer" if good_first else "BAD answer",
                "response_b": "BAD answer" if good_first else "GOOD answer",
            }
        )
    import_items(project=project, fileobj=jsonl(rows))
    return project


def _labeler(project, url: str, **extra) -> Labeler:
    config = {
        "base_url": url,
        "model": "judge-1",
        "concurrency": 2,
        "backoff_s": 0.01,
        "max_retries": 3,
        "parse_retries": 1,
        "prompt_cost_per_1k": 0.5,
        "completion_cost_per_1k": 1.5,
        **extra,
    }
    return labeler_create(project=project, kind="llm", name="gpt-judge", config=config, api_key="sk-secret-123")


def test_llm_judge_parses_retries_reconciles_and_records(judged_project) -> None:
    with FakeOpenAI() as server:
        labeler = _labeler(judged_project, server.url)
        run = run_execute(run_id=run_start(project=judged_project, labeler=labeler, enqueue=False).id)
    assert run.status == "succeeded"
    assert (run.done, run.failed, run.skipped) == (5, 1, 0)
    assert server.auth == {"Bearer sk-secret-123"}
    assert server.max_in_flight <= 2 and run.peak_concurrency <= 2

    by_case = {j.item.external_id: j for j in Judgment.objects.select_related("item").filter(labeler=labeler)}
    for case in ["good", "malformed-once", "rate-limited", "flaky"]:
        j = by_case[case]
        good = 0 if "GOOD" in j.item.responses[0]["text"] else 1
        assert j.payload["pairwise"] == {"choice": "AB"[good], "strength": 2}, case
        assert j.confidence == pytest.approx(0.9)
        assert json.loads(j.raw_output)["order_consistent"] is True
    biased = by_case["biased"]
    assert biased.payload["pairwise"] == {"choice": "tie", "strength": 0}  # A then A after swapping = no signal
    assert biased.confidence == pytest.approx(0.8 * 0.3)
    assert json.loads(biased.raw_output)["order_consistent"] is False

    failure = AILabelFailure.objects.get()
    assert failure.item.external_id == "never"
    assert "did not parse" in failure.reason
    assert "first one is better" in failure.raw_output
    # 2 orders for 5 items + 1 re-ask (malformed-once) + 2 tries of the one that never parses = 13 answers
    assert server.calls["rate-limited"] == 3 and server.calls["flaky"] == 4
    answered = 13
    assert (run.prompt_tokens, run.completion_tokens) == (100 * answered, 20 * answered)
    assert run.cost == pytest.approx((100 * answered * 0.5 + 20 * answered * 1.5) / 1000)


def test_rerunning_labels_nothing_twice(judged_project) -> None:
    with FakeOpenAI() as server:
        labeler = _labeler(judged_project, server.url)
        run_execute(run_id=run_start(project=judged_project, labeler=labeler, enqueue=False).id)
        again = run_start(project=judged_project, labeler=labeler, enqueue=False)
        assert [Item.objects.get(id=i).external_id for i in again.item_ids] == ["never"]
        again = run_execute(run_id=again.id)
        everything = run_execute(
            run_id=run_start(
                project=judged_project,
                labeler=labeler,
                item_ids=list(Item.objects.values_list("id", flat=True)),
                enqueue=False,
            ).id
        )
    assert (again.done, again.failed) == (0, 1)
    assert everything.total == 1  # only the unlabeled item is taken up again
    assert Judgment.objects.filter(labeler=labeler).count() == 5


def test_rerunning_a_labeler_that_labeled_everything_is_refused_with_a_reason(judged_project, curator, client):
    from django.urls import reverse

    Item.objects.filter(external_id="never").delete()  # the one item the fake server never answers well
    with FakeOpenAI() as server:
        labeler = _labeler(judged_project, server.url)
        done = run_execute(run_id=run_start(project=judged_project, labeler=labeler, enqueue=False).id)
        assert (done.done, done.failed) == (5, 0)
        runs = AILabelRun.objects.count()
        with pytest.raises(LabelerError, match="nothing to label: gpt-judge has labeled all 5 items already"):
            run_start(project=judged_project, labeler=labeler, enqueue=False)
        client.force_login(curator)
        page = client.post(reverse("models_srv:labeler_run", args=[labeler.id]), headers={"HX-Request": "true"})
    assert "has labeled all 5 items already" in page.content.decode()
    assert "of 0 items" not in page.content.decode()
    assert AILabelRun.objects.count() == runs  # no empty run recorded


def test_the_api_key_is_stored_encrypted_and_never_shown(judged_project) -> None:
    labeler = _labeler(judged_project, "http://127.0.0.1:9/v1")
    assert "sk-secret-123" not in json.dumps(labeler.config)
    assert public_config(labeler.config)["api_key_encrypted"] == "(set)"
    with pytest.raises(LabelerError, match="base_url"):
        labeler_create(project=judged_project, kind="llm", name="x", config={"model": "m"})


def test_an_unreachable_endpoint_fails_items_with_a_reason(judged_project) -> None:
    labeler = _labeler(judged_project, "http://127.0.0.1:9/v1", max_retries=1, timeout_s=2)
    run = run_execute(run_id=run_start(project=judged_project, labeler=labeler, enqueue=False).id)
    assert run.failed == len(CASES) and run.done == 0
    assert "kept failing" in AILabelFailure.objects.first().reason


def test_ai_consensus_majority_and_confidence_weighted(judged_project) -> None:
    item = Item.objects.get(external_id="good")
    votes = [("A", 0.9), ("B", 0.55), ("B", 0.6)]
    for n, (choice, conf) in enumerate(votes):
        lab = Labeler.objects.create(project=judged_project, kind="llm", name=f"j{n}", config={})
        Judgment.objects.create(
            item=item,
            labeler=lab,
            payload={"pairwise": {"choice": choice, "strength": 1}},
            schema_version=1,
            confidence=conf,
        )
    assert ai_consensus(item, "majority")["pairwise"]["choice"] == "B"
    weighted = ai_consensus(item, "weighted")
    assert weighted["pairwise"]["choice"] == "B" and weighted["agreement"] == pytest.approx(1.15 / 2.05, abs=1e-3)
    assert weighted["n"] == 3


def test_ai_labeler_pages_and_access(judged_project, curator, annotator, outsider) -> None:
    from django.test import Client
    from django.urls import reverse

    c = Client()
    c.force_login(curator)
    with FakeOpenAI() as server:
        added = c.post(
            reverse("models_srv:labeler_add", args=[judged_project.slug]),
            {
                "name": "judge",
                "kind": "llm",
                "config": f"base_url: {server.url}\nmodel: m\nbackoff_s: 0.01\n",
                "api_key": "sk-page-key",
            },
        )
        assert added.status_code == 302, added.content.decode()[:500]
        labeler = Labeler.objects.get(name="judge")
        page = c.get(reverse("models_srv:ai", args=[judged_project.slug])).content.decode()
        assert "sk-page-key" not in page and "(set)" in page
        bad = c.post(
            reverse("models_srv:labeler_add", args=[judged_project.slug]),
            {"name": "x", "kind": "llm", "config": "model: m"},
        )
        assert "base_url" in bad.content.decode()
        c.post(reverse("models_srv:labeler_run", args=[labeler.id]), HTTP_HX_REQUEST="true")
        from models_srv.models import AILabelRun

        run = AILabelRun.objects.get()
        assert run.status == "queued" and run.total == len(CASES)
        run = run_execute(run_id=run.id)
    detail = c.get(reverse("models_srv:ai_run", args=[run.uuid])).content.decode()
    assert "first one is better" in detail  # the failure's raw answer is listed
    for user in (annotator, outsider):
        other = Client()
        other.force_login(user)
        assert other.get(reverse("models_srv:ai", args=[judged_project.slug])).status_code == 404
        assert other.post(reverse("models_srv:labeler_run", args=[labeler.id])).status_code == 404
        assert other.get(reverse("models_srv:ai_run", args=[run.uuid])).status_code == 404


def test_ai_labeler_api(judged_project, curator, outsider) -> None:
    from django.test import Client

    from tests.test_api import token_for

    api = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    with FakeOpenAI() as server:
        body = {
            "name": "j",
            "kind": "llm",
            "config": {"base_url": server.url, "model": "m", "backoff_s": 0.01},
            "api_key": "sk-api",
        }
        created = api.post(f"/api/v1/projects/{judged_project.slug}/ai-labelers", body, content_type="application/json")
        assert created.status_code == 201, created.content
        assert created.json()["config"]["api_key_encrypted"] == "(set)"
        started = api.post(f"/api/v1/ai-labelers/{created.json()['id']}/runs")
        assert started.status_code == 202
        from models_srv.models import AILabelRun

        run_execute(run_id=AILabelRun.objects.get(uuid=started.json()["id"]).id)
    run = api.get(f"/api/v1/ai-runs/{started.json()['id']}").json()
    assert (run["status"], run["done"], run["failed"]) == ("succeeded", 5, 1)
    assert run["failures"][0]["item"] == "never"
    bad = api.post(
        f"/api/v1/projects/{judged_project.slug}/ai-labelers",
        {**body, "kind": "oracle"},
        content_type="application/json",
    )
    assert bad.status_code == 422
    eve = Client(headers={"Authorization": f"Bearer {token_for(outsider)}"})
    assert eve.get(f"/api/v1/ai-runs/{started.json()['id']}").status_code == 404
    assert eve.post(f"/api/v1/ai-labelers/{created.json()['id']}/runs").status_code == 404
