"""Management commands: create_project from YAML/JSON specs, import_items, load_demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Item, Judgment, Membership, Project


def test_create_project_from_yaml_and_json(tmp_path: Path, curator) -> None:
    yaml_spec = tmp_path / "p.yaml"
    yaml_spec.write_text("slug: y1\nname: Y\nschema:\n  ranking: {k: 3}\n  spans: {categories: [{name: factual}]}\n")
    call_command("create_project", str(yaml_spec), owner="carol")
    json_spec = tmp_path / "p.json"
    json_spec.write_text(json.dumps({"slug": "j1", "name": "J", "schema": {"pairwise": {"allow_tie": False}}}))
    call_command("create_project", str(json_spec), owner="carol")
    assert Project.objects.get(slug="y1").judgment_schema.kinds == ["ranking", "spans"]
    assert Project.objects.get(slug="y1").memberships.get().user == curator
    assert Project.objects.get(slug="j1").schema == {
        "pairwise": {"strengths": ["better", "much better"], "allow_tie": False, "justification": "optional"}
    }


def test_create_project_refuses_bad_specs(tmp_path: Path, db) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("slug: Bad Slug\nname: B\nschema: {pairwise: {}}\n")
    with pytest.raises(CommandError, match="slug"):
        call_command("create_project", str(spec))
    spec.write_text("slug: ok\nname: B\nschema: {pairwise: {}}\nmembers: [{username: ghost, role: curator}]\n")
    with pytest.raises(CommandError, match="ghost"):
        call_command("create_project", str(spec))
    assert not Project.objects.exists()


def test_create_project_without_an_owner_is_refused_and_creates_nothing(tmp_path: Path, curator) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text("slug: nobody\nname: N\nschema: {pairwise: {}}\n")
    with pytest.raises(CommandError, match="--owner is required"):
        call_command("create_project", str(spec))
    assert not Project.objects.exists()
    # A spec that names its curator needs no --owner.
    spec.write_text("slug: named\nname: N\nschema: {pairwise: {}}\nmembers: [{username: carol, role: curator}]\n")
    call_command("create_project", str(spec))
    assert Project.objects.get(slug="named").memberships.get().user == curator


def test_import_items_command(tmp_path: Path, project: Project, capsys) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "response_a": "x", "response_b": "y", "label": "tie"}\n')
    call_command("import_items", "--project", project.slug, str(path))
    assert "1 items created" in capsys.readouterr().out
    path.write_text('{"id": "b", "prompt": "p", "response_a": "x"}\n')
    with pytest.raises(CommandError, match="refused"):
        call_command("import_items", "--project", project.slug, str(path))
    assert "items.jsonl: line 1: response_a and response_b must both be given" in capsys.readouterr().err
    with pytest.raises(CommandError, match="no project"):
        call_command("import_items", "--project", "nope", str(path))


def test_load_demo_is_idempotent(db, capsys) -> None:
    call_command("load_demo")
    out = capsys.readouterr().out
    assert "curator / demo-curator-pass / curator" in out
    counts = (Project.objects.count(), Item.objects.count(), Membership.objects.count())
    call_command("load_demo", "--quiet-credentials")
    assert (Project.objects.count(), Item.objects.count(), Membership.objects.count()) == counts
    assert Item.objects.filter(project__slug="demo-chat-quality").count() == 36
    assert Item.objects.filter(project__slug="demo-answer-ranking", num_responses=4).count() == 12
    assert Item.objects.filter(prompt_messages__isnull=False).count() == 8
    assert Judgment.objects.count() == 0
    chat = Project.objects.get(slug="demo-chat-quality")
    assert chat.judgment_schema.kinds == ["pairwise", "rubric"]
    assert set(chat.memberships.values_list("user__username", "role")) == {
        ("curator", "curator"),
        ("alice", "annotator"),
        ("bob", "annotator"),
    }
