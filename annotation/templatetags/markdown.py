"""Markdown from data and guidelines, rendered safely: raw HTML in the source is escaped by the
parser (html=False) and the output passes through an allow-list sanitizer as a second guard."""

import functools
import re

import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

register = template.Library()
_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
_TAGS = {
    "p",
    "br",
    "hr",
    "em",
    "strong",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "del",
    "img",
}


# A line of plain prose: it starts with a letter, a quote or a parenthesis (not a list marker, a
# heading, a quote block, indented code or a fence), holds no character that markdown gives a
# meaning inside a line (`*_[]<>&\\~|#` and the backtick) nor any that the sanitizer writes as an
# entity, and does not end in a space (a hard line break).
_PLAIN_LINE = re.compile(r"[A-Za-z\"'(][A-Za-z0-9 ,.;:?!'\"()/%$@+=-]*(?<! )")


def _plain_html(text: str) -> str | None:
    """What the markdown renderer and the sanitizer make of plain prose, without running them:
    each run of lines between blank lines becomes one paragraph, lines joined by a newline. None
    when the text holds anything else. Most responses in preference data are plain prose, and the
    parser took about a seventh of the Python of an annotation loop on them. A test checks, over
    generated texts, that whatever this accepts renders exactly as through the parser."""
    paragraphs: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        if not line:
            if lines:
                paragraphs.append("\n".join(lines))
                lines = []
        elif _PLAIN_LINE.fullmatch(line):
            lines.append(line)
        else:
            return None
    if lines:
        paragraphs.append("\n".join(lines))
    return "".join(f"<p>{p}</p>\n" for p in paragraphs)


@functools.lru_cache(maxsize=2048)
def render_markdown(text: str) -> str:
    """Cached per process: an item's texts are shown to each of its annotators, and the page that
    submits one item is answered with the next, so the same texts come back within seconds."""
    plain = _plain_html(text or "")
    if plain is not None:
        return plain
    return _render(text)


def _render(text: str) -> str:
    html = _md.render(text or "")
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes={"a": {"href", "title"}, "img": {"src", "alt"}, "code": {"class"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return mark_safe(render_markdown(text))  # noqa: S308 - sanitized above
