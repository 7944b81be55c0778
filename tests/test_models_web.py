"""The reward-model pages and API: access, starting runs, acting on versions; torch stays out of the web process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from models_srv import services
from models_srv.models import RewardModelVersion
from tests.conftest import ROOT, jsonl
from tests.test_api import token_for
from tests.test_reward_training import TINY, synthetic_pairs


@pytest.fixture
def labeled(project):
    import_items(project=project, fileobj=jsonl(synthetic_pairs(40)))
    return project


def _client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def test_curators_start_runs_from_the_page_and_others_get_404(labeled, curator, annotator, outsider) -> None:
    c = _client(curator)
    assert c.get(reverse("models_srv:models", args=[labeled.slug])).status_code == 200
    response = c.post(
        reverse("models_srv:train", args=[labeled.slug]), {"mode": "frozen", "ensemble": 2}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and 'id="versions"' in response.content.decode()
    version = RewardModelVersion.objects.get()
    assert (version.status, version.config["ensemble"], version.config["mode"]) == ("queued", 2, "frozen")
    assert 'hx-trigger="every 1s"' in response.content.decode()  # polls while the run is active
    bare = c.post(reverse("models_srv:train", args=[labeled.slug]))  # the project page's one-click button
    assert bare.status_code == 302 and RewardModelVersion.objects.count() == 2
    for user in (annotator, outsider):
        other = _client(user)
        assert other.get(reverse("models_srv:models", args=[labeled.slug])).status_code == 404
        assert other.post(reverse("models_srv:cancel", args=[version.uuid])).status_code == 404
        assert other.get(reverse("models_srv:version", args=[version.uuid])).status_code == 404
    c.post(reverse("models_srv:cancel", args=[version.uuid]), HTTP_HX_REQUEST="true")
    version.refresh_from_db()
    assert version.status == "cancelled"


def test_api_trains_reports_and_rolls_back(labeled, curator, outsider, settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path
    api = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    config = {"from_config": TINY, "mode": "frozen", "epochs": 20, "max_length": 32, "ensemble": 1}
    started = api.post(f"/api/v1/projects/{labeled.slug}/reward-models", config, content_type="application/json")
    assert started.status_code == 202, started.content
    vid = started.json()["id"]
    assert api.post(f"/api/v1/reward-models/{vid}/make-current").status_code == 409  # not trained yet
    services.training_run(version_id=RewardModelVersion.objects.get(uuid=vid).id)  # what the worker does
    body = api.get(f"/api/v1/reward-models/{vid}").json()
    assert body["status"] == "succeeded" and body["is_current"] and "pairwise" in body["metrics"]
    listed = api.get(f"/api/v1/projects/{labeled.slug}/reward-models").json()
    assert [v["version"] for v in listed] == [1]
    bad = api.post(
        f"/api/v1/projects/{labeled.slug}/reward-models", {"mode": "sideways"}, content_type="application/json"
    )
    assert bad.status_code == 422
    eve = Client(headers={"Authorization": f"Bearer {token_for(outsider)}"})
    assert eve.get(f"/api/v1/reward-models/{vid}").status_code == 404
    assert (
        eve.post(f"/api/v1/projects/{labeled.slug}/reward-models", {}, content_type="application/json").status_code
        == 404
    )


def test_the_web_process_does_not_import_torch() -> None:
    code = (
        "import django, sys; django.setup(); from django.urls import resolve; import config.urls, config.wsgi; "
        "resolve('/p/x/models/'); print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert out.stdout.strip() == "False False", out.stderr
