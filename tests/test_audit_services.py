"""One audit mechanism: every audited action is recorded by exactly one service path, explicitly,
inside the transaction of the write it describes; signal receivers record only what Django offers
no other hook for (logins, the admin's LogEntry); and no module outside the services creates the
rows those actions are about."""

from __future__ import annotations

import ast
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import models

from accounts.models import ApiToken
from annotation import audit
from annotation import services as annotation_services
from annotation.importing import import_items
from annotation.models import (
    AuditEvent,
    GuidelinesVersion,
    ImportJob,
    Item,
    Membership,
    Project,
    SchemaVersion,
)
from annotation.schema import JudgmentSchema
from curation import services as curation_services
from curation.models import CurationAction, ExportSnapshot
from models_srv import services as rm_services
from models_srv.labeling import labeler_create
from models_srv.models import AILabelerAudit, CrossFitRun, RewardModelVersion
from tests.conftest import jsonl, pair_row

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "annotation", "curation", "models_srv", "config")

# Where audited writes and their events live.
SERVICE_MODULES = {"annotation/services.py", "curation/services.py", "models_srv/services.py"}
# Recorded by receivers, because Django gives no other hook: auth's login signals and the admin's
# own LogEntry (every ModelAdmin, ours and Django's, writes one).
SIGNAL_ACTIONS = {"auth.login", "auth.login_failed", "auth.login_locked", "admin.add", "admin.change", "admin.delete"}
SIGNAL_MODULE = "annotation/signals.py"
# The rows the service actions are about: created nowhere but in the services.
AUDITED_MODELS = {
    "Project",
    "Membership",
    "ApiToken",
    "ImportJob",
    "CurationAction",
    "ExportSnapshot",
    "RewardModelVersion",
    "AILabelerAudit",
    "CrossFitRun",
}
CREATORS = {"create", "get_or_create", "update_or_create", "bulk_create"}


def _modules() -> list[tuple[str, ast.Module]]:
    found = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "/migrations/" not in rel:
                found.append((rel, ast.parse(path.read_text(), filename=rel)))
    return found


def _records_in(rel: str, tree: ast.Module) -> list[tuple[str, int, str]]:
    """(module, line, action) of every `<audit module>.record(actor, action, ...)` call. The action
    is a literal, or `TABLE.get(...)` of a module-level dict of literals (one site for each value)."""
    tables = {
        target.id: [v.value for v in node.value.values if isinstance(v, ast.Constant)]
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "record"
            and isinstance(node.func.value, ast.Name)
            and "audit" in node.func.value.id
        ):
            arg = node.args[1] if len(node.args) >= 2 else None
            if isinstance(arg, ast.Constant):
                actions = [arg.value]
            elif (
                isinstance(arg, ast.Call)
                and isinstance(arg.func, ast.Attribute)
                and isinstance(arg.func.value, ast.Name)
                and arg.func.value.id in tables
            ):
                actions = tables[arg.func.value.id]
            else:
                raise AssertionError(f"{rel}:{node.lineno}: name the audit action as a literal, so it can be found")
            calls += [(rel, node.lineno, action) for action in actions]
    return calls


