"""The item area of the annotate page (`templates/annotation/item.jinja`): its context, rendered by
Jinja2, and the htmx response that carries it.

Every hand-out, submit and skip answers with this fragment, and the annotate page embeds it, so it
is rendered about twice per judgment. Django's template engine resolved its forty-odd variables,
filters and loops at about a third of the Python cost of a whole next + submit loop; Jinja2
compiles the template to a Python function once per process. Output is autoescaped as in Django's
engine (Django's safe strings pass through unescaped, as they carry `__html__`), and texts from the
data pass through the same sanitizing markdown renderer.
"""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils.html import json_script
from django.utils.safestring import mark_safe
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from annotation.models import Assignment, Project
from annotation.templatetags.markdown import render_markdown

_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates" / "annotation"),
    autoescape=True,
    undefined=StrictUndefined,
    auto_reload=settings.DEBUG,
)
_env.filters["markdown"] = lambda text: Markup(render_markdown(text))  # noqa: S704 - sanitized


def render(context: dict[str, Any]) -> Markup:
    """The fragment for a context from `context` (or the schema builder's preview), as a safe string."""
    return Markup(_env.get_template("item.jinja").render(context))  # noqa: S704 - autoescaped template


def response(
    request: HttpRequest, project: Project, assignment: Assignment | None, progress: dict[str, object]
) -> HttpResponse:
    """The item area alone, as htmx swaps it in; with the guidelines panel too (out of band) when
    the page shows an older version than the one this item is under."""
    html = render(context(project, assignment, progress))
    shown = request.META.get("HTTP_X_GUIDELINES_VERSION")
    if shown is not None and shown != str(project.guidelines_version):
        panel = render_to_string("annotation/annotate.html#guidelines", {"project": project, "changed": True})
        html += mark_safe(panel)  # noqa: S308 - rendered by our template with autoescape
    return HttpResponse(html)


def context(project: Project, assignment: Assignment | None, progress: dict[str, object]) -> dict[str, object]:
    """What `item.jinja` shows: the progress strip (`selectors.annotator_progress`) and, for a
    lease, its item's responses in the lease's display order with the answer controls."""
    ctx: dict[str, object] = {
        "project": project,
        "schema": project.judgment_schema,
        "assignment": assignment,
        "progress": progress,
    }
    if assignment is None:
        ctx["home_url"] = reverse("annotation:home")
        return ctx
    item = assignment.item
    shown = []
    for position, stored in enumerate(assignment.response_order):
        answer = item.responses[stored]
        shown.append(
            {
                "position": position,
                "label": chr(ord("A") + position),
                "text": answer["text"],
                "model": answer.get("model", "") if project.show_model_names else "",
            }
        )
    urls = assignment_urls(assignment.uuid)
    item_data = {
        "assignment": str(assignment.uuid),
        "count": len(shown),
        # The raw texts, in display order, only where span marking needs their offsets.
        "texts": [r["text"] for r in shown] if project.judgment_schema.spans else [],
        "schema": project.schema,
        "leased_at": assignment.leased_at.isoformat(),
    }
    ctx.update(
        item=item,
        shown=shown,
        submit_url=urls[0],
        skip_url=urls[1],
        controls=_controls(project, len(shown)),
        item_json=json_script(item_data, "item-data"),
        lease_until=assignment.expires_at.astimezone(UTC).strftime("%H:%M"),
        lease_until_iso=assignment.expires_at.isoformat(timespec="milliseconds"),
    )
    return ctx


_CONTROLS: dict[tuple[str, int], str] = {}


def _controls(project: Project, n_responses: int) -> str:
    """The answer controls (strength scale, rubric, span menu, justification) as HTML, rendered
    once per process for each schema and response count: they hold nothing of the item, the
    assignment or the user, and are most of the work of rendering an item."""
    key = (project.schema_key, n_responses)
    html = _CONTROLS.get(key)
    if html is None:
        shown = [{"position": p, "label": chr(ord("A") + p)} for p in range(n_responses)]
        html = render_to_string(
            "annotation/annotate.html#controls", {"schema": project.judgment_schema, "shown": shown}
        )
        if len(_CONTROLS) >= 256:  # schemas edited many times in a long-lived process
            _CONTROLS.clear()
        _CONTROLS[key] = html
    return mark_safe(html)  # noqa: S308 - rendered by our template with autoescape


_ZERO_UUID = str(UUID(int=0))
_URL_PATTERNS: dict[tuple[str, object], tuple[str, str]] = {}


def assignment_urls(assignment_uuid: UUID) -> tuple[str, str]:
    """The submit and skip URLs of an assignment: reversed once per script prefix and URLconf with
    a placeholder UUID, then filled in: `reverse` is costly on the hot path."""
    key = (get_script_prefix(), get_urlconf())
    patterns = _URL_PATTERNS.get(key)
    if patterns is None:
        patterns = _URL_PATTERNS[key] = (
            reverse("annotation:submit", args=[_ZERO_UUID]),
            reverse("annotation:skip", args=[_ZERO_UUID]),
        )
    value = str(assignment_uuid)
    return patterns[0].replace(_ZERO_UUID, value), patterns[1].replace(_ZERO_UUID, value)
