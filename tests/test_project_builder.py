"""The New-project form as shipped, its schema builder and preview, and a curator's edit of the
schema and guidelines of an existing project (new versions, as the admin makes them)."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from typing import Any

from django.test import Client
from django.urls import reverse

from annotation.models import AuditEvent, GuidelinesVersion, Membership, Project, SchemaVersion
from annotation.services import membership_set


def client_for(user: Any) -> Client:
    c = Client()
    c.force_login(user)
    return c


class _FormValues(HTMLParser):
    """What a browser would post for the page's own form (the one that posts back to the page, not
    the header's logout), untouched: text, hidden and number inputs, checked boxes, textareas and
    the selected option of each select."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[tuple[str, str]] = []
        self._in_form = False
        self._textarea: str | None = None
        self._select: str | None = None
        self._first_option: str | None = None
        self._selected = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not a.get("action"):
            self._in_form = True
        if not self._in_form:
            return
        if tag == "input" and a.get("name"):
            kind = a.get("type", "text")
            if kind in ("checkbox", "radio"):
                if "checked" in a:
                    self.values.append((a["name"], a.get("value") or "on"))
            elif kind not in ("submit", "button", "file"):
                self.values.append((a["name"], a.get("value", "")))
        elif tag == "textarea" and a.get("name"):
            self._textarea = a["name"]
            self.values.append((self._textarea, ""))
        elif tag == "select":
            self._select, self._first_option, self._selected = a.get("name"), None, False
        elif tag == "option" and self._select:
            if self._first_option is None:
                self._first_option = a.get("value", "")
            if "selected" in a:
                self.values.append((self._select, a.get("value", "")))
                self._selected = True

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            name, text = self.values[-1]
            self.values[-1] = (name, text + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "textarea" and self._textarea is not None:
            name, text = self.values[-1]
            self.values[-1] = (name, html.unescape(text).removeprefix("\n"))
            self._textarea = None
        elif tag == "select" and self._select:
            if not self._selected and self._first_option is not None:
                self.values.append((self._select, self._first_option))
            self._select = None


def form_values(body: str) -> dict[str, Any]:
    parser = _FormValues()
    parser.feed(body)
    out: dict[str, Any] = {}
    for name, value in parser.values:
        out.setdefault(name, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The New-project form as shipped


def test_the_new_project_form_as_shipped_creates_a_project(curator) -> None:
    c = client_for(curator)
    page = c.get(reverse("annotation:project_create"))
    assert page.status_code == 200
    data = form_values(page.content.decode())
    assert "schema" in data and data["schema"].strip()  # the prefilled example
    data.update(name="Shipped defaults", slug="shipped")  # the two fields a person must fill
    response = c.post(reverse("annotation:project_create"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    project = Project.objects.get(slug="shipped")
    assert project.schema["pairwise"]["strengths"] == ["better", "much better"]
    assert [a["name"] for a in project.schema["rubric"]["aspects"]] == ["helpfulness", "correctness"]
    assert project.schema["rubric"]["aspects"][0]["description"] == "Does it address the request?"
    assert (project.schema_version, project.schema_versions.count()) == (1, 1)


def test_the_shipped_page_shows_a_preview_of_the_annotate_controls(curator) -> None:
    body = client_for(curator).get(reverse("annotation:project_create")).content.decode()
    # The annotate page's own controls: the pairwise scale and the rubric's radio buttons.
    assert 'data-testid="pw-A-2"' in body and 'data-testid="rubric-1-correctness-5"' in body
    assert 'id="item-form"' in body and "boil an egg" in body


def test_the_builder_is_what_is_saved_when_it_was_edited_last(curator) -> None:
    c = client_for(curator)
    data = form_values(c.get(reverse("annotation:project_create")).content.decode())
    data.update(
        name="Built",
        slug="built",
        schema_from="builder",
        schema="this: [is stale",  # the YAML had not been rewritten yet when the form was sent
        **{"b-kind": "ranking", "b-k": "4", "b-allow-ties": "on"},
        **{"b-category-name": ["factual", "tone"], "b-category-description": ["A false claim", ""]},
    )
    response = c.post(reverse("annotation:project_create"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    schema = Project.objects.get(slug="built").schema
    assert schema["ranking"] == {"k": 4, "allow_ties": True}
    assert "pairwise" not in schema
    assert [c["name"] for c in schema["spans"]["categories"]] == ["factual", "tone"]
    assert schema["spans"]["categories"][0]["description"] == "A false claim"


def _builder_post(c: Client, url: str, data: dict[str, Any]) -> str:
    response = c.post(url, data, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response["HX-Reswap"] == "none"
    return response.content.decode()


def test_adding_an_aspect_rewrites_the_yaml_and_the_preview(curator) -> None:
    c = client_for(curator)
    data = form_values(c.get(reverse("annotation:project_create")).content.decode())
    url = reverse("annotation:project_create_schema")
    body = _builder_post(c, url, {**data, "schema_from": "builder", "action": "add-aspect"})
    assert 'id="schema-builder"' in body and 'value="aspect_3"' in body  # the builder, with the new row
    assert 'id="id_schema"' in body and "name: aspect_3" in html.unescape(body)  # the YAML, rewritten
    assert 'data-testid="rubric-0-aspect_3-1"' in body  # the preview's rubric has the new aspect

    # Typing in the builder: the YAML and the preview follow, the builder itself is left alone.
    data["b-aspect-description"] = ["Does it help?", "Is every claim true?"]
    body = _builder_post(c, url, {**data, "schema_from": "builder"})
    assert 'id="schema-builder"' not in body
    assert "description: Does it help?" in html.unescape(body)
    assert "Does it help?" in body.split('<div id="schema-preview"')[1]


def test_builder_errors_are_shown_precisely_and_the_preview_waits(curator) -> None:
    c = client_for(curator)
    data = form_values(c.get(reverse("annotation:project_create")).content.decode())
    url = reverse("annotation:project_create_schema")
    data["b-aspect-name"] = ["Helpfulness", "correctness"]
    body = _builder_post(c, url, {**data, "schema_from": "builder"})
    assert "rubric.aspects.0.name" in body and "lowercase identifiers" in body
    assert "The preview comes back once the schema is valid" in body


def test_a_yaml_edit_re_renders_the_builder_or_names_the_line_of_a_syntax_error(curator) -> None:
    c = client_for(curator)
    data = form_values(c.get(reverse("annotation:project_create")).content.decode())
    url = reverse("annotation:project_create_schema")
    yaml_text = "ranking:\n  k: 3\nspans:\n  categories:\n    - {name: factual}\n"
    body = _builder_post(c, url, {**data, "schema_from": "yaml", "schema": yaml_text})
    assert 'id="schema-builder"' in body and 'id="id_schema"' not in body  # the text being typed stays
    assert '<option value="ranking" selected>' in body and 'value="factual"' in body
    assert body.count('class="rank-card"') == 3  # the preview: a ranking of three

    broken = "pairwise:\n  strengths: [better\n  allow_tie: true\n"
    body = _builder_post(c, url, {**data, "schema_from": "yaml", "schema": broken})
    assert 'id="schema-builder"' not in body  # the builder keeps its last good state
    assert "not valid YAML: line 3, column" in body


def test_an_invalid_schema_is_refused_on_create_with_a_readable_error(curator) -> None:
    c = client_for(curator)
    data = form_values(c.get(reverse("annotation:project_create")).content.decode())
    data.update(name="X", slug="x", schema="pairwise: {strengths: [a, b, c, d, e, f]}")
    response = c.post(reverse("annotation:project_create"), data)
    assert response.status_code == 200
    assert "pairwise.strengths: List should have at most 5 items" in html.unescape(response.content.decode())
    assert not Project.objects.exists()


def test_the_builder_endpoints_need_the_right_to_create_or_curate(project, annotator, outsider) -> None:
    data = {"schema_from": "yaml", "schema": "ranking: {k: 3}"}
    assert client_for(annotator).post(reverse("annotation:project_create_schema"), data).status_code == 403
    url = reverse("annotation:project_settings_schema", args=[project.slug])
    for who in (annotator, outsider):
        assert client_for(who).post(url, data).status_code == 404


# ---------------------------------------------------------------------------------------------
# Editing the schema and guidelines of a project


def test_a_curator_edits_schema_and_guidelines_as_new_versions(project, curator) -> None:
    c = client_for(curator)
    url = reverse("annotation:project_settings", args=[project.slug])
    page = c.get(url)
    assert page.status_code == 200
    data = form_values(page.content.decode())
    assert "pairwise:" in data["schema"]
    data["guidelines"] = "# Prefer the honest answer"
    data["schema"] = "pairwise:\n  strengths: [better]\n  allow_tie: false\n  justification: required\n"
    response = c.post(url, data, follow=True)
    assert response.redirect_chain[-1][0] == url
    assert "Saved: schema v2, guidelines v2" in response.content.decode()
    project.refresh_from_db()
    assert project.schema == {"pairwise": {"strengths": ["better"], "allow_tie": False, "justification": "required"}}
    assert (project.schema_version, project.guidelines_version) == (2, 2)
    assert list(
        SchemaVersion.objects.filter(project=project).order_by("version").values_list("version", "created_by")
    ) == [
        (1, curator.id),
        (2, curator.id),
    ]
    assert GuidelinesVersion.objects.get(project=project, version=2).text == "# Prefer the honest answer"
    event = AuditEvent.objects.get(action="project.settings")
    assert event.details == {"schema_version": [1, 2], "guidelines_version": [1, 2]}

    # Saved again unchanged (the builder's form of the same schema): no new version.
    again = form_values(c.get(url).content.decode())
    again["schema_from"] = "builder"
    response = c.post(url, again, follow=True)
    assert "Nothing changed" in response.content.decode()
    project.refresh_from_db()
    assert (project.schema_version, project.guidelines_version) == (2, 2)


def test_an_invalid_schema_edit_is_refused_readably_and_changes_nothing(project, curator) -> None:
    c = client_for(curator)
    url = reverse("annotation:project_settings", args=[project.slug])
    data = form_values(c.get(url).content.decode())
    data.update(guidelines="new words", schema="rubric:\n  aspects:\n    - {name: ok, scale: {min: 3, max: 1}}\n")
    response = c.post(url, data)
    assert response.status_code == 400
    body = html.unescape(response.content.decode())
    assert "rubric.aspects.0.scale: Value error, scale max must be greater than min" in body
    assert "new words" in body  # what was typed is kept on the page
    project.refresh_from_db()
    assert (project.schema_version, project.guidelines_version, project.guidelines) == (1, 1, "")


def test_only_the_projects_curators_reach_its_settings(project, annotator, outsider, make_user) -> None:
    url = reverse("annotation:project_settings", args=[project.slug])
    other_curator = make_user("dan", can_create=True)
    for who in (annotator, outsider, other_curator):
        assert client_for(who).get(url).status_code == 404
        assert client_for(who).post(url, {"schema": "ranking: {k: 3}"}).status_code == 404
    membership_set(project=project, user=annotator, role=Membership.Role.CURATOR)
    assert client_for(annotator).get(url).status_code == 200
    project.refresh_from_db()
    assert project.schema_version == 1


# ---------------------------------------------------------------------------------------------
# The builder's own round trip: what it shows of a schema is the schema


def test_every_kind_of_schema_survives_the_builder_unchanged() -> None:
    from django.http import QueryDict

    from annotation.schema import JudgmentSchema
    from annotation.schema_builder import parse_text, schema_from_post, schema_from_stored
    from tests.conftest import RUBRIC_SCHEMA

    schemas = [
        RUBRIC_SCHEMA,
        {"ranking": {"k": 4, "allow_ties": True}},
        {"spans": {"categories": [{"name": "factual", "description": "false claim"}], "required": True}},
        {
            "pairwise": {"strengths": ["slightly", "clearly", "much"], "allow_tie": False, "justification": "hidden"},
            "rubric": {
                "aspects": [{"name": "tone", "scale": {"min": 0, "max": 3, "labels": {0: "rude", 3: "warm"}}}],
                "required": False,
            },
        },
    ]
    for raw in schemas:
        schema = JudgmentSchema.model_validate(raw)
        shown = schema_from_stored(schema)
        assert JudgmentSchema.model_validate(parse_text(shown.text)) == schema  # the YAML it writes
        # The builder's fields as a browser would post them back, untouched.
        body = _render_builder(shown)
        posted = QueryDict(mutable=True)
        for name, value in _builder_values(body):
            posted.appendlist(name, value)
        posted["schema_from"] = "builder"
        assert schema_from_post(posted).schema == schema, raw


def _render_builder(schema_input: Any) -> str:
    from django.template.loader import render_to_string

    from annotation.schema_builder import JUSTIFICATIONS, KINDS, MAX_STRENGTHS

    context = {
        "si": schema_input,
        "builder_url": "/x",
        "kinds": KINDS,
        "justifications": JUSTIFICATIONS,
        "max_strengths": MAX_STRENGTHS,
    }
    return '<form method="post">' + render_to_string("annotation/_schema_editor.html#builder", context) + "</form>"


def _builder_values(body: str) -> list[tuple[str, str]]:
    parser = _FormValues()
    parser.feed(body)
    return parser.values
