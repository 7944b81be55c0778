"""Every page of the site, run through axe-core in a real headless Chromium: none has a serious or
critical accessibility violation (a control without a name, text below the contrast ratio, a
scrolling region the keyboard cannot reach, a chart without a text alternative).

The pages are enumerated from the URL resolver, as in tests/test_idor.py: a page added later is
checked too, and a route that is not a page (a POST-only action, a download) must be listed below.
axe-core comes from npm, pinned, installed by scripts/test.sh into .venv/axe (never vendored); the
test is skipped when it is absent. It is injected through the DevTools protocol, which the pages'
Content-Security-Policy does not govern, so the pages keep their strict policy while tested.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import ImportJob, Labeler, Membership
from annotation.services import membership_set
from curation.models import ExportSnapshot
from models_srv.models import AILabelRun, DataSnapshot, RewardModelVersion
from tests.conftest import RUBRIC_SCHEMA, jsonl, login, pair_row
from tests.test_idor import site_routes

pytestmark = pytest.mark.django_db(transaction=True)

AXE = Path(__file__).resolve().parent.parent / ".venv" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
FAILING_IMPACTS = {"serious", "critical"}

# Routes that are not pages a person reads: actions (POST only), downloads, machine endpoints, and
# fragments that a page loads into itself (checked as part of that page).
NOT_PAGES = {
    "annotation:import_jobs",
    "favicon",
    "logout",
    "csrf_token",
    "healthz",
    "healthz_workers",
    "annotation:project_create_schema",
    "annotation:project_settings_schema",
    "annotation:import_upload",
    "annotation:submit",
    "annotation:skip",
    "annotation:member_add",
    "annotation:member_role",
    "annotation:member_remove",
    "annotation:account_token_revoke",
    "curation:quality_csv",
    "curation:chart_csv",
    "curation:review_crossfit",
    "curation:review_act",
    "curation:review_undo",
    "curation:review_bulk",
    "curation:review_bulk_undo",
    "curation:groups_place",
    "curation:export_download",
    "curation:export_reproduce",
    "models_srv:train",
    "models_srv:cancel",
    "models_srv:current",
    "models_srv:rescore",
    "models_srv:routing_run",
    "models_srv:labeler_add",
    "models_srv:labeler_run",
    "models_srv:labeler_audit",
    "models_srv:ai_run_cancel",
}
# Pages an annotator sees (checked as one, for each kind of project); the rest as the curator.
ANNOTATOR_PAGES = {"annotation:annotate", "annotation:home", "annotation:project"}
ANONYMOUS_PAGES = {"login"}

RANKING_SCHEMA = {"ranking": {"k": 3, "allow_ties": True}}
# Texts long enough that the responses and the guidelines scroll in their boxes.
LONG = "\n\n".join(f"Paragraph {i} of a long answer, which goes on for a while." for i in range(60))


def _world(make_user: Any, make_project: Any, settings: Any, tmp_path: Path) -> dict[str, Any]:
    """A pairwise, a ranking and a fine-grained project with judgments, and one object of every kind
    a page shows: an import job, a reward-model version, an AI labeler and its run, an export."""
    settings.VAR_DIR = tmp_path
    curator = make_user("cura", can_create=True)
    annotator = make_user("ann")
    pairwise = make_project("pw", curator=curator, guidelines=LONG)
    ranking = make_project("rk", curator=curator, schema=RANKING_SCHEMA, guidelines=LONG)
    fine = make_project("fg", curator=curator, schema=RUBRIC_SCHEMA)
    for p in (pairwise, ranking, fine):
        membership_set(project=p, user=annotator, role=Membership.Role.ANNOTATOR)
    rows = [pair_row(i, model_a=f"model-{i % 3}", model_b=f"model-{(i + 1) % 3}", response_a=LONG) for i in range(8)]
    import_items(project=pairwise, fileobj=jsonl(rows))
    import_items(
        project=ranking,
        fileobj=jsonl([{"id": f"k{i}", "prompt": f"Rank {i}", "responses": [LONG, "two", LONG]} for i in range(4)]),
    )
    import_items(project=fine, fileobj=jsonl([pair_row(i, response_b=LONG) for i in range(4)]))
    for i in range(3):
        for user in (curator, annotator):
            a = queue.next_assignment(project=pairwise, user=user)
            choice = "A" if i % 2 else "B"
            queue.submit(assignment_id=a.id, user=user, payload={"pairwise": {"choice": choice, "strength": 1}})
    a = queue.next_assignment(project=ranking, user=curator)
    queue.submit(assignment_id=a.id, user=curator, payload={"ranking": [1, 2, 3]})

    snapshot = DataSnapshot.objects.create(project=pairwise, counts={"judgments": 6})
    metrics = {"pairwise": {"accuracy": 0.75, "n": 4, "ties_excluded": 0, "ece": 0.1, "mean_uncertainty": 0.2}}
    version = RewardModelVersion.objects.create(
        project=pairwise, version=1, status="succeeded", config={}, snapshot=snapshot, metrics=metrics
    )
    labeler = Labeler.objects.create(project=pairwise, kind="llm", name="judge", config={"model": "m"})
    run = AILabelRun.objects.create(project=pairwise, labeler=labeler, status="succeeded")
    code = uuid.uuid4()
    bundle = tmp_path / "exports" / f"{code}.zip"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    export = ExportSnapshot.objects.create(
        code=code,
        project=pairwise,
        created_by=curator,
        formats=["raw"],
        cutoff=timezone.now(),
        status="done",
        bundle_path=bundle.name,
        counts={"rows": 6},
        files=[{"name": "raw.jsonl", "format": "raw", "split": "all", "kind": "data", "bytes": 10, "rows": 6}],
    )
    job = ImportJob.objects.filter(project=pairwise).first() or ImportJob.objects.create(
        project=pairwise, source="api", created_by=curator, status="succeeded"
    )
    return {
        "projects": (pairwise, ranking, fine),
        "kwargs": {
            "slug": pairwise.slug,
            "job_uuid": job.uuid,
            "version_uuid": version.uuid,
            "labeler_id": labeler.id,
            "run_uuid": run.uuid,
            "code": export.code,
        },
    }


def _pages(world: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(anonymous, annotator, curator) paths: every page route, filled with the world's objects."""
    anonymous, as_annotator, as_curator = [], [], []
    for name, _, kwargs in site_routes():
        if name in NOT_PAGES:
            continue
        if name in ANNOTATOR_PAGES and "slug" in kwargs:
            for p in world["projects"]:  # one of each kind: pairwise, ranking, fine-grained
                as_annotator.append(reverse(name, kwargs={"slug": p.slug}))
            continue
        path = reverse(name, kwargs={k: world["kwargs"][k] for k in kwargs})
        (anonymous if name in ANONYMOUS_PAGES else as_annotator if name in ANNOTATOR_PAGES else as_curator).append(path)
    return anonymous, as_annotator, as_curator


