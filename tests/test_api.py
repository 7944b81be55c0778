"""The HTTP API: token auth, project creation, item import through a background job, judgments and
items, reward-model metrics, exports, odd input answered 4xx, and 404 for every id of someone else's
project."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.test import Client

from accounts.models import ApiToken
from annotation.models import ImportJob, Item, Judgment, Labeler, Project
from annotation.queue import human_labeler
from annotation.services import import_job_run

ALL_SCOPES = ["read", "write", "train", "export"]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """The personas' passwords are hashed with PBKDF2 otherwise: a quarter second per user, in every
    one of this module's many parametrized tests. No test here logs in with a password."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def token_for(user, scopes: list[str] | None = None) -> str:
    """A key for `user` (every scope unless given)."""
    key = ApiToken.new_key()
    ApiToken.objects.create(
        user=user, name="test", key_hash=ApiToken.hash_key(key), scopes=ALL_SCOPES if scopes is None else scopes
    )
    return key


def api(user, scopes: list[str] | None = None) -> Client:
    return Client(headers={"Authorization": f"Bearer {token_for(user, scopes)}"})


def build_world(project: Project, *, curator: Any, annotator: Any, export: bool = True) -> dict[str, Any]:
    """A project with something behind every id the API takes: items, human, imported and AI
    judgments, an import job, a reward-model version, an AI labeler with a run, a finished export."""
    from curation.services import export_create, export_run
    from models_srv.labeling import labeler_create, run_start
    from models_srv.models import DataSnapshot, RewardModelVersion

    items = [
        Item.objects.create(
            project=project,
            external_id=f"item-{i}",
            prompt=f"Question {i}?",
            responses=[{"text": f"Answer A{i}", "model": "big"}, {"text": f"Answer B{i}", "model": "small"}],
            num_responses=2,
            split="eval" if i == 3 else "train",
        )
        for i in range(4)
    ]
    person = human_labeler(annotator)
    imported = Labeler.objects.create(kind=Labeler.Kind.IMPORTED, project=project, name="ann1")
    ai = labeler_create(
        project=project, kind="llm", name="judge", config={"base_url": "http://127.0.0.1:9", "model": "m"}
    )
    for i, item in enumerate(items):
        Judgment.objects.create(
            item=item,
            labeler=person,
            payload={"pairwise": {"choice": "A", "strength": 2}},
            schema_version=1,
            guidelines_version=1,
            response_order=[1, 0],
            time_spent_ms=1500 + i,
        )
        Judgment.objects.create(
            item=item,
            labeler=imported,
            payload={"pairwise": {"choice": "B" if i % 2 else "A", "strength": 1}},
            schema_version=1,
        )
    Judgment.objects.create(
        item=items[0],
        labeler=ai,
        payload={"pairwise": {"choice": "tie", "strength": 0}},
        schema_version=1,
        confidence=0.7,
    )
    snapshot = DataSnapshot.objects.create(project=project, counts={"judgments": 8})
    version = RewardModelVersion.objects.create(
        project=project,
        version=1,
        config={"mode": "frozen"},
        snapshot=snapshot,
        status="succeeded",
        is_current=True,
        metrics={"pairwise": {"accuracy": 0.75}},
    )
    run = run_start(project=project, labeler=ai, created_by=curator, enqueue=False)
    job = ImportJob.objects.create(project=project, source="api", created_by=curator)
    world: dict[str, Any] = {"items": items, "ai": ai, "version": version, "run": run, "job": job}
    if export:
        done = export_create(project=project, user=curator, filters={}, formats=["pairs", "raw"], enqueue=False)
        export_run(snapshot_id=done.id)
        done.refresh_from_db()
        world["export"] = done
        world["pending_export"] = export_create(
            project=project, user=curator, filters={}, formats=["raw"], enqueue=False
        )
    return world


SPEC = {"slug": "via-api", "name": "Via API", "schema": {"pairwise": {}}, "overlap": 2}


