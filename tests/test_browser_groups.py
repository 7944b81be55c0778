"""The Quality page's preference groups panel in a real Chromium, on a project whose pluralistic
reward model was trained on two planted camps: the chart draws each group's longer-wins rate and
agreement where its table says, the table is one click away, the CSV holds the same numbers, axe
finds nothing serious, and the CSP is not tripped. With CHART_SCREENSHOTS=<folder> the panel is
saved as groups.png. Two annotators who joined after training are placed first, and listed so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import login
from tests.test_browser_charts import READ_CHART, _csv, _invert, _shoot
from tests.test_preference_groups import camps_project, newcomers

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_groups_panel_draws_what_it_shows(page, make_user, make_project, settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path
    from annotation.importing import import_items
    from models_srv import services
    from models_srv.selectors import pluralistic_latest
    from tests.conftest import jsonl

    project = camps_project(make_project, make_user("cura"))
    import_items(project=project, fileobj=jsonl(newcomers()))  # two annotators join later, and are placed
    services.place_annotators(version_id=pluralistic_latest(project).version.id)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    login(page, "cura", "cura-pw-123")
    page.goto(f"/p/{project.slug}/quality/")
    panel = page.locator("[data-testid=groups-panel]")
    assert panel.locator("[data-testid=groups-source]").is_visible()

    chart = page.evaluate(READ_CHART, "groups")
    back = _invert(chart["x"])
    assert [r["label"] for r in chart["rows"]] == ["Group 1 (5)", "Group 2 (5)", "Across groups"]
    rows = {r["group"]: r for r in _csv(page, "groups")}
    for row, key in zip(chart["rows"], ("1", "2", "across"), strict=True):
        marks = {m["series"]: m for m in row["marks"]}
        assert back(marks["agreement"]["x"]) == pytest.approx(float(rows[key]["agreement"]), abs=0.005)
        if key != "across":
            assert back(marks["longer"]["x"]) == pytest.approx(float(rows[key]["longer_wins"]), abs=0.005)
            assert back(marks["longer"]["x1"]) < float(rows[key]["longer_wins"]) < back(marks["longer"]["x2"])
    longer = sorted(float(rows[k]["longer_wins"]) for k in ("1", "2"))
    assert longer[0] < 0.12 and longer[1] > 0.88  # one camp prefers the longer response, the other the shorter
    assert float(rows["across"]["agreement"]) < 0.2 < 0.8 < min(float(rows[k]["agreement"]) for k in ("1", "2"))

    table = panel.locator("figure[data-chart='groups'] details.chart-table")
    assert not table.locator("table").is_visible()
    table.locator("summary").click()
    assert table.locator("tbody tr").count() == 3
    table.locator("summary").click()
    members = sorted(t.strip() for t in panel.locator("[data-testid^=group-] td:first-child").all_text_contents())
    assert members == sorted([f"ann{i}" for i in range(8)] + ["new_long placed from 12", "new_short placed from 12"])
    assert panel.locator("[data-testid=groups-items] tbody tr, [data-testid=groups-items] > tr").count() >= 10

    _shoot(page, "quality_groups")  # axe, and the whole page where asked
    folder = os.environ.get("CHART_SCREENSHOTS")
    if folder:
        panel.screenshot(path=str(Path(folder) / "groups.png"))
    assert not errors, errors
