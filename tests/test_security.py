"""Hardening: security headers and the Content-Security-Policy (also in a real browser: no page
breaks, nothing is refused), CSRF on every unsafe request (htmx included), login rate limiting,
password validation, production settings, and oversized request bodies."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache, caches
from django.test import Client
from django.urls import reverse

from annotation.models import AuditEvent, Membership, Project
from annotation.services import membership_set
from tests.conftest import RUBRIC_SCHEMA, jsonl, login, pair_row, settings_probe
from tests.test_idor import World, _url, build_world, site_routes

EXPECTED_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def client_for(user: Any, **kwargs: Any) -> Client:
    c = Client(**kwargs)
    c.force_login(user)
    return c


@pytest.fixture
def world(make_user, make_project, settings, tmp_path) -> World:
    return build_world(make_user, make_project, settings, tmp_path)


@pytest.fixture
def clean_cache(django_db_blocker: Any) -> Any:
    """Login counters live in the throttle store (a database table, or the shared cache); start and
    end each test without any."""

    def clear() -> None:
        cache.clear()
        with django_db_blocker.unblock():
            caches["throttle"].clear()

    clear()
    yield
    clear()


# ---------------------------------------------------------------------------------------------
# Headers and the Content-Security-Policy


def test_every_response_carries_the_security_headers(project: Project, curator) -> None:
    for response in (
        Client().get(reverse("login")),
        client_for(curator).get(reverse("annotation:project", args=[project.slug])),
        client_for(curator).get("/no/such/page"),
    ):
        assert response["Content-Security-Policy"] == EXPECTED_CSP
        assert response["Permissions-Policy"].startswith("camera=(), microphone=()")
        assert response["Referrer-Policy"] == "same-origin"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"


def test_the_api_docs_come_from_our_own_static_files(db) -> None:
    response = Client().get("/api/v1/docs")
    assert response.status_code == 200
    body = response.content.decode()
    assert "cdn.jsdelivr.net" not in body and "/static/ninja/swagger-ui-bundle.js" in body
    assert "script-src 'self';" in response["Content-Security-Policy"]
    assert "style-src 'self' 'unsafe-inline'" in response["Content-Security-Policy"]  # Swagger UI styles inline


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def test_no_page_has_inline_scripts_styles_or_event_handlers(world: World) -> None:
    """What the policy would block, looked for in every page P's curator (or annotator) can open."""
    curator, annotator = world.users["p_curator"], world.users["p_annotator"]
    pages = [reverse("annotation:home"), reverse("login"), reverse("annotation:account_tokens")]
    for name, _, kwargs in site_routes():
        if kwargs and client_for(curator).get(_url(name, kwargs, world.kwargs)).status_code == 200:
            pages.append(_url(name, kwargs, world.kwargs))
    assert len(pages) > 15
    for url in pages:
        for user in (curator, annotator):
            response = client_for(user).get(url)
            if response.status_code != 200 or not response["Content-Type"].startswith("text/html"):
                continue
            body = response.content.decode()
            assert not INLINE_SCRIPT.search(body), f"{url}: inline <script>: {INLINE_SCRIPT.search(body).group(0)}"
            assert not INLINE_HANDLER.search(body), f"{url}: inline event handler"
            assert "<style" not in body, f"{url}: <style> element"


# ---------------------------------------------------------------------------------------------
# CSRF