def test_requests_without_a_valid_token_are_refused(db) -> None:
    assert Client().get("/api/v1/projects").status_code == 401
    assert Client(headers={"Authorization": "Bearer pl_nope"}).get("/api/v1/projects").status_code == 401


def test_revoked_tokens_stop_working(curator) -> None:
    from django.utils import timezone

    key = token_for(curator)
    c = Client(headers={"Authorization": f"Bearer {key}"})
    assert c.get("/api/v1/projects").status_code == 200
    ApiToken.objects.update(revoked_at=timezone.now())
    assert c.get("/api/v1/projects").status_code == 401


def test_create_project_then_import_and_poll(curator, django_capture_on_commit_callbacks) -> None:
    c = api(curator)
    created = c.post("/api/v1/projects", SPEC, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["judgment_schema"]["pairwise"]["strengths"] == ["better", "much better"]

    upload = io.BytesIO(b'{"id": "1", "prompt": "p", "response_a": "a", "response_b": "b", "label": "B"}\n')
    upload.name = "items.jsonl"
    with django_capture_on_commit_callbacks() as callbacks:
        started = c.post("/api/v1/projects/via-api/imports", {"file": upload})
    assert started.status_code == 202, started.content
    assert len(callbacks) == 1  # the job is queued only once the upload is committed
    job = ImportJob.objects.get(uuid=started.json()["id"])
    import_job_run(job_id=job.id)  # what the worker does; the real worker runs it in test_worker.py
    polled = c.get(f"/api/v1/imports/{job.uuid}").json()
    assert (polled["status"], polled["items_created"], polled["judgments_created"]) == ("succeeded", 1, 1)
    assert c.get("/api/v1/projects/via-api").json()["item_count"] == 1


def test_a_refused_import_reports_its_line_errors(project: Project, curator) -> None:
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n{"prompt": "p"}\n')
    upload.name = "bad.jsonl"
    started = api(curator).post(f"/api/v1/projects/{project.slug}/imports", {"file": upload})
    job = ImportJob.objects.get(uuid=started.json()["id"])
    import_job_run(job_id=job.id)
    polled = api(curator).get(f"/api/v1/imports/{job.uuid}").json()
    assert polled["status"] == "failed"
    assert polled["errors"] == ["line 2: missing responses: give response_a/response_b, responses, or chosen/rejected"]
    assert project.items.count() == 0


def test_a_job_runs_once_even_if_delivered_twice(project: Project, curator) -> None:
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "x.jsonl"
    started = api(curator).post(f"/api/v1/projects/{project.slug}/imports", {"file": upload})
    job = ImportJob.objects.get(uuid=started.json()["id"])
    assert import_job_run(job_id=job.id) is not None
    assert import_job_run(job_id=job.id) is None


@pytest.mark.parametrize("who", ["outsider", "annotator"])
def test_other_projects_answer_404_through_the_api(project: Project, request, who: str) -> None:
    c = api(request.getfixturevalue(who))
    upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
    upload.name = "x.jsonl"
    assert c.post(f"/api/v1/projects/{project.slug}/imports", {"file": upload}).status_code == 404
    job = ImportJob.objects.create(project=project, source="api")
    assert c.get(f"/api/v1/imports/{job.uuid}").status_code == 404
    if who == "outsider":
        assert c.get(f"/api/v1/projects/{project.slug}").status_code == 404
        assert c.get("/api/v1/projects").json() == []


def test_invalid_specs_get_a_422_with_the_reason(curator, annotator) -> None:
    bad = {**SPEC, "schema": {"ranking": {"k": 1}}}
    response = api(curator).post("/api/v1/projects", bad, content_type="application/json")
    assert response.status_code == 422
    assert "greater than or equal to 2" in str(response.json()["detail"])
    assert api(annotator).post("/api/v1/projects", SPEC, content_type="application/json").status_code == 403


def test_the_openapi_schema_is_served(db) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    assert "/api/v1/projects/{slug}/imports" in schema["paths"]


# ---------------------------------------------------------------------------------------------
# Judgments and items


@pytest.fixture
def world(project: Project, curator, annotator, settings, tmp_path) -> dict[str, Any]:
    settings.VAR_DIR = tmp_path / "var"
    return build_world(project, curator=curator, annotator=annotator)


def test_curators_read_judgments_with_pseudonyms_filters_and_pages(project: Project, world, curator, annotator) -> None:
    from curation.export import pseudonym

    c = api(curator, ["read"])
    body = c.get(f"/api/v1/projects/{project.slug}/judgments").json()
    rows = body["results"]
    assert len(rows) == 9 and body["next_after"] is None
    first = rows[0]
    person = Labeler.objects.get(user=annotator)
    assert first["item"] == "item-0" and first["labeler"] == pseudonym(project.slug, person.id)
    assert (first["labeler_kind"], first["labeler_type"], first["labeler_name"]) == ("human", "human", None)
    assert (first["choice"], first["strength"], first["response_order"]) == ("A", 2, [1, 0])
    assert (first["time_spent_ms"], first["schema_version"], first["guidelines_version"]) == (1500, 1, 1)
    assert first["payload"] == {"pairwise": {"choice": "A", "strength": 2}}
    assert annotator.username not in str(body)  # people are pseudonymous, even to curators

    ai = c.get(f"/api/v1/projects/{project.slug}/judgments", {"labeler_kind": "ai"}).json()["results"]
    assert [(r["labeler_name"], r["labeler_version"], r["confidence"]) for r in ai] == [("judge", 1, 0.7)]
    human = c.get(f"/api/v1/projects/{project.slug}/judgments", {"labeler_kind": "human"}).json()["results"]
    assert len(human) == 4 and {(r["labeler_kind"], r["labeler_type"]) for r in human} == {("human", "human")}
    imported = c.get(f"/api/v1/projects/{project.slug}/judgments", {"labeler_kind": "imported"}).json()["results"]
    assert len(imported) == 4 and {(r["labeler_kind"], r["labeler_type"]) for r in imported} == {
        ("imported", "imported")
    }
    one = c.get(f"/api/v1/projects/{project.slug}/judgments", {"item": "item-2"}).json()["results"]
    assert {r["item"] for r in one} == {"item-2"} and len(one) == 2
    Judgment.objects.filter(item__external_id="item-3").update(created_at="2031-01-01T00:00:00Z")
    recent = c.get(f"/api/v1/projects/{project.slug}/judgments", {"since": "2030-06-01T00:00:00"}).json()["results"]
    assert {r["item"] for r in recent} == {"item-3"}

    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 4, **({"after": after} if after is not None else {})}
        page = c.get(f"/api/v1/projects/{project.slug}/judgments", params).json()
        seen += [r["id"] for r in page["results"]]
        pages += 1
        after = page["next_after"]
        if after is None:
            break
    assert pages == 3 and seen == [r["id"] for r in rows]


