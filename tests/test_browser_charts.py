"""The dashboards' charts in a real Chromium, on a project with four weeks of data: each chart is
drawn from the numbers its page shows (read back from the SVG's geometry, through the axis
ticks), its table is one click away and its CSV holds the same numbers; the pages' CSP is not
tripped. With CHART_SCREENSHOTS=<folder> the test also saves a screenshot of each dashboard.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership
from annotation.services import membership_set
from models_srv.models import DataSnapshot, RewardModelVersion
from tests import test_browser_a11y as a11y
from tests.conftest import jsonl, login

pytestmark = pytest.mark.django_db(transaction=True)

MODELS = {"model-large": 3, "model-medium": 2, "model-small": 1}  # planted strength
ANNOTATORS = {"ann-kim": 0.92, "ann-lee": 0.85, "ann-ng": 0.62}  # chance of picking the stronger
WEEKS = 4


def build_dashboard_project(make_user: Any, make_project: Any, items: int = 90, judged: int = 60) -> Any:
    """Three models compared by three annotators (one noisy, worse every week) on `judged` items
    and by an AI judge that favours the response shown first on all `items`, over four weeks;
    gold answers; three reward-model versions; a human budget of 80 % of the items."""
    rng = random.Random(7)
    curator = make_user("cura", can_create=True)
    project = make_project("dash", curator=curator, overlap=3, human_budget=0.8, routing_policy="learned")
    names = list(MODELS)
    rows = []
    for i in range(items):
        a, b = rng.sample(names, 2)
        rows.append(
            {
                "id": f"d{i}",
                "prompt": f"Question {i}: explain step {i % 7}.",
                "response_a": f"{a} says " + "so " * rng.randint(3, 40),
                "response_b": f"{b} says " + "so " * rng.randint(3, 40),
                "model_a": a,
                "model_b": b,
                "metadata": {"category": ("math", "chat", "code")[i % 3]},
            }
        )
    import_items(project=project, fileobj=jsonl(rows))
    people = {}
    for name in ANNOTATORS:
        user = make_user(name)
        membership_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
        people[name] = Labeler.objects.create(kind="human", user=user, name=name)
    judge = Labeler.objects.create(project=project, kind="llm", name="judge-llm", config={"model": "m"})
    start = timezone.now() - timedelta(weeks=WEEKS)
    judgments, week_of = [], []
    for k, item in enumerate(Item.objects.filter(project=project).order_by("id")):
        week = min(k, judged - 1) * WEEKS // judged
        sa, sb = (MODELS[r["model"]] for r in item.responses)
        better = "A" if sa > sb else "B"
        worse = "B" if better == "A" else "A"
        for name, skill in ANNOTATORS.items() if k < judged else ():
            drift = -0.15 * week if name == "ann-ng" else 0.0  # the noisy one gets worse
            choice = better if rng.random() < skill + drift else worse if rng.random() < 0.8 else "tie"
            order = rng.choice([[0, 1], [1, 0]])
            payload = {"pairwise": {"choice": choice, "strength": 0 if choice == "tie" else rng.choice([1, 2])}}
            judgments.append(
                Judgment(item=item, labeler=people[name], payload=payload, response_order=order, schema_version=1)
            )
            week_of.append(week)
        # The AI judge: right 75 % of the time, and it prefers what it saw first when it is unsure.
        shown = [rng.choice([[0, 1], [1, 0]]) for _ in range(2)]
        verdicts = []
        for order in shown:
            stored = better if rng.random() < 0.75 else worse
            first = "A" if order[0] == 0 else "B"
            pick = "A" if rng.random() < 0.3 else ("A" if stored == first else "B")
            verdicts.append({"choice": pick, "strength": 1})
        stored_choices = [
            ("A" if o[0] == 0 else "B") if v["choice"] == "A" else ("B" if o[0] == 0 else "A")
            for o, v in zip(shown, verdicts, strict=True)
        ]
        ai_choice = stored_choices[0] if stored_choices[0] == stored_choices[1] else "tie"
        raw = {"orders": shown, "verdicts": verdicts, "order_consistent": stored_choices[0] == stored_choices[1]}
        judgments.append(
            Judgment(
                item=item,
                labeler=judge,
                payload={"pairwise": {"choice": ai_choice, "strength": 1}},
                raw_output=json.dumps(raw),
                schema_version=1,
                confidence=0.8,
            )
        )
        week_of.append(week)
    created = Judgment.objects.bulk_create(judgments)
    for week in range(WEEKS):
        ids = [j.id for j, w in zip(created, week_of, strict=True) if w == week]
        Judgment.objects.filter(id__in=ids).update(created_at=start + timedelta(weeks=week, days=1))
    # Gold answers: each annotator's accuracy on five gold items.
    gold = [
        {
            "id": f"g{i}",
            "prompt": f"Gold {i}",
            "response_a": "right",
            "response_b": "wrong",
            "gold_answer": {"pairwise": {"choice": "A", "strength": 1}},
        }
        for i in range(5)
    ]
    import_items(project=project, fileobj=jsonl(gold))
    for n, name in enumerate(ANNOTATORS):
        for k, item in enumerate(Item.objects.filter(project=project, is_gold=True).order_by("id")):
            right = k < 5 - n  # 5, 4 and 3 of 5
            Judgment.objects.create(
                item=item,
                labeler=people[name],
                payload={"pairwise": {"choice": "A" if right else "B", "strength": 1}},
                gold_score=1.0 if right else 0.0,
                schema_version=1,
            )
    snapshot = DataSnapshot.objects.create(project=project, counts={"judgments": len(created), "eval_items": 200})
    for version, (acc, shorter, longer) in enumerate([(0.58, 0.52, 0.48), (0.64, 0.55, 0.45), (0.71, 0.56, 0.44)], 1):
        RewardModelVersion.objects.create(
            project=project,
            version=version,
            status="succeeded",
            is_current=version == 3,
            config={"mode": "top", "ensemble": 3},
            snapshot=snapshot,
            metrics={
                "pairwise": {
                    "accuracy": acc,
                    "n": 200,
                    "ece": 0.05,
                    "baseline_prefer_shorter": shorter,
                    "baseline_prefer_longer": longer,
                }
            },
        )
    return project


# ---------------------------------------------------------------------------------------------
# Reading a chart back in the browser

READ_CHART = """(key) => {
  const svg = document.querySelector(`[data-testid="chart-${key}"]`);
  const axis = (name) => [...svg.querySelectorAll(`[data-axis="${name}"] text[data-value]`)]
      .map(t => [parseFloat(t.dataset.value), parseFloat(t.dataset.pos)]);
  const rows = [...svg.querySelectorAll('g.row')].map(g => ({
    label: g.dataset.label,
    total: g.dataset.total ? parseFloat(g.dataset.total) : null,
    marks: [...g.querySelectorAll('g.mark')].map(m => {
      const dot = m.querySelector('.dot'), line = m.querySelector('line.interval');
      const end = (name) => line ? parseFloat(line.getAttribute(name)) : null;
      return {series: m.dataset.series, value: parseFloat(m.dataset.value), x: parseFloat(dot.dataset.x),
              x1: end('x1'), x2: end('x2')};
    }),
    segments: [...g.querySelectorAll('g.segment')].map(s => ({
      category: s.dataset.category, count: parseFloat(s.dataset.count),
      width: s.querySelector('rect').getBBox().width})),
  }));
  const series = [...svg.querySelectorAll('g.series')].map(g => ({
    name: g.dataset.series,
    points: [...g.querySelectorAll('circle.point')].map(c => ({
      x: c.dataset.x, value: parseFloat(c.dataset.value), n: c.dataset.n ? parseInt(c.dataset.n) : null,
      cy: parseFloat(c.getAttribute('cy')), cx: parseFloat(c.getAttribute('cx'))})),
    path: g.querySelector('path').getAttribute('d'),
  }));
  return {x: axis('x'), y: axis('y'), rows, series, title: svg.querySelector('title').textContent,
          labelledby: svg.getAttribute('aria-labelledby'), width: svg.getBoundingClientRect().width};
}"""


def _invert(ticks: list[list[float]]) -> Any:
    """Pixels back to values along an axis, from its first and last ticks."""
    (v0, p0), (v1, p1) = ticks[0], ticks[-1]
    return lambda px: v0 + (px - p0) / (p1 - p0) * (v1 - v0)


def _table(page: Any, testid: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"[data-testid='{testid}'] tbody tr, [data-testid='{testid}'] > tr",
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => td.textContent.trim()))",
    )


def _csv(page: Any, key: str) -> list[dict[str, str]]:
    href = page.get_attribute(f"figure[data-chart='{key}'] a[download]", "href")
    response = page.request.get(href)
    assert response.status == 200 and response.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.text())))


def _shoot(page: Any, name: str) -> None:
    """Check the page with axe-core (where installed) and save a screenshot where asked."""
    if a11y.AXE.exists():
        found = a11y._axe(page, a11y.AXE.read_text())
        serious = [f"{v['id']}: {v['help']} at {v['targets']}" for v in found if v["impact"] in a11y.FAILING_IMPACTS]
        assert not serious, f"{name}: {serious}"
    folder = os.environ.get("CHART_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_dashboards_draw_their_charts_from_the_numbers_they_show(page, make_user, make_project) -> None:
    project = build_dashboard_project(make_user, make_project)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    login(page, "cura", "cura-pw-123")
    page.goto(f"/p/{project.slug}/quality/")

    # Forest plot: one row per model in the human leaderboard's order; dot and interval ends at
    # the table's rating and CI (read back through the axis ticks), for human and AI labels.
    forest = page.evaluate(READ_CHART, "leaderboard")
    back = _invert(forest["x"])
    human = _table(page, "leaderboard-human")
    assert [r["label"] for r in forest["rows"]] == [r[1] for r in human] and len(human) == 3
    assert [r[1] for r in human] == list(MODELS)  # the planted order is recovered
    for source in ("human", "ai"):
        table = {r[1]: r for r in _table(page, f"leaderboard-{source}")}
        for row in forest["rows"]:
            (mark,) = [m for m in row["marks"] if m["series"] == source]
            rating, (low, high) = (
                float(table[row["label"]][2]),
                map(float, table[row["label"]][3].split(" \N{EN DASH} ")),
            )
            assert back(mark["x"]) == pytest.approx(rating, abs=0.6)
            assert (back(mark["x1"]), back(mark["x2"])) == pytest.approx((low, high), abs=0.6)
    assert all(len(r["marks"]) == 2 for r in forest["rows"])  # humans and AI side by side
    board = _csv(page, "leaderboard")
    assert {(r["source"], r["model"], float(r["rating"])) for r in board} == {
        (m["series"], r["label"], m["value"]) for r in forest["rows"] for m in r["marks"]
    }

    # Label distribution: each bar's segments are as wide as their share of the row's count.
    labels = page.evaluate(READ_CHART, "labels")
    biases = {r[0]: r for r in _table(page, "biases")}
    for row in labels["rows"]:
        counts = [int(v) for v in biases[row["label"]][2].split(" / ")]
        assert [s["count"] for s in row["segments"]] == [c for c in counts if c]
        full = sum(s["width"] for s in row["segments"])
        for s in row["segments"]:
            assert s["width"] / full == pytest.approx(s["count"] / sum(counts), abs=0.01)
    assert {r["label"] for r in labels["rows"]} == {"annotators", "judge-llm"}

    # Biases: the AI judge's shown-first rate drawn where the table says, its p-value printed.
    bias = page.evaluate(READ_CHART, "biases")
    back = _invert(bias["x"])
    judge_row = next(r for r in bias["rows"] if r["label"] == "judge-llm")
    first = next(m for m in judge_row["marks"] if m["series"] == "first")
    shown_first = float(biases["judge-llm"][3].split()[0])
    assert back(first["x"]) == pytest.approx(shown_first, abs=0.005) and shown_first > 0.6
    note = page.locator("[data-testid=chart-biases] g.row[data-label='judge-llm'] text.note").text_content()
    first_p, longer_p = (biases["judge-llm"][c].split("(")[1].split(";")[0] for c in (3, 4))
    assert first_p == "0.0" and note == f"first p<0.0001 · longer p={longer_p}"  # 0.0 is below the 4th place

    # Reliability: each annotator's agreement dot at the annotators table's figure, with an interval around it.
    rel = page.evaluate(READ_CHART, "reliability")
    back = _invert(rel["x"])
    agreement = {r[0]: float(r[3].split()[0]) for r in _table(page, "annotators")}
    for row in rel["rows"]:
        mark = next(m for m in row["marks"] if m["series"] == "agreement")
        assert back(mark["x"]) == pytest.approx(agreement[row["label"]], abs=0.005)
        assert back(mark["x1"]) < agreement[row["label"]] < back(mark["x2"])
    assert agreement["ann-kim"] > agreement["ann-ng"]

    # Drift: real lines, one point per week with a judgment count, at the weekly table's shares.
    drift = page.evaluate(READ_CHART, "drift_annotators")
    back_y = _invert(drift["y"])
    weekly = _csv(page, "drift_annotators")
    by_key: dict[str, list[dict[str, str]]] = {}
    for r in weekly:
        by_key.setdefault(r["key"], []).append(r)
    assert sorted(s["name"] for s in drift["series"]) == sorted(ANNOTATORS)
    for s in drift["series"]:
        assert len(s["points"]) == WEEKS and s["path"].count("L") == WEEKS - 1
        assert [(p["x"], p["n"]) for p in s["points"]] == [(r["week"], int(r["n"])) for r in by_key[s["name"]]]
        assert [back_y(p["cy"]) for p in s["points"]] == pytest.approx(
            [float(r["share"]) for r in by_key[s["name"]]], abs=0.01
        )
        xs = [p["cx"] for p in s["points"]]
        assert xs == sorted(xs)
    ng = next(s for s in drift["series"] if s["name"] == "ann-ng")
    assert ng["points"][-1]["value"] < ng["points"][0]["value"]  # the planted drift shows
    # The table under the chart opens with one click.
    table = page.locator("figure[data-chart='drift_annotators'] details.chart-table")
    assert not table.locator("table").is_visible()
    table.locator("summary").click()
    assert table.locator("tbody tr").count() == len(weekly)
    assert page.evaluate(READ_CHART, "alpha_weekly")["series"][0]["points"][0]["n"] > 0
    _shoot(page, "quality")

    # Reward-model versions: accuracy and its interval per version against the length baselines.
    page.goto(f"/p/{project.slug}/models/")
    versions = page.evaluate(READ_CHART, "rm_versions")
    back = _invert(versions["x"])
    # In the table's order (newest first).
    order = page.eval_on_selector_all("tr[data-version]", "rows => rows.map(r => 'v' + r.dataset.version)")
    assert [r["label"] for r in versions["rows"]] == ["v3 (current)", "v2", "v1"] and order == ["v3", "v2", "v1"]
    for row, (acc, shorter, longer) in zip(
        versions["rows"], [(0.71, 0.56, 0.44), (0.64, 0.55, 0.45), (0.58, 0.52, 0.48)], strict=True
    ):
        marks = {m["series"]: m for m in row["marks"]}
        assert back(marks["accuracy"]["x"]) == pytest.approx(acc, abs=0.002)
        assert back(marks["shorter"]["x"]) == pytest.approx(shorter, abs=0.002)
        assert back(marks["longer"]["x"]) == pytest.approx(longer, abs=0.002)
        # Wilson 95 % interval of acc on 200 pairs: about ±0.065.
        assert back(marks["accuracy"]["x2"]) - back(marks["accuracy"]["x1"]) == pytest.approx(0.13, abs=0.01)
    _shoot(page, "reward_models")

    # Routing: the budget bar splits spent and left as the figures above it say; the simulated
    # curves start at the AI's own accuracy (no budget) and reach 1.0 with every item to people.
    page.goto(f"/p/{project.slug}/routing/")
    budget = page.evaluate(READ_CHART, "routing_budget")
    back = _invert(budget["x"])
    used = int(page.locator("[data-testid=used]").inner_text().replace(",", ""))
    (bar,) = budget["rows"]
    parts = {s["category"]: s for s in bar["segments"]}
    budget_items = int(page.locator("[data-testid=budget]").inner_text())
    assert (used, budget_items, bar["total"]) == (60, 72, 90)  # 80 % of the 90 items, 60 judged
    assert (parts["spent"]["count"], parts["left"]["count"], parts["ai"]["count"]) == (60, 12, 18)
    origin = budget["x"][0][1]  # the axis starts at 0 items
    assert back(origin) == 0
    assert back(origin + parts["spent"]["width"]) == pytest.approx(60, abs=0.5)
    assert back(origin + parts["spent"]["width"] + parts["left"]["width"]) == pytest.approx(72, abs=0.5)
    assert "over" not in parts  # nothing over budget: no segment drawn
    page.wait_for_selector("[data-testid=chart-routing_curve]")  # simulated apart, loaded by htmx
    curve = page.evaluate(READ_CHART, "routing_curve")
    assert [s["name"] for s in curve["series"]] == ["Current policy (learned router)", "Random"]
    back_y = _invert(curve["y"])
    for s in curve["series"]:
        assert len(s["points"]) == 11
        assert back_y(s["points"][-1]["cy"]) == pytest.approx(1.0, abs=0.01)
        assert [p["value"] for p in s["points"]] == sorted(p["value"] for p in s["points"])
    learned, rand = curve["series"]
    assert learned["points"][0]["value"] == rand["points"][0]["value"] < 0.9
    _shoot(page, "routing")
    assert not errors, errors
