"""API tokens: scopes enforced per operation, revocation, the account page that makes and revokes
them (the key shown once), and the create_api_token command."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from accounts.auth import SCOPES, parse_scopes
from accounts.models import ApiToken
from annotation.models import Project
from annotation.services import token_create
from tests.test_api import ENDPOINTS, build_world, call, world_ids


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def bearer(key: str) -> Client:
    return Client(headers={"Authorization": f"Bearer {key}"})


def key_with(user: Any, scopes: list[str]) -> str:
    return token_create(user=user, name="t", scopes=scopes)[1]


@pytest.fixture
def world(project: Project, curator: Any, annotator: Any, settings: Any, tmp_path: Any) -> dict[str, Any]:
    settings.VAR_DIR = tmp_path / "var"
    return build_world(project, curator=curator, annotator=annotator)


# ---------------------------------------------------------------------------------------------
# Scopes

NEEDS = {
    "get /api/v1/exports/{export}/download": "export",
    "post /api/v1/projects/{slug}/exports": "export",
    "post /api/v1/projects/{slug}/imports": "write",
    "post /api/v1/projects/{slug}/reward-models": "train",
    "post /api/v1/reward-models/{version}/cancel": "train",
    "post /api/v1/reward-models/{version}/make-current": "train",
    "post /api/v1/reward-models/{version}/rescore": "train",
    "post /api/v1/projects/{slug}/ai-labelers": "train",
    "post /api/v1/ai-labelers/{labeler}/runs": "train",
}


def needed(method: str, template: str) -> str:
    return NEEDS.get(f"{method} {template}", "read")


@pytest.mark.parametrize(("method", "template", "body"), ENDPOINTS, ids=[f"{m} {t}" for m, t, _ in ENDPOINTS])
def test_each_operation_needs_its_scope(
    project: Project, world: dict[str, Any], curator: Any, method: str, template: str, body: Any
) -> None:
    scope = needed(method, template)
    ids = world_ids(project, world)
    others = [s for s in SCOPES if s not in (scope, "read")]
    if scope != "read":
        refused = call(bearer(key_with(curator, others)), method, template, body, ids)
        assert refused.status_code == 403, refused.content[:200]
        assert f"lacks the '{scope}' scope" in refused.json()["detail"]
    allowed = call(bearer(key_with(curator, [scope])), method, template, body, ids)
    assert allowed.status_code not in (401, 403), allowed.content[:200]


def test_creating_a_project_needs_write(curator: Any) -> None:
    spec = {"slug": "tok", "name": "Tok", "schema": {"pairwise": {}}}
    refused = bearer(key_with(curator, ["read", "train", "export"])).post(
        "/api/v1/projects", spec, content_type="application/json"
    )
    assert refused.status_code == 403 and "'write'" in refused.json()["detail"]
    assert not Project.objects.filter(slug="tok").exists()
    created = bearer(key_with(curator, ["write"])).post("/api/v1/projects", spec, content_type="application/json")
    assert created.status_code == 201


def test_a_token_without_scopes_only_reads(project: Project, curator: Any) -> None:
    """Tokens made before scopes existed (or in the admin, with none ticked) are read-only."""
    key = ApiToken.new_key()
    ApiToken.objects.create(user=curator, name="legacy", key_hash=ApiToken.hash_key(key), scopes=[])
    c = bearer(key)
    assert c.get(f"/api/v1/projects/{project.slug}").status_code == 200
    assert (
        c.post(f"/api/v1/projects/{project.slug}/reward-models", {}, content_type="application/json").status_code == 403
    )
    ApiToken.objects.filter(name="legacy").update(scopes=["train", "no-such-scope", 7])
    assert c.get(f"/api/v1/projects/{project.slug}").status_code == 200  # odd stored values are ignored


def test_a_scope_does_not_widen_access(project: Project, world: dict[str, Any], outsider: Any) -> None:
    c = bearer(key_with(outsider, list(SCOPES)))
    assert c.get(f"/api/v1/exports/{world['export'].code}/download").status_code == 404


def test_scopes_are_parsed_and_checked() -> None:
    assert parse_scopes("export, write") == ["read", "write", "export"]
    assert parse_scopes([]) == ["read"]
    with pytest.raises(ValueError, match="unknown scope"):
        parse_scopes(["admin"])


# ---------------------------------------------------------------------------------------------
# Authentication


def test_revoked_unknown_and_inactive_tokens_answer_401(project: Project, curator: Any) -> None:
    from annotation.services import token_revoke

    token, key = token_create(user=curator, name="ci", scopes=["read"])
    c = bearer(key)
    assert c.get("/api/v1/projects").status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    token_revoke(token=token)
    assert c.get("/api/v1/projects").status_code == 401
    assert bearer(ApiToken.PREFIX + "x" * 43).get("/api/v1/projects").status_code == 401
    assert Client(headers={"Authorization": "Basic Zm9vOmJhcg=="}).get("/api/v1/projects").status_code == 401
    _, other = token_create(user=curator, name="ci2", scopes=["read"])
    curator.is_active = False
    curator.save()
    assert bearer(other).get("/api/v1/projects").status_code == 401


def test_only_a_hash_is_stored(curator: Any) -> None:
    token, key = token_create(user=curator, name="ci", scopes=["read"])
    assert key.startswith("pl_") and len(key) > 40
    assert key not in str(ApiToken.objects.filter(pk=token.pk).values().get())


# ---------------------------------------------------------------------------------------------
# The account page


def test_the_token_page_needs_a_login(db: None) -> None:
    response = Client().get("/account/tokens")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_create_a_token_in_the_browser_see_the_key_once_and_revoke_it(project: Project, curator: Any) -> None:
    c = Client(enforce_csrf_checks=True)
    c.force_login(curator)
    page = c.get("/account/tokens")
    assert page.status_code == 200 and "No tokens yet" in page.content.decode()
    assert page["Cache-Control"].startswith("max-age=0") or "no-cache" in page["Cache-Control"]
    csrf = c.cookies["csrftoken"].value
    assert c.post("/account/tokens", {"name": "nightly", "scopes": ["export"]}).status_code == 403  # no CSRF token

    created = c.post("/account/tokens", {"name": "nightly", "scopes": ["export"], "csrfmiddlewaretoken": csrf})
    assert created.status_code == 200
    token = ApiToken.objects.get(user=curator, name="nightly")
    assert token.scopes == ["read", "export"]
    html = created.content.decode()
    key = html.split('id="new-token-key" class="mono"')[0].rsplit('value="', 1)[1].split('"', 1)[0]
    assert ApiToken.hash_key(key) == token.key_hash
    assert bearer(key).get(f"/api/v1/projects/{project.slug}/exports").status_code == 200

    again = c.get("/account/tokens").content.decode()
    assert "nightly" in again and key not in again  # shown once, never again

    revoke = f"/account/tokens/{token.pk}/revoke"
    assert c.get(revoke).status_code == 405
    assert c.post(revoke).status_code == 403  # CSRF
    done = c.post(revoke, {"csrfmiddlewaretoken": csrf}, headers={"HX-Request": "true"})
    assert done.status_code == 200 and "revoked" in done.content.decode()
    assert "<html" not in done.content.decode()  # htmx gets the table alone
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert bearer(key).get("/api/v1/projects").status_code == 401
    from annotation.models import AuditEvent

    assert AuditEvent.objects.filter(action="token.revoke", target_id=str(token.pk)).count() == 1


def test_a_bad_form_is_refused(curator: Any) -> None:
    c = Client()
    c.force_login(curator)
    response = c.post("/account/tokens", {"name": "", "scopes": ["root"]})
    assert response.status_code == 400 and not ApiToken.objects.exists()


def test_nobody_revokes_or_sees_another_users_token(curator: Any, outsider: Any) -> None:
    token, _ = token_create(user=curator, name="mine", scopes=["read"])
    c = Client()
    c.force_login(outsider)
    assert "mine" not in c.get("/account/tokens").content.decode()
    assert c.post(f"/account/tokens/{token.pk}/revoke").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_the_nav_links_to_the_token_page(curator: Any) -> None:
    c = Client()
    c.force_login(curator)
    assert 'href="/account/tokens"' in c.get("/").content.decode()


# ---------------------------------------------------------------------------------------------
# The command


def test_the_command_prints_a_working_key(project: Project, curator: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "create_api_token", "--user", curator.username, "--name", "ci", "--scopes", "read,train", stdout=out, stderr=err
    )
    key = out.getvalue().strip()
    assert ApiToken.objects.get(key_hash=ApiToken.hash_key(key)).scopes == ["read", "train"]
    assert "read, train" in err.getvalue()
    assert bearer(key).get(f"/api/v1/projects/{project.slug}").status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody", "--name", "x"], "no active user"),
        (["--user", "carol", "--name", "x", "--scopes", "read,root"], "unknown scope"),
        (["--user", "carol", "--name", " "], "name"),
    ],
)
def test_the_command_refuses_bad_arguments(curator: Any, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_api_token", *args, stdout=io.StringIO(), stderr=io.StringIO())


def test_the_schema_names_each_operations_scope(db: None) -> None:
    schema = Client().get("/api/v1/openapi.json").json()
    export = schema["paths"]["/api/v1/projects/{slug}/exports"]["post"]
    assert export["security"][0] == {"TokenAuth": ["export"]} and "Token scope: `export`" in export["description"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            scope = operation["security"][0]["TokenAuth"][0]
            assert (scope == "read") == (method == "get" and not path.endswith("/download")), (method, path, scope)