def test_judgments_and_items_are_for_curators(project: Project, world, annotator) -> None:
    c = api(annotator)
    assert c.get(f"/api/v1/projects/{project.slug}").status_code == 200  # a member sees the project
    assert c.get(f"/api/v1/projects/{project.slug}/judgments").status_code == 404
    assert c.get(f"/api/v1/projects/{project.slug}/items").status_code == 404


def test_items_are_listed_with_status_split_and_route(project: Project, world, curator) -> None:
    c = api(curator, ["read"])
    items = c.get(f"/api/v1/projects/{project.slug}/items").json()["results"]
    assert [i["external_id"] for i in items] == ["item-0", "item-1", "item-2", "item-3"]
    assert items[0]["responses"][0] == {"text": "Answer A0", "model": "big"}
    assert (items[0]["status"], items[0]["split"], items[0]["route"]) == ("open", "train", "human")
    held_out = c.get(f"/api/v1/projects/{project.slug}/items", {"split": "eval"}).json()["results"]
    assert [i["external_id"] for i in held_out] == ["item-3"]
    page = c.get(f"/api/v1/projects/{project.slug}/items", {"limit": 3}).json()
    rest = c.get(f"/api/v1/projects/{project.slug}/items", {"after": page["next_after"]}).json()
    assert len(page["results"]) == 3 and [i["external_id"] for i in rest["results"]] == ["item-3"]
    assert c.get(f"/api/v1/projects/{project.slug}/items", {"status": "nonsense"}).status_code == 422


