"""A judge audit before an AI labeler is trusted: probes from the project's own items (the real
response against a content-free one, the pair swapped, a truncated copy), the judge's false-accept
rate, self-consistency and position bias, stored per config and shown on the labeler's page; a
project that requires it routes and forms its AI consensus with audited labelers only. LLM
judges answer from the fake OpenAI-compatible server (tests/fake_openai.py), through a real Celery
worker too."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import Item, Judgment, Labeler
from models_srv.judge_audit import CONTENT_FREE, audit_execute, audit_gate, build_probes, standings
from models_srv.labeling import ai_consensus, run_start
from models_srv.models import AILabelerAudit
from models_srv.routing import item_features
from models_srv.services import audit_start
from tests.fake_openai import FOOLED_BY, FakeOpenAI
from tests.test_ai_order_disagreement import llm_labeler, varied_project

ITEMS = 10


@pytest.fixture
def audit_items(settings):
    settings.AI_AUDIT_ITEMS = ITEMS


def _audit(labeler: Labeler) -> AILabelerAudit:
    return audit_execute(audit_id=audit_start(labeler=labeler, enqueue=False).id)


def test_probes_are_built_from_the_projects_items(make_project, curator) -> None:
    project = varied_project(make_project, curator, "probes", allow_tie=True, case="longer", n=3)
    items = list(Item.objects.filter(project=project).order_by("id"))
    probes = build_probes(items)
    assert [p.kind for p in probes] == ["content_free", "swap", "truncated"] * 3
    for k, item in enumerate(items):
        free, swap, cut = probes[3 * k : 3 * k + 3]
        real = max(item.response_texts, key=len)
        assert free.texts == (real, CONTENT_FREE[k])
        assert swap.texts == tuple(item.response_texts)
        assert real.startswith(cut.texts[1]) and len(cut.texts[1].split()) == int(len(real.split()) * 0.3)


def test_a_fooled_judge_fails_with_its_false_accept_rate(make_project, curator, audit_items) -> None:
    project = varied_project(make_project, curator, "fooled", allow_tie=False, case="fooled", n=ITEMS)
    with FakeOpenAI(delay=0) as server:
        audit = _audit(llm_labeler(project, server.url))
    fooled = sum(CONTENT_FREE[k % len(CONTENT_FREE)] in FOOLED_BY for k in range(ITEMS))
    assert 0 < fooled < ITEMS
    m = audit.metrics
    assert (audit.status, audit.passed) == ("succeeded", False)
    assert m["false_accept"] == {"rate": fooled / ITEMS, "hits": 2 * fooled, "n": 2 * ITEMS}  # both orders
    assert m["truncated_accept"]["rate"] == 0.0 and m["self_consistency"]["rate"] == 1.0
    assert m["failed"]["rate"] == 0.0
    assert [r.split(":")[0] for r in m["reasons"]] == ["content-free answers preferred or tied"]
    assert audit.prompt_tokens == 100 * 2 * 3 * ITEMS  # 3 probes per item, 2 orders, 100 tokens an answer
    fooled_records = [r for r in audit.records if r["kind"] == "content_free" and not r["ok"]]
    assert {r["texts"][1] for r in fooled_records} <= FOOLED_BY and len(fooled_records) == fooled


def test_a_judge_that_prefers_the_real_answer_passes(make_project, curator, audit_items) -> None:
    project = varied_project(make_project, curator, "sound", allow_tie=False, case="longer", n=ITEMS)
    with FakeOpenAI(delay=0) as server:
        labeler = llm_labeler(project, server.url)
        audit = _audit(labeler)
    m = audit.metrics
    assert (audit.passed, m["reasons"]) == (True, [])
    assert (m["false_accept"]["rate"], m["truncated_accept"]["rate"], m["self_consistency"]["rate"]) == (0, 0, 1)
    assert m["first_shown"]["rate"] == 0.5  # it follows the content: the first shown wins half the time
    assert audit.config_sha and audit.labeler_version == 1
    assert standings([labeler])[labeler.id].state == "passed"


def test_an_always_a_judge_fails_and_shows_its_position_bias(make_project, curator, audit_items) -> None:
    project = varied_project(make_project, curator, "alwa", allow_tie=True, case="always-a-shorter", n=ITEMS)
    with FakeOpenAI(delay=0) as server:
        audit = _audit(llm_labeler(project, server.url))
    m = audit.metrics
    assert audit.passed is False
    assert m["false_accept"]["rate"] == 0.5  # fooled whenever the content-free answer is shown first
    assert m["self_consistency"]["rate"] == 0.0
    assert (m["first_shown"]["rate"], m["first_shown"]["n"]) == (1.0, 2 * 3 * ITEMS)
    assert m["first_shown"]["p"] < 1e-15
    assert [o["rate"] for o in m["first_shown"]["by_order"]] == [1.0, 1.0]


def test_an_audit_holds_for_its_config_only_and_gates_router_and_consensus(make_project, curator, audit_items) -> None:
    project = varied_project(make_project, curator, "gate", allow_tie=False, case="longer", n=ITEMS)
    with FakeOpenAI(delay=0) as server:
        sound = llm_labeler(project, server.url, name="sound")
        fooled = llm_labeler(project, server.url, name="fooled")
        assert _audit(sound).passed is True
    item = Item.objects.filter(project=project).order_by("id").first()
    for labeler, choice in ((sound, "A"), (fooled, "B")):
        Judgment.objects.create(
            item=item, labeler=labeler, schema_version=1, payload={"pairwise": {"choice": choice, "strength": 1}}
        )
    assert ai_consensus(item, "majority")["n"] == 2  # the project does not require audits yet
    project.require_ai_audit = True
    project.save()
    item.refresh_from_db()
    gate = audit_gate(project)
    assert gate.trusted == {sound.id} and [lab.name for lab in gate.skipped] == ["fooled"]
    consensus = ai_consensus(item, "majority")
    assert (consensus["n"], consensus["pairwise"]["choice"]) == (1, "A")
    assert item_features(project, [item])[0].values["ai_count"] == 1.0

    c = Client()
    c.force_login(curator)
    routing = c.get(reverse("models_srv:routing", args=[project.slug])).content.decode()
    assert "skipped: " in routing and "fooled v1" in routing
    ai_page = c.get(reverse("models_srv:ai", args=[project.slug])).content.decode()
    assert "skipped by the router and the AI consensus" in ai_page

    # A changed config is another judge: its audit no longer holds.
    Labeler.objects.filter(id=sound.id).update(config={**sound.config, "temperature": 0.7})
    sound.refresh_from_db()
    assert standings([sound])[sound.id].state == "stale"
    assert audit_gate(project).trusted == frozenset()
    assert ai_consensus(item, "majority") is None


def test_the_labeler_page_runs_an_audit_and_shows_it(make_project, curator, annotator, audit_items) -> None:
    project = varied_project(make_project, curator, "page", allow_tie=False, case="fooled", n=ITEMS)
    with FakeOpenAI(delay=0) as server:
        labeler = llm_labeler(project, server.url)
        c = Client()
        c.force_login(curator)
        page = reverse("models_srv:labeler", args=[labeler.id])
        assert "not audited" in c.get(page).content.decode()
        started = c.post(reverse("models_srv:labeler_audit", args=[labeler.id]), headers={"HX-Request": "true"})
        assert started.status_code == 200 and "audit running" in started.content.decode()
        again = c.post(reverse("models_srv:labeler_audit", args=[labeler.id]), headers={"HX-Request": "true"})
        assert "already in progress" in again.content.decode()
        audit_execute(audit_id=AILabelerAudit.objects.get().id)
    body = c.get(page).content.decode()
    assert "audit failed" in body and 'data-testid="false-accept">0.5<' in body
    assert "content-free answers preferred or tied: 50%" in body
    outsider = Client()
    outsider.force_login(annotator)
    assert outsider.get(page).status_code == 404
    assert outsider.post(reverse("models_srv:labeler_audit", args=[labeler.id])).status_code == 404
    assert AILabelerAudit.objects.count() == 1


def test_the_audit_api(make_project, curator, audit_items) -> None:
    from tests.test_api import token_for

    project = varied_project(make_project, curator, "audit-api", allow_tie=False, case="longer", n=ITEMS)
    api = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    with FakeOpenAI(delay=0) as server:
        labeler = llm_labeler(project, server.url)
        started = api.post(f"/api/v1/ai-labelers/{labeler.id}/audits")
        assert started.status_code == 202 and started.json()["status"] == "queued"
        assert api.post(f"/api/v1/ai-labelers/{labeler.id}/audits").status_code == 409
        audit_execute(audit_id=AILabelerAudit.objects.get(uuid=started.json()["id"]).id)
    (listed,) = api.get(f"/api/v1/ai-labelers/{labeler.id}/audits").json()
    assert (listed["status"], listed["passed"], listed["items"]) == ("succeeded", True, ITEMS)
    assert listed["metrics"]["false_accept"]["rate"] == 0.0
    (shown,) = api.get(f"/api/v1/projects/{project.slug}/ai-labelers").json()
    assert shown["audit"] == "passed"


class LengthScorer:
    """A stand-in reward-model judge: scores each response alone (by its length)."""

    peak = 1

    def __init__(self, labeler: Labeler) -> None:
        pass

    def close(self) -> None:
        pass

    def label_many(self, items: list[Item], schema) -> list:
        from models_srv.judges import Label, payload_from_rewards

        out = []
        for it in items:
            rewards = [float(len(r["text"])) for r in it.responses]
            payload, confidence = payload_from_rewards(schema, rewards, [0.0, 0.0], 10.0, 0.0)
            out.append(Label(it.id, payload=payload, confidence=confidence, raw={"rewards": rewards}))
        return out


def test_scoring_judges_take_the_same_probes(make_project, curator, audit_items, monkeypatch) -> None:
    project = varied_project(make_project, curator, "scorer", allow_tie=False, case="none", n=ITEMS)
    labeler = Labeler.objects.create(project=project, kind="reward_model", name="rm", config={"version": "current"})
    monkeypatch.setattr("models_srv.judge_audit.make_judge", LengthScorer)
    audit = _audit(labeler)
    assert audit.passed is True and audit.metrics["self_consistency"]["rate"] == 1.0
    assert audit.metrics["first_shown"]["rate"] == 0.5


def _wait(row, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row.refresh_from_db()
        if row.status in {"succeeded", "failed", "cancelled"}:
            return row
        time.sleep(0.3)
    raise AssertionError(f"still {row.status} after {timeout} s")


@pytest.mark.worker
def test_abstentions_and_an_audit_through_a_real_worker(celery_worker_process, make_project, curator) -> None:
    project = varied_project(make_project, curator, "worker-judge", allow_tie=False, case="always-a-shorter", n=8)
    with FakeOpenAI(delay=0) as server:
        labeler = llm_labeler(project, server.url)
        run = _wait(run_start(project=project, labeler=labeler))  # queued on commit (autocommit here)
        audit = _wait(audit_start(labeler=labeler))
    assert (run.status, run.done, run.abstained, run.failed) == ("succeeded", 0, 8, 0), run.error
    assert not Judgment.objects.filter(labeler=labeler).exists()
    assert (audit.status, audit.passed) == ("succeeded", False), audit.error
    assert audit.metrics["first_shown"]["rate"] == 1.0 and audit.metrics["self_consistency"]["rate"] == 0.0


def test_the_routing_page_sets_the_requirement(make_project, curator) -> None:
    project = varied_project(make_project, curator, "route-req", allow_tie=False, case="longer", n=2)
    c = Client()
    c.force_login(curator)
    url = reverse("models_srv:routing_run", args=[project.slug])
    form = {"routing_policy": "learned", "budget_percent": "50", "calibration_percent": "10"}
    c.post(url, {**form, "require_ai_audit": "on"})
    project.refresh_from_db()
    assert project.require_ai_audit is True
    c.post(url)  # a bare re-route keeps the settings
    project.refresh_from_db()
    assert project.require_ai_audit is True
    c.post(url, form)  # the form with the box unticked clears it
    project.refresh_from_db()
    assert project.require_ai_audit is False


def test_a_silent_audit_is_requeued_then_given_up(make_project, curator) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from models_srv.judge_audit import MAX_ATTEMPTS, recover_stale_audits

    project = varied_project(make_project, curator, "stale-audit", allow_tie=False, case="longer", n=2)
    labeler = llm_labeler(project, "http://127.0.0.1:9/v1")
    audit = audit_start(labeler=labeler, enqueue=False)
    old = timezone.now() - timedelta(hours=1)
    AILabelerAudit.objects.filter(id=audit.id).update(status="running", attempts=1, heartbeat_at=old)
    assert recover_stale_audits() == {"requeued": 1, "failed": 0}
    audit.refresh_from_db()
    assert audit.status == "queued"
    AILabelerAudit.objects.filter(id=audit.id).update(status="running", attempts=MAX_ATTEMPTS, heartbeat_at=old)
    assert recover_stale_audits() == {"requeued": 0, "failed": 1}
    audit.refresh_from_db()
    assert audit.status == "failed" and "gave up" in audit.error and audit.passed is None
