"""A config may make the workers load only models the operator offers (models_srv/model_sources.py):
'default', Hugging Face ids from the local cache, folders under MODEL_DIRS; from_config only where
ALLOW_MODEL_FROM_CONFIG is on, and small. Refused on saving (API 422, form error, CommandError) with
one message whether a path is forbidden or absent, and again when the worker loads (a config stored
before the rule loads nothing)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from annotation.importing import import_items
from annotation.models import Labeler, Project
from models_srv import services
from models_srv.labeling import run_execute, run_start
from models_srv.model_sources import ModelSourceError, check_model_source, resolve_model_source
from models_srv.models import RewardModelVersion
from tests.conftest import jsonl
from tests.test_api import token_for
from tests.test_reward_training import TINY, synthetic_pairs
from tests.test_worker import TINY_CAUSAL

PAIRWISE = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": False}}
UNAVAILABLE = "is not available on this server"


@pytest.fixture
def labeled(make_project: Any, curator: Any, settings: Any, tmp_path: Path) -> Project:
    settings.MEDIA_ROOT = tmp_path / "media"
    project = make_project("srcs", schema=PAIRWISE, curator=curator)
    import_items(project=project, fileobj=jsonl(synthetic_pairs(40)))
    return project


def _forbidden(tmp_path: Path) -> dict[str, str]:
    """Names a curator must not make the server load: a system folder, another project's reward-model
    artifacts (a real folder under the artifacts directory), a relative escape."""
    artifacts = services.artifacts_root() / "other-project" / "some-version" / "backbone"
    artifacts.mkdir(parents=True)
    (artifacts / "config.json").write_text("{}")
    return {"etc": "/etc", "artifacts": str(artifacts), "dotdot": "../x"}


def _api(user: Any) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(user)}"})


def _train(api: Client, project: Project, config: dict[str, Any]) -> Any:
    return api.post(f"/api/v1/projects/{project.slug}/reward-models", config, content_type="application/json")


def _add_cdr(api: Client, project: Project, config: dict[str, Any], name: str = "cdr") -> Any:
    body = {"name": name, "kind": "density_ratio", "config": config}
    return api.post(f"/api/v1/projects/{project.slug}/ai-labelers", body, content_type="application/json")


def _detail(answer: Any) -> str:
    return str(answer.json()["detail"])


@pytest.mark.parametrize("which", ["etc", "artifacts", "dotdot"])
def test_the_api_refuses_a_backbone_or_judge_model_outside_the_allowed_sources(
    labeled: Project, curator: Any, tmp_path: Path, which: str
) -> None:
    name = _forbidden(tmp_path)[which]
    api = _api(curator)
    trained = _train(api, labeled, {"backbone": name, "mode": "frozen"})
    assert trained.status_code == 422, trained.content
    assert UNAVAILABLE in _detail(trained) and "MODEL_DIRS" in _detail(trained)
    assert not RewardModelVersion.objects.exists()
    for field in ("strong", "weak"):
        config = {"strong": "org/strong", "weak": "org/weak", field: name}
        added = _add_cdr(api, labeled, config)
        assert added.status_code == 422, added.content
        assert UNAVAILABLE in _detail(added)
    assert not Labeler.objects.filter(project=labeled, kind="density_ratio").exists()


def test_a_missing_path_and_a_forbidden_one_get_the_same_answer(labeled: Project, curator: Any, settings: Any) -> None:
    settings.MODEL_DIRS = []
    api = _api(curator)
    answers = {
        name: _detail(_train(api, labeled, {"backbone": name})).replace(repr(name), "NAME")
        for name in ("/etc", "/no/such/folder", "/etc/passwd")
    }
    assert len(set(answers.values())) == 1, answers


def test_the_api_refuses_from_config_unless_the_operator_allows_it(
    labeled: Project, curator: Any, settings: Any
) -> None:
    settings.ALLOW_MODEL_FROM_CONFIG = False
    api = _api(curator)
    trained = _train(api, labeled, {"from_config": TINY, "mode": "frozen"})
    assert trained.status_code == 422 and "ALLOW_MODEL_FROM_CONFIG" in _detail(trained)
    added = _add_cdr(api, labeled, {"strong": "a", "weak": "b", "from_config": {"strong": TINY, "weak": TINY}})
    assert added.status_code == 422 and "ALLOW_MODEL_FROM_CONFIG" in _detail(added)
    assert not RewardModelVersion.objects.exists()
    assert not Labeler.objects.filter(project=labeled, kind="density_ratio").exists()


@pytest.mark.parametrize(
    "spec, why",
    [
        ({**TINY, "hidden_size": 65_536}, "hidden_size must be an integer from 1 to"),
        ({**TINY, "num_hidden_layers": 500}, "num_hidden_layers must be an integer from 1 to"),
        ({**TINY, "vocab_size": 10_000_000}, "vocab_size must be an integer from 1 to"),
        ({"model_type": "llama"}, "model_type must be one of"),
        ({"model_type": "bert"}, "bert needs"),  # the defaults would be a full-size BERT
        ({**TINY, "tokenizer": "/etc"}, UNAVAILABLE),
        ({**TINY, "num_experts": 64}, "unknown key"),
    ],
)
def test_an_allowed_from_config_is_capped(labeled: Project, curator: Any, settings: Any, spec: dict, why: str) -> None:
    settings.ALLOW_MODEL_FROM_CONFIG = True
    trained = _train(_api(curator), labeled, {"from_config": spec})
    assert trained.status_code == 422 and why in _detail(trained), trained.content


def test_the_forms_refuse_a_model_outside_the_allowed_sources(labeled: Project, curator: Any, tmp_path: Path) -> None:
    c = Client()
    c.force_login(curator)
    for name in _forbidden(tmp_path).values():
        page = c.post(reverse("models_srv:train", args=[labeled.slug]), {"backbone": name}, HTTP_HX_REQUEST="true")
        assert page.status_code == 200
        assert UNAVAILABLE in html.unescape(page.content.decode())
        page = c.post(
            reverse("models_srv:labeler_add", args=[labeled.slug]),
            {"name": "cdr", "kind": "density_ratio", "config": f"strong: {name}\nweak: org/weak\n"},
        )
        assert page.status_code == 200 and UNAVAILABLE in html.unescape(page.content.decode())
    assert not RewardModelVersion.objects.exists()
    assert not Labeler.objects.filter(project=labeled, kind="density_ratio").exists()


def test_the_command_follows_the_same_rule(labeled: Project, settings: Any) -> None:
    with pytest.raises(CommandError, match=UNAVAILABLE):
        call_command("train_reward_model", "--project", labeled.slug, "--backbone", "/etc")
    settings.ALLOW_MODEL_FROM_CONFIG = False
    with pytest.raises(CommandError, match="ALLOW_MODEL_FROM_CONFIG"):
        call_command(
            "train_reward_model", "--project", labeled.slug, "--config", '{"from_config": {"model_type": "bert"}}'
        )
    assert not RewardModelVersion.objects.exists()


def test_a_link_out_of_a_model_dir_is_refused(settings: Any, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "escape").symlink_to("/etc")
    settings.MODEL_DIRS = [str(models)]
    for name in (str(models / "escape"), f"{models}/../models/escape", str(models / ".." / "x")):
        with pytest.raises(ModelSourceError, match=UNAVAILABLE):
            check_model_source(name)


def test_a_hugging_face_id_loads_from_the_cache_only(monkeypatch: Any, tmp_path: Path) -> None:
    """An id is looked up in the local cache (no download) and never read as a relative path."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert Path(resolve_model_source("org/tiny")) == snapshot.resolve()
    # A folder in the worker's directory named like an id is not what the id loads.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    with pytest.raises(ModelSourceError, match=UNAVAILABLE):
        resolve_model_source("org/local")