def test_every_unsafe_request_without_the_csrf_token_is_refused(world: World) -> None:
    """Each URL of the site, posted to by a logged-in user without the token: 403, before the view
    runs. With the token (as htmx sends it: the X-CSRFToken header), the request goes through."""
    checked = 0
    for name, _, kwargs in site_routes():
        url = _url(name, kwargs, world.kwargs)
        who = {"annotation:submit": "p_annotator", "annotation:skip": "p_annotator"}.get(name, "p_curator")
        creating = name in ("annotation:project_create", "annotation:project_create_schema")
        user = world.users["outsider" if creating else who]  # may create projects
        c = client_for(user, enforce_csrf_checks=True)
        refused = c.post(url, {})
        assert refused.status_code == 403, f"POST {url} without a CSRF token answers {refused.status_code}"
        c.get(reverse("annotation:home"))  # sets the CSRF cookie, as any page does
        token = c.cookies["csrftoken"].value
        accepted = c.post(url, {}, HTTP_X_CSRFTOKEN=token)
        assert accepted.status_code != 403, f"POST {url} with the token answers 403"
        checked += accepted.status_code != 405
    assert checked >= 15  # the unsafe endpoints (the rest answer 405 to POST)


def test_the_session_api_needs_the_csrf_token_too(world: World) -> None:
    c = client_for(world.users["p_curator"], enforce_csrf_checks=True)
    url = f"/api/v1/projects/{world.p.slug}/exports"
    refused = c.post(url, {"formats": ["raw"]}, content_type="application/json")
    assert refused.status_code == 403
    c.get(reverse("annotation:home"))
    ok = c.post(
        url, {"formats": ["raw"]}, content_type="application/json", HTTP_X_CSRFTOKEN=c.cookies["csrftoken"].value
    )
    assert ok.status_code == 202


def test_htmx_requests_carry_the_token_from_the_page(project: Project, curator, make_user) -> None:
    make_user("dave")
    c = client_for(curator, enforce_csrf_checks=True)
    page = c.get(reverse("annotation:members", args=[project.slug])).content.decode()
    headers = json.loads(re.search(r"<body hx-headers='([^']+)'", page).group(1))
    response = c.post(
        reverse("annotation:member_add", args=[project.slug]),
        {"username": "dave", "role": "annotator"},
        HTTP_HX_REQUEST="true",
        HTTP_X_CSRFTOKEN=headers["X-CSRFToken"],
    )
    assert response.status_code == 200 and 'data-member="dave"' in response.content.decode()


# ---------------------------------------------------------------------------------------------
# Logins


def _login(c: Client, username: str, password: str, **extra: Any) -> Any:
    return c.post(reverse("login"), {"username": username, "password": password}, **extra)


def test_failed_logins_are_rate_limited_per_username(clean_cache, project: Project, annotator, settings) -> None:
    settings.LOGIN_RATE_LIMIT = 5
    c = Client()
    for _ in range(5):
        assert _login(c, "alice", "wrong").status_code == 200
    blocked = _login(c, "Alice", "alice-pw-123")  # the right password, any spelling: refused unread
    assert blocked.status_code == 429
    assert "Too many failed logins" in blocked.content.decode()
    assert int(blocked["Retry-After"]) == settings.LOGIN_RATE_LIMIT_WINDOW
    assert "_auth_user_id" not in c.session
    # The admin's login page (or anything else calling authenticate) is refused too.
    admin_client = Client()
    admin_login = admin_client.post("/admin/login/", {"username": "alice", "password": "alice-pw-123"})
    assert admin_login.status_code == 200 and "_auth_user_id" not in admin_client.session
    assert AuditEvent.objects.filter(action="auth.login_failed").count() == 5
    assert AuditEvent.objects.filter(action="auth.login_locked").count() == 1
    # Another account from the same address still logs in.
    make = get_user_model().objects.create_user
    make(username="bob", password="bob-pw-123")
    assert _login(Client(), "bob", "bob-pw-123").status_code == 302
    caches["throttle"].clear()  # the window has passed
    assert _login(Client(), "alice", "alice-pw-123").status_code == 302


def test_a_successful_login_resets_the_usernames_counter(clean_cache, project: Project, annotator, settings) -> None:
    settings.LOGIN_RATE_LIMIT = 3
    for _ in range(2):
        _login(Client(), "alice", "wrong")
    assert _login(Client(), "alice", "alice-pw-123").status_code == 302
    for _ in range(2):
        assert _login(Client(), "alice", "wrong").status_code == 200
    assert _login(Client(), "alice", "alice-pw-123").status_code == 302


