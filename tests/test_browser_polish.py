"""The pages in a real headless Chromium: the main pages log no console error (nothing the
Content-Security-Policy refuses: an inline style injected by htmx, an inline event handler; no
failed script, no missing favicon), and the quality dashboard's two leaderboards sit side by side
without overlapping."""

from __future__ import annotations

from typing import Any

import pytest

from annotation import queue
from annotation.importing import import_items
from annotation.models import Membership
from annotation.services import membership_set
from tests.conftest import PAIRWISE_SCHEMA, jsonl, login, pair_row

pytestmark = pytest.mark.django_db(transaction=True)


def _watch(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
    page.on("response", lambda r: errors.append(f"{r.url}: {r.status}") if r.status >= 400 else None)
    return errors


def test_main_pages_log_no_console_errors(page, make_project, make_user) -> None:
    curator = make_user("cura", can_create=True)
    annotator = make_user("ann")
    project = make_project("console", curator=curator, schema=PAIRWISE_SCHEMA)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(4)]))
    for user in (curator, annotator):
        a = queue.next_assignment(project=project, user=user)
        queue.submit(assignment_id=a.id, user=user, payload={"pairwise": {"choice": "A", "strength": 1}})

    errors = _watch(page)
    login(page, "cura", "cura-pw-123")
    s = project.slug
    for path in (
        "/",
        f"/p/{s}/",
        f"/p/{s}/annotate",
        f"/p/{s}/quality/",
        f"/p/{s}/review/",
        f"/p/{s}/exports/",
        f"/p/{s}/models/",
        f"/p/{s}/ai/",
        f"/p/{s}/routing/",
        f"/p/{s}/members",
        "/projects/new",
        "/account/tokens",
    ):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    # A new API token: the key is shown once, in a field that selects itself on focus.
    page.fill("input[name=name]", "ci")
    page.click("text=Create token")
    page.wait_for_selector("#new-token-key")
    page.wait_for_load_state()  # the field can be in the DOM before its deferred script has run
    key = page.locator("#new-token-key")
    key.focus()
    selected = page.evaluate("() => { const e = document.activeElement; return e.selectionEnd - e.selectionStart; }")
    assert selected == len(key.input_value()) > 0
    page.goto("/favicon.ico")
    assert not errors, "\n".join(errors)


def test_the_two_leaderboards_do_not_overlap(page, make_project, make_user) -> None:
    curator = make_user("cura", can_create=True)
    project = make_project("board", curator=curator, schema=PAIRWISE_SCHEMA)
    rows = [
        pair_row(i, model_a=f"model-{i % 3}-large-name", model_b=f"model-{(i + 1) % 3}-large-name") for i in range(9)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    for i in range(9):
        a = queue.next_assignment(project=project, user=curator)
        choice = "A" if i % 3 else "tie"
        payload = {"pairwise": {"choice": choice, "strength": 0 if choice == "tie" else 1}}
        queue.submit(assignment_id=a.id, user=curator, payload=payload)
    login(page, "cura", "cura-pw-123")
    page.goto(f"/p/{project.slug}/quality/")
    human = page.locator("[data-testid=leaderboard-human]").bounding_box()
    ai = page.locator("[data-testid=leaderboard-ai]").bounding_box()
    apart = human["x"] + human["width"] <= ai["x"] or human["y"] + human["height"] <= ai["y"]
    assert apart, (human, ai)
    # The agreement figures' names keep their Greek letters (upper case made alpha an A).
    names = page.locator("[data-testid=agreement] th").first
    assert names.evaluate("el => getComputedStyle(el).textTransform") == "none"
    lines = "el => { const r = document.createRange(); r.selectNodeContents(el); return r.getClientRects().length; }"
    for cell in page.locator("[data-testid=leaderboard-human] th, [data-testid=leaderboard-human] td").all():
        assert cell.evaluate(lines) <= 1, f"{cell.inner_text()!r} wraps"
