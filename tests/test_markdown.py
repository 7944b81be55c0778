"""The markdown renderer's plain-prose shortcut renders exactly as the parser and sanitizer do."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from annotation.templatetags.markdown import _plain_html, _render, render_markdown

# Every character the shortcut allows, and every one it must refuse: markdown's inline and block
# markers, entities, whitespace of other kinds, and text the sanitizer writes as an entity.
_ALPHABET = "aZq09 ,.;:?!'\"()/%$@+=-" + "*_[]<>&\\`~|#\t\r\n\n\n" + "é\u00a0"


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=40))
@example("1. first\n2. second")
@example("Title\n=====")
@example("a  \nb")
@example("a \nb")
@example("- item")
@example("Hello\n---")
@example("x\n\n\n\ny")
@example("see https://example.org/a?b=c")
def test_plain_prose_renders_as_the_parser_renders_it(text: str) -> None:
    plain = _plain_html(text)
    if plain is not None:
        assert plain == _render(text)


def test_prose_takes_the_shortcut_and_markdown_does_not() -> None:
    prose = 'The model answered "yes" (twice).\nIt was right: 3 of 4 times, or 75% - well done!\n\nSecond paragraph?'
    assert _plain_html(prose) == _render(prose)
    assert "<p>Second paragraph?</p>" in render_markdown(prose)
    for marked in ("**bold**", "1. one", "# head", "> quote", "    code", "a <b>", "x & y", "`c`", "a\tb"):
        assert _plain_html(marked) is None, marked
        assert render_markdown(marked) == _render(marked)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="aZq09 ,.;:?!'\"()/%$@+=-\n", max_size=60))
def test_text_of_the_allowed_characters_only(text: str) -> None:
    """Mostly accepted (line starts and trailing spaces still refuse some); all exact."""
    plain = _plain_html(text)
    if plain is not None:
        assert plain == _render(text)