def test_failed_logins_are_rate_limited_per_address(clean_cache, db, settings) -> None:
    settings.LOGIN_RATE_LIMIT_PER_IP = 3
    for name in ("u1", "u2", "u3"):
        assert _login(Client(), name, "wrong", REMOTE_ADDR="10.0.0.7").status_code == 200
    assert _login(Client(), "u4", "wrong", REMOTE_ADDR="10.0.0.7").status_code == 429
    assert _login(Client(), "u4", "wrong", REMOTE_ADDR="10.0.0.8").status_code == 200


def test_behind_a_proxy_the_forwarded_address_counts(clean_cache, db, settings) -> None:
    settings.LOGIN_RATE_LIMIT_PER_IP = 2
    settings.NUM_PROXIES = 1
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    for n in range(2):  # a client cannot forge its address by prepending one
        _login(Client(), f"x{n}", "wrong", HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.5", **proxy)
    assert _login(Client(), "x9", "wrong", HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy).status_code == 429
    assert _login(Client(), "x9", "wrong", HTTP_X_FORWARDED_FOR="203.0.113.6", **proxy).status_code == 200


def test_weak_passwords_are_refused_when_creating_users(db, make_user) -> None:
    admin = make_user("root", superuser=True)
    admin.is_staff = True
    admin.save()
    c = client_for(admin)
    url = reverse("admin:auth_user_add")
    for weak, reason in (
        ("123", "too short"),
        ("password", "too common"),
        ("8201749365", "entirely numeric"),
        ("newperson1", "too similar to the username"),
    ):
        data = {"username": "newperson1", "password1": weak, "password2": weak, "usable_password": "true"}
        response = c.post(url, data)
        assert response.status_code == 200 and reason in response.content.decode(), weak
    assert not get_user_model().objects.filter(username="newperson1").exists()
    strong = "corvid-teapot-Lantern-42"
    data = {"username": "newperson1", "password1": strong, "password2": strong, "usable_password": "true"}
    assert c.post(url, data).status_code == 302
    assert get_user_model().objects.get(username="newperson1").check_password(strong)


# ---------------------------------------------------------------------------------------------
# Settings in production mode, and request size

PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps({k: getattr(s, k) "
    "for k in ('DEBUG', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'SESSION_COOKIE_HTTPONLY', "
    "'CSRF_COOKIE_HTTPONLY', 'SESSION_COOKIE_SAMESITE', 'CSRF_COOKIE_SAMESITE', 'SECURE_HSTS_SECONDS', "
    "'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_CONTENT_TYPE_NOSNIFF', 'X_FRAME_OPTIONS', "
    "'SECURE_REFERRER_POLICY', 'LOGIN_RATE_LIMIT', 'IMPORT_MAX_DECOMPRESSED_BYTES')}))"
)


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    drop = ("SECRET_KEY", "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS")
    return settings_probe(PROBE, drop=drop, **env)


def test_production_mode_turns_the_hardening_on() -> None:
    result = _start(DEBUG="0", SECRET_KEY="kq3-a8f1c0e7b6d5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9")
    assert result.returncode == 0, result.stderr
    s = json.loads(result.stdout)
    assert s["DEBUG"] is False
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SESSION_COOKIE_HTTPONLY"] and s["CSRF_COOKIE_HTTPONLY"]
    assert s["SESSION_COOKIE_SAMESITE"] == s["CSRF_COOKIE_SAMESITE"] == "Lax"
    assert s["SECURE_HSTS_SECONDS"] >= 3600 and s["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert s["SECURE_CONTENT_TYPE_NOSNIFF"] and s["X_FRAME_OPTIONS"] == "DENY"
    assert s["SECURE_REFERRER_POLICY"] == "same-origin"
    assert s["LOGIN_RATE_LIMIT"] == 5 and s["IMPORT_MAX_DECOMPRESSED_BYTES"] > 0


@pytest.mark.parametrize(
    "key",
    ["", "change-me-to-a-long-random-string", "dev-only-insecure-key-do-not-use-in-production", "django-insecure-x"],
)
def test_production_mode_refuses_a_missing_or_published_secret_key(key: str) -> None:
    result = _start(DEBUG="0", **({"SECRET_KEY": key} if key else {}))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_a_request_body_over_the_upload_cap_is_refused_before_it_is_read(project: Project, curator, settings) -> None:
    settings.IMPORT_MAX_UPLOAD_BYTES = 1000
    response = client_for(curator).post(
        reverse("annotation:import_upload", args=[project.slug]), {}, CONTENT_LENGTH=str(50 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert "limited to 1,000 bytes (IMPORT_MAX_UPLOAD_BYTES)" in response.content.decode()


# ---------------------------------------------------------------------------------------------
# In a real browser: the policy breaks no page and refuses nothing


@pytest.mark.django_db(transaction=True)
def test_pages_work_under_the_policy_in_chromium(page, make_user, make_project, clean_cache) -> None:
    from annotation.importing import import_items

    curator = make_user("carol", can_create=True)
    make_user("dave")
    project = make_project("csp", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(i, label="A") for i in range(4)]))
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    login(page, "carol", "carol-pw-123")
    slug = project.slug
    for path in (
        "/",
        f"/p/{slug}/",
        f"/p/{slug}/annotate",
        f"/p/{slug}/quality/",
        f"/p/{slug}/review/",
        f"/p/{slug}/exports/",
        f"/p/{slug}/models/",
        f"/p/{slug}/ai/",
        f"/p/{slug}/routing/",
        f"/p/{slug}/audit",
        "/api/v1/docs",
        f"/p/{slug}/members",
    ):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__csp || []") == [], path
    # An htmx form on the members page: its POST carries the CSRF header and swaps the panel.
    page.fill("#id_username", "dave")
    page.click("#members-panel form.row button[type=submit]")
    page.wait_for_selector("tr[data-member='dave']")
    assert Membership.objects.filter(project=project, user__username="dave").exists()
    page.goto("/api/v1/docs")
    page.wait_for_selector(".swagger-ui .info", timeout=15_000)
    assert page.evaluate("window.__csp || []") == []
    csp = [p for p in problems if "Content Security Policy" in p or "Refused to" in p]
    assert csp == [], csp


# ---------------------------------------------------------------------------------------------
# No HTML from data: item text, model and annotator names, metadata, file names, raw outputs

XSS = ("<script>alert(1)</script>", "<img src=x onerror=alert(2)>")
ESCAPED = ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;")


@pytest.fixture
def hostile(make_project, curator, annotator, settings, tmp_path) -> dict[str, Any]:
    """A project whose data carries markup everywhere a page can show it."""
    from annotation.importing import import_items
    from annotation.models import ImportJob, Item, Labeler
    from annotation.services import import_job_run
    from curation import services as curation_services
    from models_srv.models import AILabelFailure, AILabelRun

    settings.VAR_DIR = tmp_path
    script, img = XSS
    project = make_project(
        "hostile",
        curator=curator,
        overlap=3,
        show_model_names=True,
        description=f"about {script}",
        guidelines=f"# Rules {script}\n\n{img} [click](javascript:alert(3))",
    )
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    row = {
        "id": f"x-{script}",
        "prompt": f"{script} {img} what?",
        "response_a": f"A {script}",
        "response_b": f"B {img}",
        "model_a": f"m-{script}",
        "model_b": f"m-{img}",
        "metadata": {"category": f"c-{script}", "note": img},
        "judgments": [
            {"annotator": script, "pairwise": {"choice": "A", "strength": 1}},
            {"annotator": img, "pairwise": {"choice": "B", "strength": 1}},
            {"annotator": "ann3", "pairwise": {"choice": "A", "strength": 1}},
        ],
    }
    import_items(project=project, fileobj=jsonl([row, {**row, "id": "y", "judgments": row["judgments"][:1]}]))
    item = Item.objects.get(project=project, external_id=row["id"])
    bad = ImportJob(project=project, source="upload", original_name=f"{script}.jsonl", created_by=curator)
    bad.file.save("bad.jsonl", io_bytes(json.dumps({**row, "id": "z", "judgments": [], "label": script}) + "\n"))
    bad.save()
    import_job_run(job_id=bad.id)
    judge = Labeler.objects.create(project=project, kind="llm", name=f"judge {script}", config={"model": img})
    run = AILabelRun.objects.create(project=project, labeler=judge, status="failed", error=script)
    AILabelFailure.objects.create(run=run, item=item, reason=script, raw_output=img)
    export = curation_services.export_create(project=project, user=curator, filters={}, formats="raw", license=script)
    curation_services.export_run(snapshot_id=export.id)
    y = Item.objects.get(project=project, external_id="y")
    curation_services.curation_action_apply(item=y, actor=curator, action="accept", reason=img)
    return {"project": project, "item": item, "job": bad, "run": run, "export": export}


def io_bytes(text: str) -> Any:
    from django.core.files.base import ContentFile

    return ContentFile(text.encode())


def test_markup_in_data_is_shown_escaped_on_every_page(hostile: dict[str, Any], curator, annotator) -> None:
    project = hostile["project"]
    slug = project.slug
    pages = {
        "home": (annotator, reverse("annotation:home"), False),
        "project": (curator, reverse("annotation:project", args=[slug]), True),
        "annotate partial": (annotator, reverse("annotation:annotate", args=[slug]), True),
        "import job": (curator, reverse("annotation:import_job", args=[hostile["job"].uuid]), True),
        "review queue": (curator, reverse("curation:review", args=[slug]), True),
        "quality dashboard": (curator, reverse("curation:quality", args=[slug]), True),
        "exports": (curator, reverse("curation:exports", args=[slug]), False),
        "export": (curator, reverse("curation:export", args=[hostile["export"].code]), True),
        "ai labelers": (curator, reverse("models_srv:ai", args=[slug]), True),
        "ai run": (curator, reverse("models_srv:ai_run", args=[hostile["run"].uuid]), True),
        "audit log": (curator, reverse("annotation:audit", args=[slug]), True),
    }
    for what, (user, url, shows_data) in pages.items():
        headers = {"HTTP_HX_REQUEST": "true"} if what == "annotate partial" else {}
        response = client_for(user).get(url, **headers)
        assert response.status_code == 200, what
        body = response.content.decode()
        for raw in XSS:
            assert raw not in body, f"{what}: {raw} rendered as HTML"
        assert 'href="javascript:' not in body.lower(), what  # markdown links too
        if shows_data:
            assert any(e in body for e in ESCAPED), f"{what} shows none of the data"
    annotate = client_for(annotator).get(reverse("annotation:annotate", args=[slug]), HTTP_HX_REQUEST="true")
    body = annotate.content.decode()
    assert f"m-{ESCAPED[0]}" in body or f"m-{ESCAPED[1]}" in body  # model names, shown by the project
    # With span marking on, the page script gets the raw texts as JSON, escaped for a <script>.
    from annotation.schema import JudgmentSchema
    from annotation.services import project_set_schema

    project = Project.objects.get(slug=slug)
    project_set_schema(project=project, schema=JudgmentSchema.model_validate(RUBRIC_SCHEMA), by=None)
    annotate = client_for(annotator).get(reverse("annotation:annotate", args=[slug]), HTTP_HX_REQUEST="true")
    body = annotate.content.decode()
    assert "\\u003Cscript\\u003E" in body and not any(raw in body for raw in XSS)
    quality = client_for(curator).get(reverse("curation:quality", args=[slug])).content.decode()
    assert ESCAPED[0] in quality and ESCAPED[1] in quality  # annotator, model and category names