# ---------------------------------------------------------------------------------------------
# A folder the operator lists works; configs stored before the rule load nothing.


def _save_tiny(folder: Path, spec: dict[str, Any], causal: bool) -> None:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    from models_srv.model_sources import resolve_model_source

    tok = AutoTokenizer.from_pretrained(resolve_model_source("default"))
    spec = dict(spec)
    torch.manual_seed(int(spec.pop("seed", 0)))
    model_config = AutoConfig.for_model(**{"vocab_size": tok.vocab_size, **spec})
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(model_config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def test_a_folder_under_model_dirs_trains_and_judges(
    labeled: Project, curator: Any, settings: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    _save_tiny(models / "tiny-bert", TINY, causal=False)
    _save_tiny(models / "strong", {**TINY_CAUSAL, "seed": 1}, causal=True)
    _save_tiny(models / "weak", {**TINY_CAUSAL, "seed": 2}, causal=True)
    settings.MODEL_DIRS = [str(models)]
    settings.ALLOW_MODEL_FROM_CONFIG = False  # real folders, no configs
    api = _api(curator)
    config = {"backbone": str(models / "tiny-bert"), "mode": "frozen", "epochs": 5, "max_length": 32, "ensemble": 1}
    started = _train(api, labeled, config)
    assert started.status_code == 202, started.content
    version = services.training_run(version_id=RewardModelVersion.objects.get(uuid=started.json()["id"]).id)
    assert version.status == "succeeded", version.error
    added = _add_cdr(api, labeled, {"strong": str(models / "strong"), "weak": str(models / "weak")})
    assert added.status_code == 201, added.content
    labeler = Labeler.objects.get(id=added.json()["id"])
    run = run_execute(run_id=run_start(project=labeled, labeler=labeler, item_ids=None, enqueue=False).id)
    assert run.status == "succeeded" and run.done == 40, run.error


@pytest.mark.parametrize("which", ["etc", "artifacts", "dotdot"])
def test_a_training_config_stored_before_the_rule_loads_nothing(labeled: Project, tmp_path: Path, which: str) -> None:
    name = _forbidden(tmp_path)[which]
    # services.training_start is what the API and forms call after their checks: a row as stored before.
    version = services.training_start(project=labeled, config={"backbone": name, "mode": "frozen"}, enqueue=False)
    with pytest.raises(ModelSourceError):
        services.training_run(version_id=version.id)
    version.refresh_from_db()
    assert version.status == "failed" and UNAVAILABLE in version.error
    assert version.artifact_path == ""


def test_a_from_config_stored_while_allowed_is_refused_once_turned_off(labeled: Project, settings: Any) -> None:
    version = services.training_start(project=labeled, config={"from_config": TINY}, enqueue=False)
    settings.ALLOW_MODEL_FROM_CONFIG = False
    with pytest.raises(ModelSourceError):
        services.training_run(version_id=version.id)
    version.refresh_from_db()
    assert version.status == "failed" and "ALLOW_MODEL_FROM_CONFIG" in version.error


@pytest.mark.parametrize("which", ["etc", "artifacts", "dotdot"])
def test_a_judge_config_stored_before_the_rule_loads_nothing(labeled: Project, tmp_path: Path, which: str) -> None:
    name = _forbidden(tmp_path)[which]
    labeler = Labeler.objects.create(
        project=labeled, kind="density_ratio", name="old", version=1, config={"strong": name, "weak": "org/weak"}
    )
    run = run_execute(run_id=run_start(project=labeled, labeler=labeler, enqueue=False).id)
    assert run.status == "failed" and UNAVAILABLE in run.error
