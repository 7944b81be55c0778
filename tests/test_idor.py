"""Object-level access, route by route (IDOR): every URL of the site and every operation of the HTTP
API is tried with ids and slugs of project P by people who must not reach them (an outsider, an
annotator and a curator of another project Q, and P's annotator for curator pages); each answers
404 (an anonymous visitor: the login page, or 401 from the API), while P's curator gets through.

The routes are enumerated from the URL resolver and the API's OpenAPI schema, so a view or
endpoint added later is tried too: one whose URL takes a parameter this module cannot fill fails
with a message naming it, and new pages without an object in the URL must be listed below.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from accounts.models import ApiToken
from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, ImportJob, Item, Labeler, Membership, Project
from annotation.services import membership_set
from curation.models import ExportSnapshot
from curation.services import curation_bulk_apply
from models_srv.models import AILabelRun, DataSnapshot, RewardModelVersion
from tests.conftest import jsonl, pair_row

# Routes with no object in the URL: each is checked elsewhere (login, lists that filter by user).
NO_OBJECT_ROUTES = {
    "login",
    "logout",
    "csrf_token",  # the asking browser's own token, nothing of anyone else's
    "healthz",
    "healthz_workers",
    "favicon",
    "annotation:home",
    "annotation:project_create",
    "annotation:project_create_schema",  # the New-project page's builder: who may create projects
    "annotation:account_tokens",
}
# Pages any member of the project may open (everything else is for its curators).
MEMBER_ROUTES = {"annotation:project", "annotation:annotate"}
# Routes of an annotator's own assignment: only that annotator gets through.
ASSIGNMENT_ROUTES = {"annotation:submit", "annotation:skip"}
# Routes of a user's own object (an API token): only its owner, P's curator here.
OWNER_ROUTES = {"annotation:account_token_revoke"}
QUERY = {"curation:quality_csv": "?table=agreement"}

MEMBER_OPERATIONS = {("get", "/api/v1/projects/{slug}")}
NO_OBJECT_OPERATIONS = {("get", "/api/v1/projects"), ("post", "/api/v1/projects")}
API_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/projects/{slug}/reward-models"): {"json": {}},
    ("post", "/api/v1/projects/{slug}/ai-labelers"): {"json": {"name": "j2", "kind": "llm", "config": {"model": "m"}}},
    ("post", "/api/v1/projects/{slug}/exports"): {"json": {"formats": ["raw"]}},
}
ALL_SCOPES = ["read", "write", "train", "export"]


@dataclass
class World:
    p: Project
    q: Project
    users: dict[str, Any]
    kwargs: dict[str, Any]  # URL kwarg name -> value of an object of P
    api_params: dict[str, Any]  # OpenAPI path parameter name -> value of an object of P
    missing: dict[str, Any] = field(default_factory=dict)  # the same names -> values of no object


@pytest.fixture
def world(make_user, make_project, settings, tmp_path) -> World:
    return build_world(make_user, make_project, settings, tmp_path)


def build_world(make_user: Any, make_project: Any, settings: Any, tmp_path: Any) -> World:
    """Projects P and Q, six people, and one object of P of every kind a URL can name."""
    settings.VAR_DIR = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast users, same access
    settings.MEDIA_ROOT = tmp_path / "media"
    users = {
        "p_curator": make_user("carol"),
        "p_annotator": make_user("alice"),
        "p_annotator_2": make_user("bob"),
        "outsider": make_user("oscar", can_create=True),
        "q_curator": make_user("dan", can_create=True),
        "q_annotator": make_user("erin"),
    }
    p = make_project("p1", curator=users["p_curator"])
    q = make_project("q1", curator=users["q_curator"])
    for name in ("p_annotator", "p_annotator_2"):
        membership_set(project=p, user=users[name], role=Membership.Role.ANNOTATOR)
    membership_set(project=q, user=users["q_annotator"], role=Membership.Role.ANNOTATOR)
    import_items(project=p, fileobj=jsonl([pair_row(i) for i in range(3)]))
    import_items(project=q, fileobj=jsonl([pair_row(i) for i in range(3)]))
    item = Item.objects.filter(project=p).first()
    assignment = queue.next_assignment(project=p, user=users["p_annotator"])
    job = ImportJob.objects.create(project=p, source="api", created_by=users["p_curator"], status="succeeded")
    snapshot = DataSnapshot.objects.create(project=p, counts={"judgments": 0})
    version = RewardModelVersion.objects.create(project=p, version=1, status="failed", config={}, snapshot=snapshot)
    labeler = Labeler.objects.create(project=p, kind="llm", name="judge", config={"model": "m"})
    run = AILabelRun.objects.create(project=p, labeler=labeler, status="succeeded")
    # One action of a bulk action of one item: both the action's and the bulk's routes take its id.
    (action,) = curation_bulk_apply(project=p, item_ids=[item.id], actor=users["p_curator"], action="accept")
    code = uuid.uuid4()
    bundle = tmp_path / "exports" / f"{code}.zip"
    bundle.parent.mkdir(parents=True)
    bundle.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    export = ExportSnapshot.objects.create(
        code=code,
        project=p,
        created_by=users["p_curator"],
        formats=["raw"],
        cutoff=timezone.now(),
        status="done",
        bundle_path=bundle.name,
    )
    token = ApiToken.objects.create(user=users["p_curator"], name="t", key_hash=ApiToken.hash_key("pl_idor"))
    kwargs = {
        "slug": p.slug,
        "job_uuid": job.uuid,
        "assignment_uuid": assignment.uuid,
        "version_uuid": version.uuid,
        "labeler_id": labeler.id,
        "run_uuid": run.uuid,
        "item_id": item.id,
        "action_id": action.id,
        "code": export.code,
        "membership_id": Membership.objects.get(project=p, user=users["p_annotator"]).id,
        "token_id": token.id,
    }
    api_params = {
        "slug": p.slug,
        "job_id": job.uuid,
        "version_id": version.uuid,
        "labeler_id": labeler.id,
        "run_id": run.uuid,
        "export_id": export.code,
    }
    missing = {
        name: ("no-such-project" if name == "slug" else 987654321 if isinstance(v, int) else uuid.uuid4())
        for name, v in api_params.items()
    }
    return World(p=p, q=q, users=users, kwargs=kwargs, api_params=api_params, missing=missing)


# ---------------------------------------------------------------------------------------------
# Enumerating the routes


def _walk(patterns: list[Any], prefix: str = "", namespace: str | None = None) -> list[tuple[str, str, list[str]]]:
    out = []
    for p in patterns:
        if isinstance(p, URLResolver):
            out += _walk(p.url_patterns, prefix + str(p.pattern), p.namespace or namespace)
        elif isinstance(p, URLPattern) and p.name:
            name = f"{namespace}:{p.name}" if namespace else p.name
            out.append((name, prefix + str(p.pattern), list(p.pattern.converters)))
    return out


def site_routes() -> list[tuple[str, str, list[str]]]:
    """(name, route, kwarg names) of every page of the site; the admin and the API aside."""
    return [r for r in _walk(get_resolver().url_patterns) if not r[0].startswith(("admin:", "api:"))]


def api_operations() -> list[tuple[str, str]]:
    from config.api import api

    schema = api.get_openapi_schema()
    return [(method, path) for path, ops in schema["paths"].items() for method in ops]


OBJECT_ROUTES = [r for r in site_routes() if r[0] not in NO_OBJECT_ROUTES]
OBJECT_OPERATIONS = [op for op in api_operations() if op not in NO_OBJECT_OPERATIONS]


def test_every_route_is_either_object_scoped_or_listed() -> None:
    unlisted = [name for name, _, kwargs in site_routes() if not kwargs and name not in NO_OBJECT_ROUTES]
    assert not unlisted, f"new page(s) without an object in the URL: decide their access and list them: {unlisted}"
    stale = NO_OBJECT_ROUTES - {name for name, _, _ in site_routes()}
    assert not stale, f"listed routes that no longer exist: {stale}"
    unlisted_ops = [op for op in api_operations() if "{" not in op[1] and op not in NO_OBJECT_OPERATIONS]
    assert not unlisted_ops, f"new API operation(s) without a path parameter: check and list them: {unlisted_ops}"


# ---------------------------------------------------------------------------------------------
# Web pages


def _client(user: Any) -> Any:
    from django.test import Client

    c = Client()
    if user is not None:
        c.force_login(user)
    return c


def _url(name: str, kwargs: list[str], values: dict[str, Any]) -> str:
    unknown = [k for k in kwargs if k not in values]
    assert not unknown, f"{name}: no value for URL parameter(s) {unknown}; add an object of P to the world fixture"
    return reverse(name, kwargs={k: values[k] for k in kwargs}) + QUERY.get(name, "")


def _method(name: str, url: str, user: Any) -> str:
    """GET unless the view allows POST only."""
    return "post" if _client(user).get(url).status_code == 405 else "get"


@pytest.mark.parametrize(("name", "route", "kwargs"), OBJECT_ROUTES, ids=[r[0] for r in OBJECT_ROUTES])
def test_pages_of_project_p_answer_404_to_everyone_else(world: World, name: str, route: str, kwargs: list) -> None:
    url = _url(name, kwargs, world.kwargs)
    method = _method(name, url, world.users["outsider"])
    if name in ASSIGNMENT_ROUTES:
        allowed, denied = "p_annotator", ["p_curator", "p_annotator_2"]
    elif name in OWNER_ROUTES:
        allowed, denied = "p_curator", ["p_annotator"]
    elif name in MEMBER_ROUTES:
        allowed, denied = "p_curator", []
    else:
        allowed, denied = "p_curator", ["p_annotator"]
    denied += ["outsider", "q_curator", "q_annotator"]

    anonymous = getattr(_client(None), method)(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith(reverse("login")), (name, method)
    for who in denied:
        response = getattr(_client(world.users[who]), method)(url)
        assert response.status_code == 404, f"{name} ({method.upper()} {url}) answers {response.status_code} to {who}"
    if "slug" in kwargs and len(kwargs) > 1:
        # Q's curator with Q's own slug and P's object ids: the object must belong to the slug's project.
        mixed = _url(name, kwargs, {**world.kwargs, "slug": world.q.slug})
        response = getattr(_client(world.users["q_curator"]), method)(mixed)
        assert response.status_code == 404, f"{name}: Q's slug with P's ids answers {response.status_code}"
    if name in MEMBER_ROUTES:
        assert _client(world.users["p_annotator"]).get(url).status_code == 200, name
    response = getattr(_client(world.users[allowed]), method)(url)
    if method == "get":
        assert response.status_code == 200, f"{name} answers {response.status_code} to {allowed}"
    else:
        assert response.status_code not in (403, 404, 405), f"{name} answers {response.status_code} to {allowed}"


# ---------------------------------------------------------------------------------------------
# The HTTP API


def _api_client(user: Any) -> Any:
    from django.test import Client

    if user is None:
        return Client()
    key = ApiToken.new_key()
    ApiToken.objects.create(user=user, name="idor", key_hash=ApiToken.hash_key(key), scopes=ALL_SCOPES)
    return Client(headers={"Authorization": f"Bearer {key}"})


def _api_call(client: Any, method: str, path: str, params: dict[str, Any]) -> Any:
    names = re.findall(r"{(\w+)}", path)
    unknown = [n for n in names if n not in params]
    assert not unknown, f"{method.upper()} {path}: no value for path parameter(s) {unknown}; add one to the world"
    url = re.sub(r"{(\w+)}", lambda m: str(params[m.group(1)]), path)
    body = API_BODIES.get((method, path), {})
    if "json" in body:
        return getattr(client, method)(url, body["json"], content_type="application/json")
    if path.endswith("/imports"):
        import io

        upload = io.BytesIO(b'{"prompt": "p", "response_a": "a", "response_b": "b"}\n')
        upload.name = "x.jsonl"
        return client.post(url, {"file": upload})
    return getattr(client, method)(url)


@pytest.mark.parametrize(("method", "path"), OBJECT_OPERATIONS, ids=[f"{m} {p}" for m, p in OBJECT_OPERATIONS])
def test_api_operations_on_project_p_answer_404_to_everyone_else(world: World, method: str, path: str) -> None:
    denied = ["outsider", "q_curator", "q_annotator"]
    if (method, path) not in MEMBER_OPERATIONS:
        denied.append("p_annotator")
    assert _api_call(_api_client(None), method, path, world.api_params).status_code == 401
    # What an id of no object at all answers (404, or a 422 when the body is checked first).
    nothing = _api_call(_api_client(world.users["outsider"]), method, path, world.missing).status_code
    assert nothing in (404, 422), f"{method.upper()} {path} answers {nothing} for an id of nothing"
    for who in denied:
        response = _api_call(_api_client(world.users[who]), method, path, world.api_params)
        assert response.status_code == nothing, (
            f"{method.upper()} {path} answers {response.status_code} to {who} "
            f"(an id of nothing answers {nothing}): {response.content[:200]!r}"
        )
    response = _api_call(_api_client(world.users["p_curator"]), method, path, world.api_params)
    assert response.status_code not in (401, 403, 404, 405), (method, path, response.status_code, response.content)
    if (method, path) in MEMBER_OPERATIONS:
        response = _api_call(_api_client(world.users["p_annotator"]), method, path, world.api_params)
        assert response.status_code == 200


def test_api_lists_show_only_the_users_projects(world: World) -> None:
    for who in ("outsider", "q_curator", "q_annotator"):
        slugs = {p["slug"] for p in _api_client(world.users[who]).get("/api/v1/projects").json()}
        assert world.p.slug not in slugs, who


def test_the_admin_is_for_staff_only(world: World) -> None:
    for who in ("p_curator", "outsider"):
        response = _client(world.users[who]).get(reverse("admin:annotation_project_changelist"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_an_assignment_stays_with_its_annotator(world: World) -> None:
    """Also through the queue: nobody else is ever served another annotator's lease."""
    assignment = Assignment.objects.get(annotator=world.users["p_annotator"])
    other = queue.next_assignment(project=world.p, user=world.users["p_annotator_2"])
    assert other is None or other.uuid != assignment.uuid
