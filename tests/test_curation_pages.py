"""Curator dashboards: the quality report against hand-computed figures, CSV downloads, the review
queue with an action and its undo (also in a real browser), the export pages, and access."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership
from annotation.services import membership_set
from curation import candidates, quality
from curation.models import CurationAction
from tests.conftest import jsonl, login, pair_row

# Three annotators on four items (stored order; responses from two named models), and
# one AI labeler. Item q3 is a 2-1 split, q4 has only one human vote.
VOTES = {
    "q1": {"ann1": ("A", 2), "ann2": ("A", 1), "ann3": ("A", 1)},
    "q2": {"ann1": ("B", 1), "ann2": ("B", 1), "ann3": ("B", 2)},
    "q3": {"ann1": ("A", 1), "ann2": ("B", 1), "ann3": ("A", 1)},
    "q4": {"ann1": ("tie", 0)},
}
AI = {"q1": "A", "q2": "A", "q3": "A", "q4": "B"}


@pytest.fixture
def judged(make_project, make_user, curator):
    project = make_project("qual", curator=curator, overlap=3)
    rows = [
        {
            "id": q,
            "prompt": f"prompt {q}",
            "response_a": "short",
            "response_b": "a much longer response",
            "model_a": "alpha",
            "model_b": "beta",
            "metadata": {"category": "math" if q in ("q1", "q2") else "chat"},
        }
        for q in VOTES
    ]
    import_items(project=project, fileobj=jsonl(rows))
    items = {i.external_id: i for i in Item.objects.filter(project=project)}
    people = {n: Labeler.objects.create(kind="human", user=make_user(n), name=n) for n in ("ann1", "ann2", "ann3")}
    ai = Labeler.objects.create(project=project, kind="llm", name="judge", config={})
    for q, votes in VOTES.items():
        for name, (choice, strength) in votes.items():
            Judgment.objects.create(
                item=items[q],
                labeler=people[name],
                payload={"pairwise": {"choice": choice, "strength": strength}},
                schema_version=1,
                response_order=[0, 1] if name != "ann2" else [1, 0],
            )
        Judgment.objects.create(
            item=items[q],
            labeler=ai,
            payload={"pairwise": {"choice": AI[q], "strength": 1}},
            schema_version=1,
            raw_output='{"order_consistent": false}' if q == "q2" else '{"order_consistent": true}',
        )
    return project


def test_quality_figures_match_hand_computation_and_the_reference_package(judged) -> None:
    krippendorff = pytest.importorskip("krippendorff")
    import numpy as np

    rep = quality.report(judged, bootstrap=50)
    ov = rep["overview"]
    assert (ov["items"], ov["human_judgments"], ov["ai_judgments"]) == (4, 10, 4)
    assert ov["low_agreement_items"] == 1 and ov["tied_items"] == 0  # q3 (2 of 3)
    ag = rep["agreement"]
    assert ag["items_with_overlap"] == 3
    # Rater pairs: q1 3/3 agree, q2 3/3, q3 1/3 -> 7/9.
    assert ag["percent_agreement"] == pytest.approx(7 / 9, abs=1e-3)
    signed = np.array([[-2, 1, -1], [-1, 1, 1], [-1, 2, -1]], dtype=float)  # coders x units (q1..q3)
    expected = krippendorff.alpha(reliability_data=signed, level_of_measurement="ordinal")
    assert ag["alpha_strength_ordinal"] == pytest.approx(expected, abs=1e-3)
    # Leave-one-out: ann2 disagrees with the others on q3 only.
    by_name = {a["annotator"]: a for a in rep["annotators"]}
    assert by_name["ann2"]["agreement_with_consensus"] == pytest.approx(2 / 3, abs=1e-3)
    assert by_name["ann1"]["agreement_with_consensus"] == 1.0
    # AI vs the human majority: q1 A=A, q2 A!=B, q3 A=A (q4 has a single tie vote: tie != B).
    (judge,) = rep["human_vs_ai"]
    assert judge["items"] == 4 and judge["agreement"] == 0.5
    assert judge["by_category"]["math"] == {"n": 2, "agreement": 0.5}
    humans = rep["biases"][0]
    assert humans["labeler"] == "annotators" and humans["distribution"] == {"A": 5, "B": 4, "tie": 1}
    # The longer response is B: it wins 4 of the 9 non-tie human decisions.
    assert humans["longer_wins"] == pytest.approx(4 / 9, abs=1e-3)
    # Shown first: ann2 saw B first. Wins of the first-shown: ann1 A,B(no),A / ann2 A(no),B(yes),B(yes) / ann3 ...
    assert 0 <= humans["first_shown_wins"] <= 1
    board = {r["model"]: r for r in rep["leaderboard"]["human"]}
    assert board["alpha"]["wins"] == 5 and board["alpha"]["losses"] == 4 and board["alpha"]["ties"] == 1
    assert board["alpha"]["ci_low"] <= board["alpha"]["rating"] <= board["alpha"]["ci_high"]
    assert set(rep["drift"]) == {"annotators", "ai_labelers", "categories"}


def test_noisy_candidates_and_a_curation_action_with_undo(judged, curator) -> None:
    found = {c["external_id"]: c for c in candidates.noisy_candidates(judged)}
    assert "low_agreement" in found["q3"]["reasons"]
    assert "ai_order_flip" in found["q2"]["reasons"]
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:review", args=[judged.slug])).content.decode()
    assert "low_agreement" in page and "q3" in page
    item = Item.objects.get(project=judged, external_id="q3")
    url = reverse("curation:review_act", args=[judged.slug, item.id])
    response = c.post(
        url, {"action": "drop", "reason": "ambiguous prompt", "evidence": '{"reasons": ["low_agreement"]}'}
    )
    assert response.status_code == 302
    action = CurationAction.objects.get()
    assert (action.action, action.reason, action.actor, action.evidence) == (
        "drop",
        "ambiguous prompt",
        curator,
        {"reasons": ["low_agreement"]},
    )
    item.refresh_from_db()
    assert item.status == "dropped"
    assert "q3" not in {c["external_id"] for c in candidates.noisy_candidates(judged)}  # curated: off the queue
    c.post(reverse("curation:review_undo", args=[judged.slug, action.id]), HTTP_HX_REQUEST="true")
    action.refresh_from_db()
    item.refresh_from_db()
    assert action.undone_at is not None and action.undone_by == curator and item.status != "dropped"
    bad = c.post(url, {"action": "explode"})
    assert bad.status_code == 400


def test_flagged_items_reach_the_review_queue_with_their_reason(judged, annotator) -> None:
    from annotation import queue

    membership_set(project=judged, user=annotator, role=Membership.Role.ANNOTATOR)
    assignment = queue.next_assignment(project=judged, user=annotator)
    queue.skip(assignment_id=assignment.id, user=annotator, reason="responses are cut off", flag=True)
    found = {c["external_id"]: c for c in candidates.noisy_candidates(judged)}
    entry = found[assignment.item.external_id]
    assert "flagged" in entry["reasons"]
    assert "responses are cut off" in entry["evidence_json"]


def test_figures_read_only_judged_or_flagged_items_and_still_count_them_all(judged, annotator) -> None:
    """`load` reads whole only the items a figure can use; the overview still counts every item, and
    an item flagged before anyone judged it still reaches the review queue."""
    from annotation import queue

    import_items(project=judged, fileobj=jsonl([pair_row(i) for i in (901, 902)]))
    new = {i.external_id: i for i in Item.objects.filter(project=judged, external_id__in=["r901", "r902"])}
    membership_set(project=judged, user=annotator, role=Membership.Role.ANNOTATOR)
    Item.objects.filter(project=judged).exclude(id=new["r901"].id).update(priority=-1)  # hand out 901 first
    assignment = queue.next_assignment(project=judged, user=annotator)
    assert assignment.item_id == new["r901"].id
    queue.skip(assignment_id=assignment.id, user=annotator, reason="the prompt is empty", flag=True)

    data = quality.load(judged)
    assert set(data.items) == {i.id for i in Item.objects.filter(project=judged).exclude(id=new["r902"].id)}
    assert data.item_count == len(VOTES) + 2
    assert quality.report(judged, bootstrap=10)["overview"]["items"] == len(VOTES) + 2
    found = {c["external_id"]: c for c in candidates.noisy_candidates(judged)}
    assert found["r901"]["reasons"] == ["flagged"] and "r902" not in found


def test_csv_cells_that_would_run_as_formulas_are_defused(judged, curator) -> None:
    from curation.views import _csv_cell

    assert [_csv_cell(v) for v in ("=HYPERLINK(1)", "+1", "-x", "@a", "alpha", 0.5, -1)] == [
        "'=HYPERLINK(1)",
        "'+1",
        "'-x",
        "'@a",
        "alpha",
        0.5,
        -1,
    ]
    Item.objects.filter(project=judged).update(
        responses=[{"text": "short", "model": "=cmd()"}, {"text": "a much longer response", "model": "beta"}]
    )
    c = Client()
    c.force_login(curator)
    body = c.get(reverse("curation:quality_csv", args=[judged.slug]), {"table": "leaderboard_human"}).content
    assert b"'=cmd()" in body and b"\n=cmd()" not in body and b",=cmd()" not in body


def test_evidence_with_a_nul_character_is_refused_not_a_crash(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    item = Item.objects.get(project=judged, external_id="q1")
    url = reverse("curation:review_act", args=[judged.slug, item.id])
    assert c.post(url, {"action": "accept", "evidence": '{"a": "\\u0000"}'}).status_code == 400
    assert not CurationAction.objects.exists()


def test_the_dashboard_keeps_its_figures_a_minute_and_recomputes_on_request(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    url = reverse("curation:quality", args=[judged.slug])
    first = c.get(url, {"fresh": "1"}).content.decode()
    assert "Figures as of" in first and "recompute now" in first
    Item.objects.filter(project=judged, external_id="q4").delete()  # the data change
    assert quality.cached_report(judged)["overview"]["items"] == 4  # still the minute-old figures
    assert quality.cached_report(judged, fresh=True)["overview"]["items"] == 3
    assert c.get(url).status_code == 200


def test_csv_downloads(judged, curator) -> None:
    c = Client()
    c.force_login(curator)
    url = reverse("curation:quality_csv", args=[judged.slug])
    rows = list(csv.DictReader(io.StringIO(c.get(url, {"table": "annotators"}).content.decode())))
    assert {r["annotator"] for r in rows} == {"ann1", "ann2", "ann3"}
    board = list(csv.DictReader(io.StringIO(c.get(url, {"table": "leaderboard_human"}).content.decode())))
    assert {r["model"] for r in board} == {"alpha", "beta"}
    assert c.get(url, {"table": "nope"}).status_code == 400
    page = c.get(reverse("curation:quality", args=[judged.slug])).content.decode()
    assert "Krippendorff" in page and "ann2" in page and "alpha" in page


def test_export_pages(judged, curator, django_capture_on_commit_callbacks) -> None:
    from curation.models import ExportSnapshot

    c = Client()
    c.force_login(curator)
    url = reverse("curation:exports", args=[judged.slug])
    assert c.post(url, {"label_source": "human", "license": "cc-by-4.0"}).status_code == 400  # no format
    with django_capture_on_commit_callbacks() as callbacks:
        response = c.post(url, {"formats": ["pairs", "raw"], "label_source": "human", "license": "cc-by-4.0"})
    snapshot = ExportSnapshot.objects.get()
    assert response.status_code == 302 and len(callbacks) == 1
    assert snapshot.formats == ["pairs", "raw"] and snapshot.license == "cc-by-4.0"
    detail = c.get(reverse("curation:export", args=[snapshot.code]))
    assert detail.status_code == 200
    assert c.get(reverse("curation:export_download", args=[snapshot.code])).status_code == 404  # not built yet


@pytest.mark.parametrize("who", ["annotator", "outsider"])
def test_curation_pages_are_for_the_projects_curators(judged, who, request) -> None:
    from curation.models import ExportSnapshot
    from curation.services import curation_action_apply

    user = request.getfixturevalue(who)
    if who == "annotator":
        membership_set(project=judged, user=user, role=Membership.Role.ANNOTATOR)
    item = Item.objects.filter(project=judged).first()
    action = curation_action_apply(item=item, actor=None, action="accept")
    snapshot = ExportSnapshot.objects.create(project=judged, formats=["pairs"], cutoff=action.created_at)
    c = Client()
    c.force_login(user)
    for url in (
        reverse("curation:quality", args=[judged.slug]),
        reverse("curation:quality_csv", args=[judged.slug]) + "?table=annotators",
        reverse("curation:review", args=[judged.slug]),
        reverse("curation:exports", args=[judged.slug]),
        reverse("curation:export", args=[snapshot.code]),
        reverse("curation:export_download", args=[snapshot.code]),
    ):
        assert c.get(url).status_code == 404, url
    for url in (
        reverse("curation:review_act", args=[judged.slug, item.id]),
        reverse("curation:review_undo", args=[judged.slug, action.id]),
        reverse("curation:export_reproduce", args=[snapshot.code]),
    ):
        assert c.post(url, {"action": "drop"}).status_code == 404, url
    assert CurationAction.objects.count() == 1 and ExportSnapshot.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_browser_dashboard_and_a_curation_action_with_undo(page, judged) -> None:
    login(page, "carol", "carol-pw-123")
    page.goto(f"/p/{judged.slug}/quality/")
    assert "krippendorff" in page.inner_text("[data-testid=agreement]").lower()
    assert "ann2" in page.inner_text("[data-testid=annotators]")
    page.click("text=Review noisy labels")
    row = page.locator("tr[data-item=q3]")
    row.locator("input[name=reason]").fill("two against one")
    row.locator("button[value=flip]").click()
    page.wait_for_selector("tr[data-item=q3] [data-testid=undo]")
    action = CurationAction.objects.get()
    assert (action.action, action.reason, action.actor.username) == ("flip", "two against one", "carol")
    assert action.evidence["reasons"] == ["low_agreement"]
    page.click("tr[data-item=q3] [data-testid=undo]")
    page.wait_for_selector("tr[data-item=q3] .acted[data-undone='1']")
    action.refresh_from_db()
    assert action.undone_at is not None and action.undone_by.username == "carol"