def test_list_queries_do_not_grow_with_rows(project: Project, world, curator, django_assert_max_num_queries) -> None:
    c = api(curator, ["read"])
    with django_assert_max_num_queries(6):  # token, its last use, project, rows (+ savepoints)
        assert len(c.get(f"/api/v1/projects/{project.slug}/judgments").json()["results"]) == 9
    with django_assert_max_num_queries(6):
        assert len(c.get(f"/api/v1/projects/{project.slug}/items").json()["results"]) == 4
    with django_assert_max_num_queries(6):
        assert len(c.get(f"/api/v1/projects/{project.slug}/exports").json()) == 2


def test_reward_model_versions_carry_their_metrics(project: Project, world, curator) -> None:
    c = api(curator, ["read"])
    listed = c.get(f"/api/v1/projects/{project.slug}/reward-models").json()
    assert listed[0]["metrics"] == {"pairwise": {"accuracy": 0.75}} and listed[0]["is_current"]
    one = c.get(f"/api/v1/reward-models/{world['version'].uuid}").json()
    assert one["metrics"]["pairwise"]["accuracy"] == 0.75


# ---------------------------------------------------------------------------------------------
# Exports


def test_an_export_through_the_api_from_start_to_download(
    project: Project, world, curator, django_capture_on_commit_callbacks
) -> None:
    import hashlib
    import zipfile

    from curation.services import export_run

    c = api(curator, ["read", "export"])
    body = {
        "filters": {"label_source": "human", "splits": ["train"]},
        "formats": ["pairs", "raw"],
        "license": "CC-BY-4.0",
    }
    with django_capture_on_commit_callbacks() as callbacks:
        started = c.post(f"/api/v1/projects/{project.slug}/exports", body, content_type="application/json")
    assert started.status_code == 202, started.content
    assert len(callbacks) == 1  # queued for the worker once the snapshot is committed
    export = started.json()
    assert (export["status"], export["formats"], export["license"], export["bundle"]) == (
        "pending",
        ["pairs", "raw"],
        "CC-BY-4.0",
        None,
    )
    assert export["filters"]["splits"] == ["train"]
    assert c.get(f"/api/v1/exports/{export['id']}/download").status_code == 409  # not built yet

    from curation.models import ExportSnapshot

    export_run(snapshot_id=ExportSnapshot.objects.get(code=export["id"]).id)  # what the worker does
    done = c.get(f"/api/v1/exports/{export['id']}").json()
    assert done["status"] == "done" and done["counts"] and done["finished_at"]
    assert {f["name"] for f in done["files"]} >= {"pairs/train.jsonl", "raw/train.jsonl"}
    download = c.get(done["bundle"]["url"])
    assert download.status_code == 200
    data = b"".join(download.streaming_content)
    assert hashlib.sha256(data).hexdigest() == done["bundle"]["sha256"] and len(data) == done["bundle"]["bytes"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert any(n.endswith("raw/train.jsonl") for n in zf.namelist())
    listed = c.get(f"/api/v1/projects/{project.slug}/exports").json()
    assert export["id"] in [e["id"] for e in listed]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"formats": ["ranking"]}, "formats"),
        ({"formats": []}, "formats"),
        ({"formats": ["listwise"]}, "needs a ranking question"),
        ({"formats": ["raw"], "filters": {"label_source": "robots"}}, "label_source"),
        ({"formats": ["raw"], "filters": {"date_from": "2025-02-01", "date_to": "2025-01-01"}}, "date_from is after"),
        ({"formats": ["raw"], "filters": {"labelers": [987654321]}}, "labeler"),
        ({"formats": ["raw"], "filters": {"colour": "red"}}, "colour"),
    ],
)
def test_bad_exports_are_refused_with_the_reason(project: Project, world, curator, body, reason: str) -> None:
    response = api(curator).post(f"/api/v1/projects/{project.slug}/exports", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert reason in str(response.json()["detail"])


def test_a_failed_export_does_not_download(project: Project, world, curator) -> None:
    from curation.models import ExportSnapshot

    failed = ExportSnapshot.objects.create(
        project=project, formats=["raw"], cutoff=world["export"].cutoff, status="failed"
    )
    c = api(curator)
    assert c.get(f"/api/v1/exports/{failed.code}").json()["bundle"] is None
    response = c.get(f"/api/v1/exports/{failed.code}/download")
    assert response.status_code == 409 and "failed" in response.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Object-level access: every id of a project the caller does not belong to (or does not curate)
# answers 404, whoever asks and whatever the scope.

ENDPOINTS = [
    ("get", "/api/v1/projects/{slug}", None),
    ("post", "/api/v1/projects/{slug}/imports", "upload"),
    ("get", "/api/v1/imports/{job}", None),
    ("get", "/api/v1/projects/{slug}/judgments", None),
    ("get", "/api/v1/projects/{slug}/items", None),
    ("get", "/api/v1/projects/{slug}/reward-models", None),
    ("post", "/api/v1/projects/{slug}/reward-models", {}),
    ("get", "/api/v1/reward-models/{version}", None),
    ("post", "/api/v1/reward-models/{version}/cancel", None),
    ("post", "/api/v1/reward-models/{version}/make-current", None),
    ("post", "/api/v1/reward-models/{version}/rescore", None),
    ("get", "/api/v1/projects/{slug}/ai-labelers", None),
    ("post", "/api/v1/projects/{slug}/ai-labelers", {"name": "j", "kind": "llm", "config": {"model": "m"}}),
    ("post", "/api/v1/ai-labelers/{labeler}/runs", None),
    ("get", "/api/v1/ai-runs/{run}", None),
    ("get", "/api/v1/projects/{slug}/exports", None),
    ("post", "/api/v1/projects/{slug}/exports", {"formats": ["raw"]}),
    ("get", "/api/v1/exports/{export}", None),
    ("get", "/api/v1/exports/{export}/download", None),
]


def call(client: Client, method: str, template: str, body: Any, ids: dict[str, Any]) -> Any:
    url = template.format(**ids)
    if body == "upload":
        upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
        upload.name = "x.jsonl"
        return client.post(url, {"file": upload})
    if method == "get":
        return client.get(url)
    return client.post(url, body or {}, content_type="application/json")


def world_ids(project: Project, world: dict[str, Any]) -> dict[str, Any]:
    return {
        "slug": project.slug,
        "job": world["job"].uuid,
        "version": world["version"].uuid,
        "labeler": world["ai"].id,
        "run": world["run"].uuid,
        "export": world["export"].code,
    }


@pytest.mark.parametrize("who", ["outsider", "annotator", "other_curator"])
@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS])
def test_another_projects_ids_answer_404(
    project: Project, world, request, make_project, make_user, who: str, method: str, template: str, body: Any
) -> None:
    if who == "other_curator":
        user = make_user("olga", can_create=True)
        make_project("theirs", curator=user)  # curates a project of their own, not this one
    else:
        user = request.getfixturevalue(who)
    if who == "annotator" and template == "/api/v1/projects/{slug}":
        pytest.skip("an annotator of the project may read the project itself")
    response = call(api(user), method, template, body, world_ids(project, world))
    assert response.status_code == 404, (response.status_code, response.content[:200])


