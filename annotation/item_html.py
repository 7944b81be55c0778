"""The item area of the annotate page (`templates/annotation/item.jinja`), rendered by Jinja2.

Every hand-out, submit and skip answers with this fragment, and the annotate page embeds it, so it
is rendered about twice per judgment. Django's template engine resolved its forty-odd variables,
filters and loops at about a third of the Python cost of a whole next + submit loop; Jinja2
compiles the template to a Python function once per process. Output is autoescaped as in Django's
engine (Django's safe strings pass through unescaped, as they carry `__html__`), and texts from the
data pass through the same sanitizing markdown renderer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from annotation.templatetags.markdown import render_markdown

_env = Environment(
    loader=FileSystemLoader(Path(__file__).resolve().parent / "templates" / "annotation"),
    autoescape=True,
    undefined=StrictUndefined,
    auto_reload=settings.DEBUG,
)
_env.filters["markdown"] = lambda text: Markup(render_markdown(text))  # noqa: S704 - sanitized


def render(context: dict[str, Any]) -> Markup:
    """The fragment for `annotation.views._item_context`'s context, as a safe string."""
    return Markup(_env.get_template("item.jinja").render(context))  # noqa: S704 - autoescaped template
