"""A reward-model judge may use a succeeded version of its own project or of any project its
curator curates (who may read a version: models_srv.selectors.version_for_curator), chosen in the
form or named in the API; any other version is refused with the words of a missing one, when the
labeler is saved and again when the worker runs it."""

from __future__ import annotations

import json
import uuid

import pytest
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership
from annotation.services import membership_set
from models_srv import services
from models_srv.judges import version_refusal
from models_srv.labeling import LabelerError, labeler_create, run_execute, run_start
from models_srv.models import AILabelRun
from tests.conftest import jsonl
from tests.test_api import api
from tests.test_reward_training import TINY, synthetic_pairs


def _trained(project) -> str:
    config = {"from_config": TINY, "mode": "frozen", "epochs": 5, "max_length": 32, "ensemble": 1}
    version = services.training_run(
        version_id=services.training_start(project=project, config=config, enqueue=False).id
    )
    assert version.status == "succeeded", version.error
    return str(version.uuid)


@pytest.fixture
def world(make_project, make_user, curator, outsider, settings, tmp_path):
    """carol curates P and Q and annotates S; oscar curates R and S. Q, R and S have a version."""
    settings.MEDIA_ROOT = tmp_path
    projects = {slug: make_project(slug, curator=curator) for slug in ("p", "q")}
    projects |= {slug: make_project(slug, curator=outsider) for slug in ("r", "s")}
    membership_set(project=projects["s"], user=curator, role=Membership.Role.ANNOTATOR)
    for slug, project in projects.items():
        rows = [
            {**row, "id": f"{slug}-{row['id']}"} for row in synthetic_pairs(24 if slug == "p" else 60, seed=ord(slug))
        ]
        import_items(project=project, fileobj=jsonl(rows))
    versions = {slug: _trained(projects[slug]) for slug in ("q", "r", "s")}
    return projects, versions


def _add(client: Client, slug: str, version: str) -> object:
    body = {"name": "rm", "kind": "reward_model", "config": {"version": version}}
    return client.post(f"/api/v1/projects/{slug}/ai-labelers", body, content_type="application/json")


def test_a_curator_judges_one_project_with_another_projects_version(world, curator) -> None:
    projects, versions = world
    client = api(curator)
    created = _add(client, "p", versions["q"])
    assert created.status_code == 201, created.content
    started = client.post(f"/api/v1/ai-labelers/{created.json()['id']}/runs")
    assert started.status_code == 202, started.content
    run = run_execute(run_id=AILabelRun.objects.get(uuid=started.json()["id"]).id)
    assert run.status == "succeeded", run.error
    assert run.done == Item.objects.filter(project=projects["p"]).count() == 24 and run.failed == 0
    labels = Judgment.objects.filter(labeler_id=created.json()["id"])
    assert {json.loads(j.raw_output)["version"] for j in labels} == {versions["q"]}


def test_the_form_offers_the_versions_of_the_projects_one_curates(world, curator) -> None:
    projects, versions = world
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("models_srv:ai", args=["p"])).content.decode()
    assert versions["q"] in page and versions["r"] not in page and versions["s"] not in page
    added = c.post(
        reverse("models_srv:labeler_add", args=["p"]),
        {"name": "rm", "kind": "reward_model", "config": "strength_threshold: 2\n", "version": versions["q"]},
    )
    assert added.status_code == 302, added.content.decode()[:500]
    labeler = Labeler.objects.get(project=projects["p"], name="rm")
    assert labeler.config["version"] == versions["q"] and labeler.config["strength_threshold"] == 2

    def refused(version: str) -> str:
        post = {"name": "x", "kind": "reward_model", "config": "{}", "version": version}
        response = c.post(reverse("models_srv:labeler_add", args=["p"]), post)
        assert response.status_code == 200
        return json.dumps(response.context["form"].errors).replace(version, "ID")

    missing = refused(str(uuid.uuid4()))
    assert "not one of the available choices" in missing
    assert refused(versions["r"]) == refused(versions["s"]) == missing
    assert not Labeler.objects.filter(name="x").exists()


def test_a_version_one_cannot_curate_is_refused_like_a_missing_one(world, curator) -> None:
    """R's version belongs to a project carol cannot see, S's to one she only annotates."""
    _, versions = world
    client = api(curator)

    def refused(version: str) -> str:
        response = _add(client, "p", version)
        assert response.status_code == 422, response.content
        return response.json()["detail"].replace(version, "ID")

    missing = refused(str(uuid.uuid4()))
    assert missing == version_refusal("ID")
    assert refused(versions["r"]) == refused(versions["s"]) == missing
    assert "'current' or a version's uuid" in _add(client, "p", "q-v1").json()["detail"]
    assert not Labeler.objects.filter(name="rm").exists()
    with pytest.raises(LabelerError, match="reward-model version"):  # a script's labeler: its own project's only
        labeler_create(project=world[0]["p"], kind="reward_model", name="cli", config={"version": versions["q"]})
    assert _add(client, "p", versions["q"]).status_code == 201


def test_the_worker_checks_again_when_the_run_starts(world, curator, outsider) -> None:
    """Access is read when the run starts: carol's labeler stops when she no longer curates Q, and
    a run started without a user (from the shell) uses its own project's versions only."""
    projects, versions = world
    labeler = labeler_create(
        project=projects["p"], kind="reward_model", name="rm", config={"version": versions["q"]}, by=curator
    )
    membership_set(project=projects["q"], user=curator, role=Membership.Role.ANNOTATOR)
    run = run_execute(run_id=run_start(project=projects["p"], labeler=labeler, created_by=curator, enqueue=False).id)
    assert (run.status, run.done, run.error) == ("failed", 0, version_refusal(versions["q"]))
    membership_set(project=projects["q"], user=curator, role=Membership.Role.CURATOR)
    run = run_execute(run_id=run_start(project=projects["p"], labeler=labeler, enqueue=False).id)
    assert (run.status, run.error) == ("failed", version_refusal(versions["q"]))
    run = run_execute(run_id=run_start(project=projects["p"], labeler=labeler, created_by=curator, enqueue=False).id)
    assert run.status == "succeeded" and run.done == 24
