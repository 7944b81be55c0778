"""Version and AI-labeler pages show settings as a table people read: each setting with its value,
its default and whether it was changed; no server file path and no API key on the page."""

from __future__ import annotations

import re

from annotation.models import Labeler
from models_srv.engine import TrainConfig
from models_srv.models import RewardModelVersion
from models_srv.selectors import config_rows


def test_config_rows_mark_what_differs_from_the_default() -> None:
    rows = {r["name"]: r for r in config_rows(TrainConfig, {"mode": "frozen", "ensemble": 3, "from_config": None})}
    assert list(rows) == list(TrainConfig.model_fields)
    assert rows["mode"]["changed"] and rows["mode"]["value"] == "frozen" and rows["mode"]["default"] == "top"
    assert not rows["ensemble"]["changed"] and rows["ensemble"]["value"] == "3"
    assert not rows["from_config"]["changed"] and rows["from_config"]["value"] == "none"
    assert "bootstrap" in rows["ensemble"]["help"]


def test_version_page_shows_a_settings_table_and_no_server_path(client, make_user, make_project, tmp_path) -> None:
    curator = make_user("cur")
    project = make_project("cfg", curator=curator)
    from models_srv.data import snapshot_create

    secret_dir = tmp_path / "srv" / "reward_models" / "cfg" / "abc"
    version = RewardModelVersion.objects.create(
        project=project,
        version=1,
        config=TrainConfig(mode="frozen", epochs=7).model_dump(),
        snapshot=snapshot_create(project=project),
        status="succeeded",
        artifact_path=str(secret_dir),
    )
    client.force_login(curator)
    html = client.get(f"/m/{version.uuid}/").content.decode()
    assert str(secret_dir) not in html and str(tmp_path) not in html
    assert "{'backbone'" not in html  # no raw dict
    row = re.search(r'<tr class="changed" data-setting="epochs">(.*?)</tr>', html, re.S)
    assert row and ">7<" in row.group(1) and "changed" in row.group(1)
    assert 'data-setting="lr">' in html  # unchanged rows are there, not marked


def test_labeler_page_shows_settings_without_the_key(client, make_user, make_project) -> None:
    from models_srv.judges import encrypt_api_key

    curator = make_user("cur2")
    project = make_project("cfg2", curator=curator)
    config = {
        "base_url": "http://127.0.0.1:9/v1",
        "model": "judge-x",
        "api_key_encrypted": encrypt_api_key("sk-SECRET"),
    }
    labeler = Labeler.objects.create(project=project, kind=Labeler.Kind.LLM, name="j", config=config)
    client.force_login(curator)
    for url in (f"/ai/labelers/{labeler.id}/", f"/p/{project.slug}/ai/"):
        html = client.get(url).content.decode()
        assert "sk-SECRET" not in html and config["api_key_encrypted"] not in html, url
        assert 'data-setting="api_key_encrypted"' in html and "(set)" in html, url
        assert re.search(r'data-setting="model">.*?judge-x', html, re.S), url
        assert 'class="changed" data-setting="temperature"' not in html, url
