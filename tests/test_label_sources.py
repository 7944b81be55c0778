"""Imported labels are a source of their own, not human work: they leave items in the human queue
(overlap), spend none of the human budget, do not calibrate the router unless asked, and are
shown, exported and trained on as "imported"."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.test import Client
from django.urls import reverse

from annotation import queue
from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership, Project
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row

PW = {"pairwise": {"choice": "A", "strength": 1}}


def _labeled(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [pair_row(i, label="A" if i % 2 else "B") for i in range(start, start + n)]


def test_imported_labels_leave_every_item_in_the_human_queue(make_project, make_user, curator) -> None:
    project = make_project("hh", curator=curator, overlap=1)
    import_items(project=project, fileobj=jsonl(_labeled(10)))
    assert Judgment.objects.filter(item__project=project, labeler__kind="imported").count() == 10
    assert {(i.status, i.human_count) for i in Item.objects.filter(project=project)} == {("open", 0)}
    alice = make_user("alice")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    served = []
    while (a := queue.next_assignment(project=project, user=alice)) is not None:
        served.append(a.item.external_id)
        queue.submit(assignment_id=a.id, user=alice, payload=PW)
    assert len(served) == 10
    assert {(i.status, i.human_count) for i in Item.objects.filter(project=project)} == {("done", 1)}


def test_labels_imported_onto_existing_items_do_not_fill_the_overlap(make_project, curator) -> None:
    project = make_project("again", curator=curator, overlap=1)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(3)]))
    import_items(project=project, fileobj=jsonl(_labeled(3)))  # the same ids, now with labels
    assert Judgment.objects.filter(item__project=project).count() == 3
    assert {(i.status, i.human_count) for i in Item.objects.filter(project=project)} == {("open", 0)}


def test_the_migration_reopens_items_done_only_by_imported_labels(make_project, make_user, curator) -> None:
    project = make_project("old", curator=curator, overlap=1)
    import_items(project=project, fileobj=jsonl(_labeled(3)))
    alice = make_user("alice")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    a = queue.next_assignment(project=project, user=alice)
    queue.submit(assignment_id=a.id, user=alice, payload=PW)
    # As the counts stood before: every imported label counted as a human judgment.
    Item.objects.filter(project=project).exclude(id=a.item_id).update(human_count=1, status="done")
    Item.objects.filter(id=a.item_id).update(human_count=2)
    migration = importlib.import_module("annotation.migrations.0016_recount_human_count_without_imported")
    for _ in range(2):  # re-runnable
        migration.recount(apps, None)
    got = {i.id: (i.status, i.human_count) for i in Item.objects.filter(project=project)}
    assert got.pop(a.item_id) == ("done", 1)
    assert set(got.values()) == {("open", 0)}


@pytest.fixture
def mixed(make_project, make_user, curator) -> Project:
    """20 items with an imported label and an AI label each (the AI disagrees on every third);
    an annotator judged r0 and r1."""
    project = make_project("mixed", curator=curator, overlap=1, human_budget=0.5, routing_policy="learned")
    import_items(project=project, fileobj=jsonl(_labeled(20)))
    ai = Labeler.objects.create(project=project, kind="llm", name="judge")
    for it in Item.objects.filter(project=project):
        imported = it.judgments.get().payload["pairwise"]["choice"]
        flipped = {"A": "B", "B": "A"}[imported]
        choice = flipped if int(it.external_id[1:]) % 3 == 0 else imported
        Judgment.objects.create(
            item=it,
            labeler=ai,
            payload={"pairwise": {"choice": choice, "strength": 1}},
            schema_version=1,
            confidence=0.7,
        )
    alice = make_user("alice")
    membership_set(project=project, user=alice, role=Membership.Role.ANNOTATOR)
    person = queue.human_labeler(alice)
    for ext in ("r0", "r1"):
        Judgment.objects.create(
            item=Item.objects.get(project=project, external_id=ext), labeler=person, payload=PW, schema_version=1
        )
    return project


def test_imported_labels_spend_no_budget_and_calibrate_the_router_only_when_asked(mixed, curator) -> None:
    from models_srv.models import RouterVersion
    from models_srv.routing import calibration_targets, route_project

    assert set(calibration_targets(mixed)) == set(
        Item.objects.filter(external_id__in=["r0", "r1"]).values_list("id", flat=True)
    )
    assert len(calibration_targets(mixed, calibrate_on_imported=True)) == 20

    counts = route_project(project=mixed, calibration_fraction=0.0)
    assert counts.get("human", 0) + counts.get("both", 0) == 10  # half of 20: imported labels spend none
    assert RouterVersion.objects.get().metrics["calibration_items"] == 2
    route_project(project=mixed, calibration_fraction=0.0, calibrate_on_imported=True)
    assert RouterVersion.objects.order_by("-version").first().metrics["calibration_items"] == 20

    c = Client()
    c.force_login(curator)
    page = c.get(reverse("models_srv:routing", args=[mixed.slug]))
    assert page.context["used"] == 2  # items with annotators' labels, not the 20 imported
    assert "Imported labels are a source of their own" in page.content.decode()
    detail = c.get(reverse("annotation:project", args=[mixed.slug])).content.decode()
    assert 'kept as the source "imported": they do not count toward overlap or the human budget' in detail.replace(
        "&quot;", '"'
    )


def test_exports_filter_by_source(mixed, tmp_path: Path) -> None:
    from curation.services import export_copy_to, export_create, export_run

    def pairs(label_source: str) -> dict[str, str]:
        snapshot = export_create(
            project=mixed, user=None, filters={"label_source": label_source}, formats=["pairs"], enqueue=False
        )
        snapshot = export_run(snapshot_id=snapshot.id)
        out = tmp_path / str(snapshot.code)
        export_copy_to(snapshot=snapshot, out=out)
        paths = [out / "pairs" / "train.jsonl", out / "pairs" / "test.jsonl"]  # test: items the app holds out
        rows = [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]
        return {r["item_id"]: r["label_source"] for r in rows}

    assert pairs("human") == {"r0": "human", "r1": "human"}
    imported = pairs("imported")
    assert len(imported) == 20 and set(imported.values()) == {"imported"}
    assert set(pairs("ai").values()) == {"ai"}
    consensus = pairs("consensus")
    assert (consensus["r0"], consensus["r5"]) == ("human", "imported")
    assert pairs("all")["r0"] == "human+imported+ai"


def test_the_quality_dashboard_shows_imported_labels_as_their_own_source(mixed, curator) -> None:
    from curation import quality

    rep = quality.report(mixed, bootstrap=10)
    ov = rep["overview"]
    assert (ov["human_judgments"], ov["imported_judgments"], ov["ai_judgments"]) == (2, 20, 20)
    assert (ov["judged_by_humans"], ov["judged_by_imported"]) == (2, 20)
    sources = {a["annotator"]: a["source"] for a in rep["annotators"]}
    assert sources == {"alice": "human", "imported": "imported"}
    vs = {(r["labeler"], r["reference"]): r for r in rep["human_vs_ai"]}
    assert set(vs) == {("judge", "human"), ("imported", "human"), ("judge", "imported")}
    assert vs[("judge", "imported")]["items"] == 20
    assert vs[("judge", "imported")]["agreement"] == pytest.approx(13 / 20, abs=1e-3)  # r0, r3, ... r18 flipped
    assert [b["labeler"] for b in rep["biases"]][:2] == ["annotators", "imported"]
    assert set(rep["leaderboard"]) == {"human", "imported", "ai"}
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:quality", args=[mixed.slug]) + "?fresh=1").content.decode()
    assert "imported labels on 20 items" in page and "imported labels' consensus" in page


def test_reward_model_snapshots_take_the_sources_asked_for(mixed) -> None:
    from models_srv.data import snapshot_create

    counts = {
        s: snapshot_create(project=mixed, label_source=s).counts["judgments"]
        for s in ("human", "imported", "people", "ai", "both", "all")
    }
    assert counts == {"human": 2, "imported": 20, "people": 22, "ai": 20, "both": 22, "all": 42}
