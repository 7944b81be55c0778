"""Preference groups on the Quality page and in exports (curation/groups.py, curation/export):
a pluralistic reward model trained on two planted camps shows as two groups with the length effect
the camps were built with; on a hand-checked project the panel's agreement within and across
groups, the items where the groups disagree and the category effect are the numbers worked out
by hand; an export reads the groups pooled, one group, split per group or confidence-weighted,
and never another project's model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import Labeler, Project
from curation import quality
from curation.export import ExportError
from curation.services import export_create
from models_srv.models import DataSnapshot, RewardModelVersion
from models_srv.selectors import pluralistic_latest
from tests.conftest import jsonl
from tests.test_export import build, read_jsonl
from tests.test_pluralistic import two_camps
from tests.test_reward_training import TINY

pytestmark = pytest.mark.django_db


def camps_project(make_project: Any, curator: Any, items: int = 40) -> Project:
    """Eight annotators in two camps (ann0-3 prefer the longer response, ann4-7 the shorter),
    items in two categories, and a pluralistic reward model trained on them."""
    from models_srv import services

    project = make_project("camps", schema={"pairwise": {"strengths": ["better"]}}, curator=curator)
    rows = two_camps(items)
    for i, row in enumerate(rows):
        row["metadata"] = {"category": ("math", "chat")[i % 2]}
    import_items(project=project, fileobj=jsonl(rows))
    # groups 0: the number of groups is the model's own choice (BIC over annotators), as a user gets it.
    config = {"from_config": TINY, "mode": "pluralistic", "groups": 0, "label_source": "imported", "max_length": 32}
    version = services.training_start(project=project, config=config, enqueue=False)
    version = services.training_run(version_id=version.id)
    assert version.status == "succeeded", version.error
    return project


def test_the_panel_finds_the_planted_camps_and_their_length_effect(make_project, make_user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    curator = make_user("cura")
    project = camps_project(make_project, curator)
    panel = quality.report(project, bootstrap=0)["groups"]
    assert panel is not None and panel["k"] == 2
    camps = {frozenset(m["labeler"] for m in g["members"]): g for g in panel["groups"]}
    longs, shorts = frozenset({"ann0", "ann1", "ann2", "ann3"}), frozenset({"ann4", "ann5", "ann6", "ann7"})
    assert set(camps) == {longs, shorts}
    assert all(m["confidence"] > 0.9 for g in panel["groups"] for m in g["members"])
    # 5 % of the answers were flipped at random: the longer response wins about 95 % for one camp, 5 % for the other
    assert camps[longs]["longer_wins"]["share"] > 0.88 and camps[longs]["longer_wins"]["n"] == 4 * 40
    assert camps[shorts]["longer_wins"]["share"] < 0.12
    assert (
        camps[longs]["longer_wins"]["high"] > camps[longs]["longer_wins"]["share"] > camps[longs]["longer_wins"]["low"]
    )
    # each camp agrees with itself and not with the other
    assert panel["agreement"]["within"]["share"] > 0.8 > 0.2 > panel["agreement"]["across"]["share"]
    assert panel["agreement"]["within"]["n"] == 40 * 2 * 6 and panel["agreement"]["across"]["n"] == 40 * 16
    # every item is judged by both camps, and their majorities differ on (nearly) all of them
    assert panel["items_compared"] == 40 and panel["items_differ"] >= 38
    assert panel["items"][0]["score"] == 1.0 and panel["items"][0]["differ"]
    assert {c["category"]: c["items"] for c in panel["categories"]} == {"math": 20, "chat": 20}

    # The page shows it, its chart's CSV and the groups' CSV answer.
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:quality", args=[project.slug])).content.decode()
    assert 'data-testid="groups-panel"' in page and 'data-testid="chart-groups"' in page
    assert "ann7" in page and 'data-testid="groups-none"' not in page
    rows = list(csv.DictReader(io.StringIO(c.get(f"/p/{project.slug}/charts.csv", {"chart": "groups"}).text)))
    assert [r["group"] for r in rows] == ["1", "2", "across"]
    members = list(
        csv.DictReader(io.StringIO(c.get(f"/p/{project.slug}/quality.csv", {"table": "preference_groups"}).text))
    )
    assert sorted(r["labeler"] for r in members) == [f"ann{i}" for i in range(8)]


# ---------------------------------------------------------------------------------------------
# A hand-checked case

HAND = {  # item: (category, {annotator: choice}); response A is the longer one everywhere
    "i1": ("math", {"a": "A", "b": "A", "c": "B", "d": "B"}),
    "i2": ("math", {"a": "A", "b": "B", "c": "A", "d": "A"}),
    "i3": ("chat", {"a": "A", "c": "A"}),
}
CONFIDENCE = {"a": 0.95, "b": 0.9, "c": 0.6, "d": 0.55}


def hand_project(
    make_project: Any, curator: Any, slug: str = "hand", version: int = 1
) -> tuple[Project, RewardModelVersion]:
    """Four annotators, groups {a, b} and {c, d} as a pluralistic version records them."""
    project = make_project(slug, schema={"pairwise": {"strengths": ["better"], "allow_tie": True}}, curator=curator)
    rows = [
        {
            "id": ext,
            "prompt": f"Question {ext}",
            "response_a": "a long answer with many words in it",
            "response_b": "short",
            "metadata": {"category": cat},
            "judgments": [{"annotator": n, "pairwise": {"choice": ch, "strength": 1}} for n, ch in votes.items()],
        }
        for ext, (cat, votes) in HAND.items()
    ]
    import_items(project=project, fileobj=jsonl(rows))
    return project, plural_version(project, {"a": 1, "b": 1, "c": 2, "d": 2}, version=version)


def plural_version(project: Project, groups: dict[str, int], version: int = 1, **extra: Any) -> RewardModelVersion:
    ids = dict(Labeler.objects.filter(project=project).values_list("name", "id"))
    snapshot = DataSnapshot.objects.create(project=project, label_source="imported")
    metrics = {
        "pluralistic": {
            "k": 2,
            "k_scores": {},
            "groups": [
                {
                    "group": g,
                    "size": 0.5,
                    "length_weight": 0.0,
                    "members": [{"labeler": ids[n], "confidence": CONFIDENCE[n]} for n, k in groups.items() if k == g],
                }
                for g in (1, 2)
            ],
        }
    }
    return RewardModelVersion.objects.create(
        project=project,
        version=version,
        status="succeeded",
        config={"mode": "pluralistic"},
        snapshot=snapshot,
        metrics=metrics,
        finished_at=timezone.now(),
        **extra,
    )


def test_agreement_within_and_across_and_what_separates_the_groups_by_hand(make_project, make_user):
    project, _ = hand_project(make_project, make_user("cura"))
    panel = quality.report(project, bootstrap=0)["groups"]
    assert panel is not None
    # Pairs in the same group: i1 (a,b) agree, (c,d) agree; i2 (a,b) differ, (c,d) agree -> 3 of 4.
    # Across: i1 four pairs, none agree; i2 (a,c) (a,d) agree, (b,c) (b,d) not; i3 (a,c) agrees -> 3 of 9.
    assert panel["agreement"]["within"]["share"] == 0.75 and panel["agreement"]["within"]["n"] == 4
    assert panel["agreement"]["across"]["share"] == pytest.approx(3 / 9, abs=1e-3)
    assert panel["agreement"]["across"]["n"] == 9
    g1, g2 = panel["groups"]
    assert (g1["within"]["share"], g1["within"]["n"], g2["within"]["share"], g2["within"]["n"]) == (0.5, 2, 1.0, 2)
    # The longer response (A) wins 4 of 5 times for {a, b}, 3 of 5 for {c, d}.
    assert (g1["longer_wins"]["share"], g1["longer_wins"]["n"]) == (0.8, 5)
    assert (g2["longer_wins"]["share"], g2["longer_wins"]["n"]) == (0.6, 5)
    assert [m["labeler"] for m in g1["members"]] == ["a", "b"]  # the most confident first
    assert [m["confidence"] for m in g2["members"]] == [0.6, 0.55]
    # i1: A vs B unanimous (distance 1); i2: {a, b} split, {c, d} A (0.5, no majority for {a, b}); i3: same.
    items = [(r["external_id"], r["score"], r["differ"]) for r in panel["items"]]
    assert items == [("i1", 1.0, True), ("i2", 0.5, False), ("i3", 0.0, False)]
    assert [g["majority"] for g in panel["items"][0]["groups"]] == ["A", "B"]
    assert panel["items"][1]["groups"][0]["votes"] == {"A": 1, "B": 1}
    assert panel["categories"] == [
        {"category": "chat", "items": 1, "differ": 0, "share": 0.0},
        {"category": "math", "items": 2, "differ": 1, "share": 0.5},
    ]
    assert panel["aspects"] == []  # no rubric in this schema


def test_per_aspect_gaps_between_the_groups_by_hand(make_project, make_user):
    from tests.conftest import RUBRIC_SCHEMA

    project = make_project("rub", schema=RUBRIC_SCHEMA, curator=make_user("cura"))
    ratings = {  # item: {annotator: helpfulness of response A, of response B}
        "r1": {"a": (5, 1), "b": (4, 2), "c": (2, 4), "d": (1, 5)},
        "r2": {"a": (3, 3), "c": (3, 2)},
    }
    rows = [
        {
            "id": ext,
            "prompt": f"Question {ext}",
            "response_a": "one",
            "response_b": "two",
            "judgments": [
                {
                    "annotator": n,
                    "pairwise": {"choice": "A" if x >= y else "B", "strength": 1},
                    "rubric": [{"helpfulness": x}, {"helpfulness": y}],
                }
                for n, (x, y) in votes.items()
            ],
        }
        for ext, votes in ratings.items()
    ]
    import_items(project=project, fileobj=jsonl(rows))
    plural_version(project, {"a": 1, "b": 1, "c": 2, "d": 2})
    panel = quality.report(project, bootstrap=0)["groups"]
    assert panel is not None
    # r1: group means 4.5 / 1.5 on A and 1.5 / 4.5 on B (gaps 3 and 3); r2: 3 / 3 on A, 3 / 2 on B (0 and 1).
    # Each group's mean of its per-response means: (4.5 + 1.5 + 3 + 3) / 4 and (1.5 + 4.5 + 3 + 2) / 4.
    assert panel["aspects"] == [{"aspect": "helpfulness", "responses": 4, "mean_gap": 1.75, "means": {1: 3.0, 2: 2.75}}]
    c = Client()
    c.force_login(project.memberships.get().user)
    page = c.get(reverse("curation:quality", args=[project.slug])).content.decode()
    assert 'data-testid="groups-aspects"' in page and "1.75" in page


def test_the_latest_promoted_or_finished_pluralistic_version_is_the_one_shown(make_project, make_user):
    curator = make_user("cura")
    project, v1 = hand_project(make_project, curator)
    other, foreign = hand_project(make_project, curator, slug="other", version=1)
    v2 = plural_version(project, {"a": 2, "b": 2, "c": 1, "d": 1}, version=2)
    RewardModelVersion.objects.create(  # newer, but not pluralistic
        project=project, version=3, status="succeeded", config={"mode": "top"}, snapshot=v1.snapshot, metrics={}
    )
    RewardModelVersion.objects.create(  # pluralistic, but failed
        project=project, version=4, status="failed", config={"mode": "pluralistic"}, snapshot=v1.snapshot
    )
    found = pluralistic_latest(project)
    assert found is not None and found.version == v2
    RewardModelVersion.objects.filter(id=v1.id).update(is_current=True)
    found = pluralistic_latest(project)
    assert found is not None and found.version == v1  # promoted wins
    assert pluralistic_latest(other).version == foreign


def test_no_pluralistic_model_explains_and_links_to_training(make_project, make_user):
    from models_srv.engine import TrainConfig
    from models_srv.forms import TrainForm

    curator = make_user("cura")
    project = make_project("plain", curator=curator)
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:quality", args=[project.slug])).content.decode()
    assert 'data-testid="groups-none"' in page and reverse("models_srv:models", args=[project.slug]) in page
    assert 'data-testid="chart-groups"' not in page
    assert c.get(f"/p/{project.slug}/charts.csv", {"chart": "groups"}).text.splitlines()[0].startswith("group,")
    # The train form offers the pluralistic mode and its number of groups.
    form = TrainForm({"mode": "pluralistic", "groups": 2})
    assert form.is_valid(), form.errors
    config = TrainConfig(**form.config())
    assert (config.mode, config.groups) == ("pluralistic", 2)
    assert not TrainForm({"mode": "pluralistic", "groups": 9}).is_valid()


# ---------------------------------------------------------------------------------------------
# Export by group


def _rows(out: Path, fmt: str) -> list[dict[str, Any]]:
    return [r for f in sorted((out / fmt).glob("*.jsonl")) for r in read_jsonl(f)]


def test_export_by_group(make_project, make_user, tmp_path, settings):
    settings.VAR_DIR = tmp_path
    project, version = hand_project(make_project, make_user("cura"))
    source = str(version.uuid)
    names = {lab.id: lab.name for lab in Labeler.objects.filter(project=project)}

    # Without a group source: the raw rows have no group columns, the card no groups section.
    snap, out = build(project, ["pairs", "raw"], tmp_path / "plain", label_source="imported")
    assert "group" not in pq.read_schema(out / "raw" / "train.parquet").names
    assert "group_source" not in snap.filters and "## Preference groups" not in (out / "README.md").read_text()
    plain_pairs = {r["item_id"]: r["chosen"] for r in _rows(out, "pairs")}
    assert set(plain_pairs) == {"i2", "i3"}  # i1 is a 2-2 split: undecided

    # Pooled with a source: the same pairs; each raw row carries its group and confidence.
    snap, out = build(project, ["pairs", "raw"], tmp_path / "pooled", label_source="imported", group_source=source)
    assert {r["item_id"]: r["chosen"] for r in _rows(out, "pairs")} == plain_pairs
    raw = pq.read_table(out / "raw" / "train.parquet").to_pylist()
    assert len(raw) == 10
    by_pseudonym = {r["labeler"]: (r["group"], r["group_confidence"]) for r in raw}
    from annotation.pseudonym import pseudonym

    expected = {"a": (1, 0.95), "b": (1, 0.9), "c": (2, 0.6), "d": (2, 0.55)}
    assert by_pseudonym == {pseudonym(project.slug, i): expected[n] for i, n in names.items()}
    assert [(r["group"], r["group_confidence"]) for r in _rows(out, "raw")] == [
        (r["group"], r["group_confidence"]) for r in raw
    ]
    card = (out / "README.md").read_text()
    assert "## Preference groups" in card and source in card and "all groups pooled" in card
    assert "| 1 | 5 | - |" in card and "| 2 | 5 | - |" in card
    assert snap.counts["groups"]["judgments"] == {"1": 5, "2": 5}

    # One group: only its members' judgments, their consensus.
    snap, out = build(
        project,
        ["pairs", "raw"],
        tmp_path / "one",
        label_source="imported",
        group_source=source,
        group_mode="one",
        group=2,
    )
    assert {r["group"] for r in _rows(out, "raw")} == {2} and len(_rows(out, "raw")) == 5
    long_answer = "a long answer with many words in it"
    assert {r["item_id"]: r["chosen"] for r in _rows(out, "pairs")} == {
        "i1": "short",
        "i2": long_answer,
        "i3": long_answer,
    }

    # Split: a pairs row per item and group whose own consensus decides, carrying the group.
    snap, out = build(
        project, ["pairs"], tmp_path / "split", label_source="imported", group_source=source, group_mode="split"
    )
    split = sorted((r["item_id"], r["group"], r["chosen"], r["n_judgments"]) for r in _rows(out, "pairs"))
    assert split == [
        ("i1", 1, long_answer, 2),
        ("i1", 2, "short", 2),
        ("i2", 2, long_answer, 2),  # {a, b} split 1-1 on i2: no row for group 1
        ("i3", 1, long_answer, 1),
        ("i3", 2, long_answer, 1),
    ]
    assert pq.read_schema(next((out / "pairs").glob("*.parquet"))).field("group").type == "int32"
    assert snap.counts["groups"]["pairs_rows"] == {"1": 2, "2": 3}
    assert "| 1 | 5 | 2 |" in (out / "README.md").read_text()

    # Weighted: i1's 2-2 split is decided by the confidences, (0.95 + 0.9) against (0.6 + 0.55).
    snap, out = build(
        project, ["pairs"], tmp_path / "weighted", label_source="imported", group_source=source, group_mode="weighted"
    )
    weighted = {r["item_id"]: r for r in _rows(out, "pairs")}
    assert weighted["i1"]["chosen"] == long_answer
    assert weighted["i1"]["agreement"] == pytest.approx(1.85 / 3.0)


def test_export_group_choices_are_checked(make_project, make_user, tmp_path, settings, client):
    settings.VAR_DIR = tmp_path
    curator = make_user("cura")
    project, version = hand_project(make_project, curator)
    _, foreign = hand_project(make_project, make_user("cura2"), slug="other")
    top = RewardModelVersion.objects.create(
        project=project, version=2, status="succeeded", config={"mode": "top"}, snapshot=version.snapshot
    )

    def refused(**filters: Any) -> str:
        with pytest.raises(ExportError) as exc:
            export_create(project=project, user=None, filters=filters, formats=["pairs"], enqueue=False)
        return str(exc.value)

    assert "not a finished pluralistic reward-model version of this project" in refused(group_source=str(foreign.uuid))
    assert "not a finished pluralistic" in refused(group_source=str(top.uuid))
    assert "not a finished pluralistic" in refused(group_source="not-a-uuid")
    assert "group 3 is not one of the groups of version 1: 1, 2" in refused(
        group_source=str(version.uuid), group_mode="one", group=3
    )
    assert "needs the group" in refused(group_source=str(version.uuid), group_mode="one")
    assert "need a group_source" in refused(group_mode="split")
    assert "only with group_mode 'one'" in refused(group_source=str(version.uuid), group=1)

    # The export page offers this project's pluralistic versions only, and shows the errors.
    client.force_login(curator)
    url = reverse("curation:exports", args=[project.slug])
    page = client.get(url).content.decode()
    assert str(version.uuid) in page and str(foreign.uuid) not in page and str(top.uuid) not in page
    base = {"formats": ["pairs"], "label_source": "imported", "license": "x"}
    response = client.post(url, {**base, "group_source": str(foreign.uuid)})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    response = client.post(url, {**base, "group_source": str(version.uuid), "group_mode": "one"})
    assert response.status_code == 400 and "needs the group to keep" in response.content.decode()
    response = client.post(url, {**base, "group_source": str(version.uuid), "group_mode": "split"})
    assert response.status_code == 302
    snapshot = project.exports.get()
    assert snapshot.filters["group_mode"] == "split" and snapshot.filters["group_source"] == str(version.uuid)
    assert json.dumps(snapshot.filters)


# ---------------------------------------------------------------------------------------------
# Annotators who join after training: placed from a few judgments, without retraining


def newcomers(n_items: int = 12) -> list[dict[str, Any]]:
    """New items judged by two newcomers only: `new_long` prefers the longer response, `new_short`
    the shorter, with no flips."""
    rows = two_camps(n_items, seed=7)
    for row in rows:
        row["id"] = f"n{row['id']}"
        long_is_a = len(row["response_a"]) > len(row["response_b"])
        row["judgments"] = [
            {"annotator": "new_long", "pairwise": {"choice": "A" if long_is_a else "B", "strength": 1}},
            {"annotator": "new_short", "pairwise": {"choice": "B" if long_is_a else "A", "strength": 1}},
        ]
    return rows


def _camp_of(panel: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    return next((g["group"], m) for g in panel["groups"] for m in g["members"] if m["labeler"] == name)


def test_newcomers_are_placed_in_their_camps_after_twelve_judgments(make_project, make_user, settings, tmp_path):
    from models_srv import services

    settings.MEDIA_ROOT = tmp_path
    project = camps_project(make_project, make_user("cura"))
    import_items(project=project, fileobj=jsonl(newcomers()))
    before = quality.report(project, bootstrap=0)["groups"]
    assert before["unplaced"] == 2 and before["placed"] == 0
    assert "new_long" not in {m["labeler"] for g in before["groups"] for m in g["members"]}

    version = pluralistic_latest(project).version
    assert services.place_annotators(version_id=version.id) == 2
    version.refresh_from_db()
    placed = {p["labeler"]: p for p in version.metrics["pluralistic"]["placed"]}
    assert {p["judgments"] for p in placed.values()} == {12}
    assert all(abs(sum(p["weights"]) - 1) < 1e-3 for p in placed.values())

    after = quality.report(project, bootstrap=0)["groups"]
    assert after["unplaced"] == 0 and after["placed"] == 2
    group_long, m_long = _camp_of(after, "new_long")
    group_short, m_short = _camp_of(after, "new_short")
    assert group_long == _camp_of(after, "ann0")[0] and group_short == _camp_of(after, "ann4")[0]
    assert m_long["confidence"] > 0.9 and m_short["confidence"] > 0.9
    assert m_long["placed_from"] == 12 and _camp_of(after, "ann0")[1]["placed_from"] is None
    # Their judgments now count in the panel: the longer-preferring camp gained 12 more.
    longs = next(g for g in after["groups"] if g["group"] == group_long)
    assert longs["longer_wins"]["n"] == 4 * 40 + 12
    # An export by group carries them too.
    members = pluralistic_latest(project).members()
    new_ids = dict(Labeler.objects.filter(project=project, name__startswith="new_").values_list("name", "id"))
    assert members[new_ids["new_long"]][0] == group_long and members[new_ids["new_short"]][0] == group_short


@pytest.mark.worker
def test_placing_from_the_quality_page_runs_on_the_worker(celery_worker_process, make_project, make_user, client):
    import time

    curator, other = make_user("cura"), make_user("other")
    project = camps_project(make_project, curator)
    make_project("elsewhere", curator=other)
    import_items(project=project, fileobj=jsonl(newcomers(6)))
    version = pluralistic_latest(project).version
    url = reverse("curation:groups_place", args=[project.slug, version.uuid])

    client.force_login(other)  # a curator of another project: nothing to see, nothing queued
    assert client.post(url).status_code == 404
    assert client.post(reverse("curation:groups_place", args=["elsewhere", version.uuid])).status_code == 404
    client.force_login(curator)
    page = client.get(reverse("curation:quality", args=[project.slug])).content.decode()
    assert 'data-testid="groups-place"' in page and "2 annotators judged pairs" in page
    response = client.post(url)
    assert response.status_code == 302 and response["Location"].endswith("/quality/#preference-groups")

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "placed" not in version.metrics["pluralistic"]:
        time.sleep(0.5)
        version.refresh_from_db()
    assert len(version.metrics["pluralistic"]["placed"]) == 2
    page = client.get(reverse("curation:quality", args=[project.slug]), {"fresh": "1"}).content.decode()
    assert "placed from 6" in page and 'data-testid="groups-place"' not in page
