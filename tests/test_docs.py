"""The operator's documentation keeps up with the code: every environment variable the settings
read is documented in docs/configuration.md, and the README's links to docs/ resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def settings_variables() -> set[str]:
    source = (ROOT / "config" / "settings.py").read_text()
    return set(re.findall(r"\b(?:env(?:\.[a-z_]+)?|env_bool)\(\s*\"([A-Z][A-Z0-9_]+)\"", source))


def test_every_setting_is_documented() -> None:
    names = settings_variables()
    assert len(names) > 50, "the pattern no longer finds the settings' variables"
    documented = (ROOT / "docs" / "configuration.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in documented)
    assert not missing, f"settings read but not in docs/configuration.md: {missing}"


def test_readme_links_to_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README no longer links to docs/"
    for link in links:
        assert (ROOT / link).is_file(), link