def _creations_in(rel: str, tree: ast.Module) -> list[str]:
    """`Model.objects.create(...)` and its kin, for the audited models."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CREATORS
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "objects"
            and isinstance(node.func.value.value, ast.Name)
            and node.func.value.value.id in AUDITED_MODELS
        ):
            found.append(f"{rel}:{node.lineno} {node.func.value.value.id}.objects.{node.func.attr}")
    return found


def test_every_audit_action_is_recorded_at_exactly_one_call_site() -> None:
    calls = [c for rel, tree in _modules() if rel != "annotation/audit.py" for c in _records_in(rel, tree)]
    sites: dict[str, list[str]] = {}
    for rel, line, action in calls:
        sites.setdefault(action, []).append(f"{rel}:{line}")
    assert set(sites) == set(audit.ACTIONS), "every recorded action is listed in ACTIONS, and every listed one recorded"
    for action, where in sites.items():
        assert len(where) == 1, f"{action} is recorded at {len(where)} places: {where}"
        module = where[0].split(":")[0]
        expected = {SIGNAL_MODULE} if action in SIGNAL_ACTIONS else SERVICE_MODULES
        assert module in expected, f"{action} is recorded in {module}, not in {sorted(expected)}"


def test_no_module_outside_the_services_creates_audited_rows() -> None:
    offenders = [f for rel, tree in _modules() if rel not in SERVICE_MODULES for f in _creations_in(rel, tree)]
    assert offenders == []


def test_the_matchers_find_what_they_look_for() -> None:
    tree = ast.parse(
        "from annotation import audit as audit_log\n"
        "def f(u):\n"
        "    token = ApiToken.objects.create(user=u)\n"
        "    Membership.objects.update_or_create(user=u)\n"
        "    Item.objects.create(x=1)\n"
        "    audit_log.record(u, 'token.create', target=token)\n"
    )
    assert _records_in("x.py", tree) == [("x.py", 6, "token.create")]
    assert _creations_in("x.py", tree) == [
        "x.py:3 ApiToken.objects.create",
        "x.py:4 Membership.objects.update_or_create",
    ]


# ---------------------------------------------------------------------------------------------
# Each service action: one event when it succeeds; nothing at all when it fails after the event.


class AfterTheEventError(Exception):
    pass


def _state() -> dict[str, list[dict[str, Any]]]:
    """Every row an audited action may write, to compare before and after a failed one."""
    tables: list[tuple[type[models.Model], list[str] | None]] = [
        (Project, None),
        (SchemaVersion, None),
        (GuidelinesVersion, None),
        (Membership, None),
        (ApiToken, None),
        (ImportJob, None),
        (Item, ["id", "status", "route", "priority", "extra_overlap"]),
        (CurationAction, None),
        (ExportSnapshot, None),
        (RewardModelVersion, None),
        (AILabelerAudit, None),
        (CrossFitRun, None),
        (AuditEvent, None),
    ]
    return {m.__name__: list(m.objects.order_by("pk").values(*(fields or []))) for m, fields in tables}


@pytest.fixture
def world(project: Project, curator: Any, annotator: Any, make_user: Callable[..., Any]) -> dict[str, Any]:
    import_items(project=project, fileobj=jsonl([pair_row(i, label="A") for i in range(8)]))
    make_user("dave")
    return {"project": project, "curator": curator, "annotator": annotator}


def _succeeded_version(w: dict[str, Any]) -> RewardModelVersion:
    version = rm_services.training_start(project=w["project"], config={}, created_by=w["curator"], enqueue=False)
    RewardModelVersion.objects.filter(pk=version.pk).update(status="succeeded")
    version.refresh_from_db()
    return version


def _applied(w: dict[str, Any]) -> CurationAction:
    item = Item.objects.filter(project=w["project"]).order_by("id").first()
    return curation_services.curation_action_apply(item=item, actor=w["curator"], action="drop", reason="r")


def _upload() -> io.BytesIO:
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "items.jsonl"
    return upload


def _ai_labeler(w: dict[str, Any]) -> Any:
    config = {"base_url": "http://127.0.0.1:9/v1", "model": "judge-1"}
    return labeler_create(project=w["project"], kind="llm", name="judge", config=config, api_key="sk-test")


def _membership(w: dict[str, Any]) -> Membership:
    return Membership.objects.get(project=w["project"], user=w["annotator"])


# action -> (prepare(world) -> state the action needs, act(world, prepared))
ACTS: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[dict[str, Any], Any], Any]]] = {
    "project.create": (
        lambda w: annotation_services.ProjectSpec.parse(
            {"slug": "fresh", "name": "Fresh", "schema": {"pairwise": {"strengths": ["better"]}}}
        ),
        lambda w, spec: annotation_services.project_create(spec=spec, created_by=w["curator"]),
    ),
    "project.settings": (
        lambda w: JudgmentSchema.model_validate({"pairwise": {"strengths": ["better", "much better"]}}),
        lambda w, schema: annotation_services.project_edit_texts(
            project=w["project"], schema=schema, guidelines="Be kind.", by=w["curator"]
        ),
    ),
    "membership.add": (
        lambda w: None,
        lambda w, _: annotation_services.member_add(
            project=w["project"], username="dave", role="annotator", by=w["curator"]
        ),
    ),
    "membership.change": (
        _membership,
        lambda w, m: annotation_services.member_set_role(membership=m, role="curator", by=w["curator"]),
    ),
    "membership.remove": (
        _membership,
        lambda w, m: annotation_services.member_remove(membership=m, by=w["curator"]),
    ),
    "import.start": (
        lambda w: _upload(),
        lambda w, upload: annotation_services.import_job_create(
            project=w["project"], upload=upload, name="items.jsonl", source="upload", created_by=w["curator"]
        ),
    ),
    "curation.apply": (lambda w: None, lambda w, _: _applied(w)),
    "curation.undo": (
        _applied,
        lambda w, action: curation_services.curation_action_undo(action=action, actor=w["curator"]),
    ),
    "export.create": (
        lambda w: None,
        lambda w, _: curation_services.export_create(
            project=w["project"], user=w["curator"], filters={}, formats="raw", enqueue=False
        ),
    ),
    "reward_model.train": (
        lambda w: None,
        lambda w, _: rm_services.training_start(
            project=w["project"], config={}, created_by=w["curator"], enqueue=False
        ),
    ),
    "reward_model.make_current": (
        _succeeded_version,
        lambda w, version: rm_services.version_make_current(version=version, by=w["curator"]),
    ),
    "ai_labeler.audit": (
        _ai_labeler,
        lambda w, labeler: rm_services.audit_start(labeler=labeler, created_by=w["curator"], enqueue=False),
    ),
    "crossfit.start": (
        lambda w: None,
        lambda w, _: rm_services.crossfit_start(project=w["project"], folds=2, created_by=w["curator"], enqueue=False),
    ),
    "token.create": (
        lambda w: None,
        lambda w, _: annotation_services.token_create(user=w["curator"], name="ci", scopes=["read"]),
    ),
    "token.revoke": (
        lambda w: annotation_services.token_create(user=w["curator"], name="ci", scopes=["read"])[0],
        lambda w, token: annotation_services.token_revoke(token=token),
    ),
    "token.delete": (
        lambda w: annotation_services.token_create(user=w["curator"], name="ci", scopes=["read"])[0],
        lambda w, token: annotation_services.token_delete(token=token, by=w["curator"]),
    ),
}
# A second service path to an action: it must reach the same single call site.
MORE_ACTS = {
    "project.create (admin)": (
        "project.create",
        lambda w: Project(slug="by-admin", name="By admin", schema={"pairwise": {"strengths": ["better"]}}),
        lambda w, project: annotation_services.project_add(project=project, by=w["curator"]),
    ),
    "project.settings (routing)": (
        "project.settings",
        lambda w: None,
        lambda w, _: rm_services.routing_settings_set(
            project=w["project"],
            policy="all_ai",
            human_budget=0.4,
            calibration_share=0.05,
            require_ai_audit=False,
            by=w["curator"],
        ),
    ),
    "export.create (reproduce)": (
        "export.create",
        lambda w: curation_services.export_create(
            project=w["project"], user=w["curator"], filters={}, formats="raw", enqueue=False
        ),
        lambda w, snapshot: curation_services.export_reproduce(snapshot=snapshot, user=w["curator"], enqueue=False),
    ),
}
CASES = {name: (name, prepare, act) for name, (prepare, act) in ACTS.items()} | MORE_ACTS


def test_every_service_action_has_a_case_here() -> None:
    assert set(ACTS) == set(audit.ACTIONS) - SIGNAL_ACTIONS


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_service_action_records_one_event(case: str, world: dict[str, Any]) -> None:
    action, prepare, act = CASES[case]
    prepared = prepare(world)
    before = AuditEvent.objects.filter(action=action).count()
    act(world, prepared)
    assert AuditEvent.objects.filter(action=action).count() == before + 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failure_after_the_event_leaves_neither_the_write_nor_the_event(
    case: str, world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event is written inside the write's transaction: when anything after it fails, the
    write and the event roll back together (a write committed on its own would stay)."""
    action, prepare, act = CASES[case]
    prepared = prepare(world)
    real = audit.record
    recorded = []

    def record_then_fail(*args: Any, **kwargs: Any) -> Any:
        recorded.append(real(*args, **kwargs).action)
        raise AfterTheEventError

    before = _state()
    monkeypatch.setattr(audit, "record", record_then_fail)
    with pytest.raises(AfterTheEventError):
        act(world, prepared)
    assert recorded == [action]
    assert _state() == before