@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS])
def test_the_curator_reaches_every_endpoint(
    project: Project, world, curator, method: str, template: str, body: Any
) -> None:
    response = call(api(curator), method, template, body, world_ids(project, world))
    assert response.status_code < 500 and response.status_code not in (401, 403, 404), response.content[:300]


# ---------------------------------------------------------------------------------------------
# Odd input is the client's mistake: 4xx, never 5xx


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/projects/no%20such%20slug", 404),
        ("/api/v1/projects/%00", 404),
        ("/api/v1/projects/" + "x" * 5000, 404),
        ("/api/v1/imports/not-a-uuid", 404),
        ("/api/v1/reward-models/00000000-0000-0000-0000-000000000000", 404),
        ("/api/v1/exports/12345", 404),
        ("/api/v1/ai-runs/%E2%98%83", 404),
        ("/api/v1/projects/p1/judgments?after=99999999999999999999999", 422),
        ("/api/v1/projects/p1/judgments?after=-1", 422),
        ("/api/v1/projects/p1/judgments?limit=0", 422),
        ("/api/v1/projects/p1/judgments?since=0001-01-01T00:00:00%2B14:00", 422),
        ("/api/v1/projects/p1/judgments?since=9999-12-31T23:59:59-14:00", 422),
        ("/api/v1/projects/p1/judgments?item=%00", 422),
        ("/api/v1/projects/p1/judgments?labeler_kind=robot", 422),
        ("/api/v1/projects/p1/exports?limit=100000", 422),
    ],
)
def test_odd_urls_answer_4xx(project: Project, curator, path: str, status: int) -> None:
    assert api(curator).get(path).status_code == status