def _axe(page: Any, source: str) -> list[dict[str, Any]]:
    page.wait_for_load_state("networkidle")
    page.evaluate(source)
    return page.evaluate(
        """async () => {
            const r = await axe.run(document, {resultTypes: ['violations']});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                targets: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
        }"""
    )


def _check(page: Any, source: str, path: str, found: list[tuple[str, dict[str, Any]]]) -> None:
    response = page.goto(path)
    assert response.status == 200 and page.url.endswith(path), f"{path}: {response.status} at {page.url}"
    found += [(path, v) for v in _axe(page, source)]


@pytest.mark.skipif(not AXE.exists(), reason=f"axe-core is not installed at {AXE} (scripts/test.sh installs it)")
def test_no_page_has_a_serious_accessibility_violation(page, make_user, make_project, settings, tmp_path) -> None:
    source = AXE.read_text()
    world = _world(make_user, make_project, settings, tmp_path)
    anonymous, as_annotator, as_curator = _pages(world)
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if m.type == "error" else None)

    found: list[tuple[str, dict[str, Any]]] = []
    for path in anonymous:
        _check(page, source, path, found)
    login(page, "ann", "ann-pw-123")
    for path in as_annotator:
        _check(page, source, path, found)
        if "/annotate" in path:  # the guidelines and the keyboard help, opened over the item
            page.keyboard.press("g")
            page.wait_for_selector("#guidelines", state="visible")
            found += [(f"{path} (guidelines open)", v) for v in _axe(page, source)]
            page.keyboard.press("?")
            page.wait_for_selector("#help", state="visible")
            found += [(f"{path} (help open)", v) for v in _axe(page, source)]
    page.context.clear_cookies()
    login(page, "cura", "cura-pw-123")
    for path in as_curator:
        _check(page, source, path, found)

    assert len(anonymous) + len(as_annotator) + len(as_curator) >= 20
    assert not csp_errors, csp_errors  # the injected script ran without tripping the page's policy
    serious = [(p, v) for p, v in found if v["impact"] in FAILING_IMPACTS]
    lines = [f"{p}: {v['id']} ({v['impact']}): {v['help']} at {v['targets']}" for p, v in found]
    assert not serious, "serious or critical accessibility violations:\n" + "\n".join(lines)


def test_routes_listed_as_not_pages_exist() -> None:
    """Every other route is visited above (a new page without a way to fill its URL fails there)."""
    names = {name for name, _, _ in site_routes()}
    stale = NOT_PAGES - names
    assert not stale, f"listed routes that no longer exist: {stale}"
