"""Dependencies point one way. From the bottom up:

    config  <-  accounts  <-  annotation  <-  models_srv  <-  curation

`config` (settings, jobs, health, security) imports no app, except the two modules that wire the
apps together: the URL table and the HTTP API. `accounts` (users' tokens, token auth, login
throttling) imports no domain app; `annotation` (projects, items, judgments, the queue, the audit
log) imports accounts; `models_srv` (AI labelers, routing, reward models) imports annotation;
`curation` (metrics, curation actions, exports) imports all of them. Every import counts, at
module level or inside a function, since a lazy import is a dependency all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["config", "accounts", "annotation", "models_srv", "curation"]
# Modules whose job is to import the apps: they sit on top whatever their folder.
WIRING = {"config/urls.py", "config/api.py"}
# Deliberate imports up the layers, each with its reason. The test fails when one goes away, so
# the list never claims more than is true.
EXCEPTIONS = {
    ("accounts/login.py", "annotation.rows"): (
        "the session user is read on every request through the hot path's prepared-statement row "
        "loader (a plain ORM get costs about 1 ms more per request); the loader is generic but "
        "lives with the annotation queue it was written for"
    ),
    ("models_srv/routing.py", "curation.selectors"): (
        "routing keeps an item a curator sent back to humans with humans until the action is "
        "undone; only curation's action log knows that, and moving it below models_srv would "
        "take the curation model with it"
    ),
}


def _imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _upward(rel: str, tree: ast.Module) -> list[tuple[str, int, str]]:
    """(module, line, imported) for each import of a layer above `rel`'s."""
    if rel in WIRING:
        return []
    own = LAYERS.index(rel.split("/")[0])
    out = []
    for line, name in _imports(tree):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > own:
            out.append((rel, line, name))
    return out


def _modules() -> list[tuple[str, ast.Module]]:
    found = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found.append((rel, ast.parse(path.read_text(), filename=rel)))
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [u for rel, tree in _modules() for u in _upward(rel, tree)]
    unexpected = [f"{rel}:{line} imports {name}" for rel, line, name in upward if (rel, name) not in EXCEPTIONS]
    assert unexpected == []
    still_there = {(rel, name) for rel, _, name in upward}
    assert set(EXCEPTIONS) <= still_there, f"no longer imported, drop from EXCEPTIONS: {set(EXCEPTIONS) - still_there}"


def test_every_app_is_in_a_layer() -> None:
    apps = {p.parent.name for p in ROOT.glob("*/apps.py")}
    assert apps <= set(LAYERS), f"place {sorted(apps - set(LAYERS))} in LAYERS"


def test_the_check_sees_an_upward_import_at_module_level_and_inside_a_function() -> None:
    tree = ast.parse(
        "from annotation.models import Item\n"
        "import curation.metrics\n"
        "def f():\n"
        "    from models_srv.routing import route_project\n"
        "    from accounts.auth import scoped\n"
    )
    assert _upward("annotation/x.py", tree) == [
        ("annotation/x.py", 2, "curation.metrics"),
        ("annotation/x.py", 4, "models_srv.routing"),
    ]
    assert _upward("config/urls.py", tree) == []
    assert [name for _, _, name in _upward("config/jobs.py", tree)] == [
        "annotation.models",
        "curation.metrics",
        "models_srv.routing",
        "accounts.auth",
    ]
