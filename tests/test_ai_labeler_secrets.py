"""An LLM judge sends its key to its base_url, and both come from a curator: the key may only come
from environment variables the operator allowed (PREFLOOP_LLM_KEY_..., AI_LABELER_KEY_ENVS), and
the host only from AI_LABELER_ALLOWED_HOSTS when it is set. Refused on saving (API 422, form
error) and again when the worker connects (a config stored earlier sends nothing)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Judgment, Labeler, Project
from models_srv.labeling import run_execute, run_start
from models_srv.models import AILabelRun
from tests.conftest import jsonl, start_worker, stop_worker
from tests.fake_openai import FakeOpenAI
from tests.test_api import token_for

SERVER_SECRETS = ["SECRET_KEY", "DATABASE_URL"]


@pytest.fixture
def llm_project(make_project: Any, curator: Any) -> Project:
    project = make_project("keys", curator=curator)
    rows = [
        {"id": f"k{i}", "prompt": f"Q{i}? case:good", "response_a": "GOOD answer", "response_b": "BAD answer"}
        for i in range(2)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    return project


def _api(user: Any) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(user)}"})


def _add(api: Client, project: Project, config: dict[str, Any], name: str = "judge") -> Any:
    body = {"name": name, "kind": "llm", "config": {"model": "m", "backoff_s": 0.01, **config}}
    return api.post(f"/api/v1/projects/{project.slug}/ai-labelers", body, content_type="application/json")


def _stored_before_the_rule(project: Project, **config: Any) -> Labeler:
    """A labeler saved straight to the table, as one saved before the rule would be."""
    return Labeler.objects.create(
        project=project, kind="llm", name="old", version=1, config={"model": "m", "backoff_s": 0.01, **config}
    )


@pytest.mark.parametrize("var", SERVER_SECRETS)
def test_the_api_refuses_a_key_from_a_server_variable(llm_project: Project, curator: Any, var: str) -> None:
    with FakeOpenAI() as server:
        answer = _add(_api(curator), llm_project, {"base_url": server.url, "api_key_env": var})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert var in detail and "PREFLOOP_LLM_KEY_" in detail
    assert not Labeler.objects.filter(project=llm_project, kind="llm").exists()


@pytest.mark.parametrize("var", SERVER_SECRETS)
def test_the_form_refuses_a_key_from_a_server_variable(llm_project: Project, curator: Any, var: str) -> None:
    c = Client()
    c.force_login(curator)
    with FakeOpenAI() as server:
        page = c.post(
            reverse("models_srv:labeler_add", args=[llm_project.slug]),
            {"name": "judge", "kind": "llm", "config": f"base_url: {server.url}\nmodel: m\napi_key_env: {var}\n"},
        )
    assert page.status_code == 200
    text = page.content.decode()
    assert f"api_key_env &#x27;{var}&#x27; is not allowed" in text and "PREFLOOP_LLM_KEY_" in text
    assert not Labeler.objects.filter(project=llm_project, kind="llm").exists()


def test_the_forms_example_config_is_allowed(llm_project: Project, curator: Any) -> None:
    from models_srv.forms import LABELER_EXAMPLES

    c = Client()
    c.force_login(curator)
    added = c.post(
        reverse("models_srv:labeler_add", args=[llm_project.slug]),
        {"name": "judge", "kind": "llm", "config": LABELER_EXAMPLES["llm"]},
    )
    assert added.status_code == 302, added.content.decode()[-2000:]


@pytest.mark.parametrize("var", SERVER_SECRETS)
def test_a_config_stored_before_the_rule_sends_nothing(llm_project: Project, var: str) -> None:
    with FakeOpenAI() as server:
        labeler = _stored_before_the_rule(llm_project, base_url=server.url, api_key_env=var)
        run = run_execute(run_id=run_start(project=llm_project, labeler=labeler, enqueue=False).id)
    assert run.status == "failed" and var in run.error and "not allowed" in run.error
    assert sum(server.calls.values()) == 0 and server.auth == set()


def test_a_prefixed_or_listed_variable_is_used(llm_project: Project, curator: Any, monkeypatch, settings) -> None:
    monkeypatch.setenv("PREFLOOP_LLM_KEY_JUDGE", "sk-prefixed")
    monkeypatch.setenv("TEAM_JUDGE_TOKEN", "sk-listed")
    settings.AI_LABELER_KEY_ENVS = ["TEAM_JUDGE_TOKEN"]
    api = _api(curator)
    with FakeOpenAI() as server:
        for n, var in enumerate(["PREFLOOP_LLM_KEY_JUDGE", "TEAM_JUDGE_TOKEN"]):
            created = _add(api, llm_project, {"base_url": server.url, "api_key_env": var}, name=f"j{n}")
            assert created.status_code == 201, created.content
            labeler = Labeler.objects.get(id=created.json()["id"])
            run = run_execute(run_id=run_start(project=llm_project, labeler=labeler, enqueue=False).id)
            assert (run.status, run.done) == ("succeeded", 2)
    assert server.auth == {"Bearer sk-prefixed", "Bearer sk-listed"}
    # The bare prefix names no key of its own.
    assert _add(api, llm_project, {"base_url": server.url, "api_key_env": "PREFLOOP_LLM_KEY_"}).status_code == 422


def test_the_host_allow_list_refuses_other_hosts(llm_project: Project, curator: Any, settings) -> None:
    api = _api(curator)
    settings.AI_LABELER_ALLOWED_HOSTS = ["127.0.0.1"]
    with FakeOpenAI() as server:
        port = server.url.split(":")[2].split("/")[0]
        other = _add(api, llm_project, {"base_url": f"http://localhost:{port}/v1"})
        assert other.status_code == 422
        assert "'localhost' is not allowed" in other.json()["detail"]
        assert "AI_LABELER_ALLOWED_HOSTS" in other.json()["detail"]
        c = Client()
        c.force_login(curator)
        page = c.post(
            reverse("models_srv:labeler_add", args=[llm_project.slug]),
            {"name": "judge", "kind": "llm", "config": f"base_url: http://localhost:{port}/v1\nmodel: m\n"},
        )
        assert page.status_code == 200 and "AI_LABELER_ALLOWED_HOSTS" in page.content.decode()
        for scheme in ("file:///etc/passwd", "ftp://127.0.0.1/v1"):
            assert _add(api, llm_project, {"base_url": scheme}).status_code == 422
        assert not Labeler.objects.filter(project=llm_project, kind="llm").exists()

        listed = _add(api, llm_project, {"base_url": server.url})
        assert listed.status_code == 201, listed.content
        labeler = Labeler.objects.get(id=listed.json()["id"])
        run = run_execute(run_id=run_start(project=llm_project, labeler=labeler, enqueue=False).id)
        assert (run.status, run.done) == ("succeeded", 2)
        calls = sum(server.calls.values())
        assert calls > 0

        # The operator narrows the list later: the saved labeler no longer connects.
        settings.AI_LABELER_ALLOWED_HOSTS = [".judges.example.org"]
        Judgment.objects.filter(labeler=labeler).delete()  # something left to label
        again = run_start(project=llm_project, labeler=labeler, enqueue=False)
        again = run_execute(run_id=again.id)
        assert again.status == "failed" and "AI_LABELER_ALLOWED_HOSTS" in again.error
        assert sum(server.calls.values()) == calls


def test_the_host_allow_list_matches_like_allowed_hosts(settings) -> None:
    from models_srv.judges import host_allowed

    settings.AI_LABELER_ALLOWED_HOSTS = []
    assert host_allowed("anything.example.com")  # off by default: local servers work
    settings.AI_LABELER_ALLOWED_HOSTS = [".example.org", "vllm.internal", "[::1]"]
    assert host_allowed("example.org") and host_allowed("api.example.org") and host_allowed("API.Example.org")
    assert host_allowed("vllm.internal") and host_allowed("::1")
    assert not host_allowed("example.org.evil.com") and not host_allowed("vllm.internal.evil.com")
    assert not host_allowed("127.0.0.1")


# ---------------------------------------------------------------------------------------------
# Through a real worker: the worker's own environment holds the key.


def _wait_run(run_id: int, timeout: float = 120) -> AILabelRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = AILabelRun.objects.get(id=run_id)
        if run.status in ("succeeded", "failed"):
            return run
        time.sleep(0.2)
    pytest.fail(f"run {run_id} did not finish in {timeout} s")


def test_the_worker_sends_an_allowed_key_and_refuses_a_server_secret(
    worker_env: None, llm_project: Project, curator: Any, tmp_path: Path
) -> None:
    worker = start_worker(
        tmp_path / "worker.log", PREFLOOP_LLM_KEY_E2E="sk-from-the-worker", AI_LABELER_ALLOWED_HOSTS="127.0.0.1"
    )
    try:
        api = _api(curator)
        with FakeOpenAI() as server:
            created = _add(api, llm_project, {"base_url": server.url, "api_key_env": "PREFLOOP_LLM_KEY_E2E"})
            assert created.status_code == 201, created.content
            started = api.post(f"/api/v1/ai-labelers/{created.json()['id']}/runs")
            assert started.status_code == 202, started.content
            run = _wait_run(AILabelRun.objects.get(uuid=started.json()["id"]).id)
            assert (run.status, run.done) == ("succeeded", 2), run.error
            assert server.auth == {"Bearer sk-from-the-worker"}
            calls = sum(server.calls.values())

            port = server.url.split(":")[2].split("/")[0]
            for config in (
                {"base_url": server.url, "api_key_env": "SECRET_KEY"},
                {"base_url": f"http://localhost:{port}/v1"},  # not in the worker's AI_LABELER_ALLOWED_HOSTS
            ):
                old = _stored_before_the_rule(llm_project, **config)
                run = _wait_run(run_start(project=llm_project, labeler=old).id)
                assert run.status == "failed" and "not allowed" in run.error
                old.delete()
            assert sum(server.calls.values()) == calls
            assert server.auth == {"Bearer sk-from-the-worker"}
            assert settings.SECRET_KEY not in str(server.auth)
    finally:
        stop_worker(worker)