def test_a_huge_labeler_id_is_not_found(project: Project, curator) -> None:
    assert api(curator).post(f"/api/v1/ai-labelers/{10**30}/runs").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"slug": "x", "name": NaN, "schema": {"pairwise": {}}}', 400),
        (b'{"slug": "x", "name": "x\\u0000y", "schema": {"pairwise": {}}}', 400),
        (b"[1, 2, 3]", 422),
        (b'{"slug": "x", "name": "x", "schema": {"pairwise": {}}, "autotrain_after": 99999999999999}', 422),
        (b'{"slug": "Bad Slug", "name": "x", "schema": {"pairwise": {}}}', 422),
        (b'{"slug": "x", "name": "x", "schema": {"pairwise": {}}, "members": [{"username": "nobody"}]}', 422),
    ],
)
def test_odd_bodies_answer_4xx(curator, body: bytes, status: int) -> None:
    response = api(curator).post("/api/v1/projects", body, content_type="application/json")
    assert response.status_code == status, response.content


def test_a_training_seed_out_of_range_is_422(project: Project, world, curator) -> None:
    url = f"/api/v1/projects/{project.slug}/reward-models"
    response = api(curator).post(url, {"seed": 2**40}, content_type="application/json")
    assert response.status_code == 422


# ---------------------------------------------------------------------------------------------
# The browser session works too, but unsafe methods need the CSRF token


def test_session_calls_need_the_csrf_token(curator) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(curator)
    assert c.get("/api/v1/projects").status_code == 200
    refused = c.post("/api/v1/projects", SPEC, content_type="application/json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert not Project.objects.filter(slug=SPEC["slug"]).exists()
    c.get("/account/tokens")  # any page sets the CSRF cookie
    token = c.cookies["csrftoken"].value
    created = c.post("/api/v1/projects", SPEC, content_type="application/json", headers={"X-CSRFToken": token})
    assert created.status_code == 201, created.content


def test_a_bad_token_is_not_rescued_by_the_session(curator) -> None:
    c = Client(headers={"Authorization": "Bearer pl_wrong"})
    c.force_login(curator)
    assert c.get("/api/v1/projects").status_code == 401
