"""A newcomer's first project, in a real headless Chromium: the New-project form as shipped, its
schema builder used with the mouse and the keyboard, the preview following each edit, then one
item of the new project answered on the annotate page and the stored judgment read back."""

from __future__ import annotations

import pytest

from annotation.importing import import_items
from annotation.models import Judgment, Membership, Project
from annotation.services import membership_set
from tests.conftest import jsonl, login

pytestmark = pytest.mark.django_db(transaction=True)

PREVIEW = "#schema-preview"


def test_a_project_built_in_the_browser_is_annotated(page, make_user) -> None:
    make_user("carol", can_create=True)
    annotator = make_user("ann")
    refused: list[str] = []  # what the page's Content-Security-Policy blocked (inline styles, scripts)
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    login(page, "carol", "carol-pw-123")
    page.goto("/projects/new")

    # As shipped: the preview is the annotate page's item area for the prefilled schema.
    page.wait_for_selector(f"{PREVIEW} [data-testid='pw-A-2']", state="attached")
    page.wait_for_selector(f"{PREVIEW} [data-testid='rubric-1-correctness-5']", state="attached")
    page.fill("#id_name", "First project")
    page.fill("#id_slug", "first")

    # A third rubric aspect, named with the keyboard; Enter in a builder field does not submit.
    page.click("#add-aspect")
    page.wait_for_selector("#b-aspect-name-2")
    page.click("#b-aspect-name-2")
    page.keyboard.press("Control+A")
    page.keyboard.type("clarity")
    page.keyboard.press("Tab")
    page.keyboard.type("Is it easy to follow?")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{PREVIEW} [data-testid='rubric-0-clarity-1']", state="attached")
    assert page.locator(PREVIEW, has_text="Is it easy to follow?").count() == 1
    assert page.url.endswith("/projects/new")

    # A span category: the preview gains the span menu and the responses' text to mark.
    page.click("#add-category")
    page.wait_for_selector("#b-category-name-0")
    page.fill("#b-category-name-0", "factual")
    page.wait_for_selector(f"{PREVIEW} button[data-category='factual']", state="attached")
    assert "six minutes" in page.locator(f"{PREVIEW} [data-testid='span-text-0']").inner_text()
    schema_text = page.input_value("#id_schema")
    assert "name: clarity" in schema_text and "name: factual" in schema_text

    assert not refused, refused[:3]
    page.click("#create-project")
    page.wait_for_url("**/p/first/")
    project = Project.objects.get(slug="first")
    assert [a["name"] for a in project.schema["rubric"]["aspects"]] == ["helpfulness", "correctness", "clarity"]
    assert project.schema["spans"]["categories"] == [{"name": "factual", "description": ""}]
    assert project.memberships.get().user.username == "carol"

    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    row = {"id": "egg", "prompt": "A soft-boiled egg?", "response_a": "Six minutes.", "response_b": "An hour."}
    import_items(project=project, fileobj=jsonl([row]))

    page.click("header form[action='/accounts/logout/'] button")
    login(page, "ann", "ann-pw-123")
    page.goto("/p/first/annotate")
    page.wait_for_selector("#item-form")
    page.keyboard.press("4")  # "B better": the response shown on the right
    for key in "253415":  # the rubric, aspect by aspect, left response then right
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_selector("#queue-empty")

    j = Judgment.objects.get()
    order = j.response_order
    shown = [
        {"helpfulness": 2, "correctness": 3, "clarity": 1},
        {"helpfulness": 5, "correctness": 4, "clarity": 5},
    ]
    assert j.payload == {
        "pairwise": {"choice": "AB"[order[1]], "strength": 1},
        "rubric": [shown[order.index(i)] for i in range(2)],
        "spans": [],
        "justification": "",
    }
    assert (j.labeler.user, j.schema_version) == (annotator, 1)


def test_a_curator_edits_schema_and_guidelines_in_the_browser(page, make_user, make_project) -> None:
    curator = make_user("carol")
    project = make_project("edit", curator=curator, guidelines="Be fair.")
    login(page, "carol", "carol-pw-123")
    page.goto(f"/p/{project.slug}/")
    page.click("text=Schema and guidelines")
    page.wait_for_selector(f"{PREVIEW} [data-testid='pw-tie-0']", state="attached")

    page.select_option("#b-justification", "required")
    page.wait_for_selector(f"{PREVIEW} label[for='justification']:has-text('(required)')", state="attached")
    page.uncheck("#b-allow-tie")
    page.wait_for_selector(f"{PREVIEW} [data-testid='pw-tie-0']", state="detached")
    page.fill("#id_guidelines", "Be fair. Say why.")
    page.click("#save-settings")
    page.wait_for_selector("text=Saved: schema v2, guidelines v2")

    project.refresh_from_db()
    assert project.schema["pairwise"] == {
        "strengths": ["better", "much better"],
        "allow_tie": False,
        "justification": "required",
    }
    assert (project.schema_version, project.guidelines_version, project.guidelines) == (2, 2, "Be fair. Say why.")
    assert project.schema_versions.get(version=2).created_by == curator
