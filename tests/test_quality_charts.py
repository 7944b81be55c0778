"""The Quality page's chart data: alpha by week, the Wilson intervals behind the dots, and each
chart's CSV (the chart's own rows, for the project's curators only)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler
from curation import quality
from curation.metrics import krippendorff_alpha, wilson_interval
from curation.quality_charts import CHART_KEYS, quality_charts
from tests.conftest import jsonl

# Week 1: q1, q2 unanimous; week 2: q3, q4 split. Strengths signed: A = -1, B = +1.
VOTES = {
    "q1": ["A", "A", "A"],
    "q2": ["B", "B", "B"],
    "q3": ["A", "B", "A"],
    "q4": ["B", "A", "A"],
}


@pytest.fixture
def weekly(make_project, make_user, curator):
    project = make_project("wk", curator=curator, overlap=3)
    rows = [
        {"id": q, "prompt": q, "response_a": "a", "response_b": "bb", "model_a": "m1", "model_b": "m2"} for q in VOTES
    ]
    import_items(project=project, fileobj=jsonl(rows))
    items = {i.external_id: i for i in Item.objects.filter(project=project)}
    people = [Labeler.objects.create(kind="human", user=make_user(f"w{k}"), name=f"w{k}") for k in range(3)]
    monday = timezone.now() - timedelta(days=timezone.now().weekday() + 14)
    for n, (q, votes) in enumerate(VOTES.items()):
        for person, choice in zip(people, votes, strict=True):
            j = Judgment.objects.create(
                item=items[q], labeler=person, payload={"pairwise": {"choice": choice, "strength": 1}}, schema_version=1
            )
            Judgment.objects.filter(id=j.id).update(created_at=monday + timedelta(days=1 + 7 * (n // 2)))
    return project


def test_alpha_by_week_is_the_alpha_of_the_items_completed_that_week(weekly) -> None:
    rep = quality.report(weekly, bootstrap=0)
    first, second = rep["agreement_by_week"]
    assert (first["units"], second["units"]) == (2, 2)
    assert first["week"] < second["week"]
    assert first["alpha"] == 1.0  # unanimous
    signed = [[-1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]  # q3 and q4
    assert second["alpha"] == pytest.approx(krippendorff_alpha(signed, "ordinal"), abs=1e-3)
    assert second["alpha"] < 0.5


def test_annotator_and_bias_intervals_are_wilson_intervals_of_their_counts(weekly) -> None:
    rep = quality.report(weekly, bootstrap=0)
    w1 = next(a for a in rep["annotators"] if a["annotator"] == "w1")
    # w1 agrees with the other two on q1 and q2, not on q3 (they say A); on q4 they split: not compared.
    assert (w1["agreement_with_consensus"], w1["compared"]) == (0.667, 3)
    low, high = wilson_interval(2, 3)
    assert (w1["agreement_low"], w1["agreement_high"]) == (round(low, 3), round(high, 3))
    assert w1["gold_low"] is None and w1["gold_accuracy"] is None
    people = rep["biases"][0]
    n, share = people["longer_n"], people["longer_wins"]
    low, high = wilson_interval(round(share * n), n)
    assert (people["longer_low"], people["longer_high"]) == (round(low, 3), round(high, 3))


def test_each_chart_csv_holds_the_rows_the_chart_is_drawn_from(weekly, curator, outsider) -> None:
    charts = quality_charts(quality.cached_report(weekly, fresh=True))
    assert tuple(charts) == CHART_KEYS
    c = Client()
    c.force_login(curator)
    url = reverse("curation:chart_csv", args=[weekly.slug])
    for key in ("leaderboard", "reliability", "labels", "alpha_weekly", "drift_annotators"):
        response = c.get(url, {"chart": key})
        assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
        assert f'filename="wk-{key}.csv"' in response["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(response.content.decode())))
        assert rows[0] == charts[key].columns
        assert rows[1:] == charts[key].table_rows
    labels = list(csv.DictReader(io.StringIO(c.get(url, {"chart": "labels"}).content.decode())))
    assert labels == [{"labeler": "annotators", "A": "7", "B": "5", "tie": "0", "judgments": "12"}]
    index = list(csv.DictReader(io.StringIO(c.get(url).content.decode())))
    assert {r["chart"] for r in index} >= {*CHART_KEYS, "rm_versions", "routing_budget", "routing_curve"}
    assert c.get(url, {"chart": "nope"}).status_code == 400
    other = Client()
    other.force_login(outsider)
    assert other.get(url, {"chart": "labels"}).status_code == 404


def test_the_page_links_each_chart_to_its_csv_and_describes_it(weekly, curator) -> None:
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:quality", args=[weekly.slug])).content.decode()
    for key in CHART_KEYS:
        assert f"?chart={key}" in page
    assert 'role="img" aria-labelledby="chart-leaderboard-title chart-leaderboard-desc"' in page
    assert (
        '<desc id="chart-labels-desc">Label distribution (stored order) by labeler: A / B / tie. annotators: A 7, B 5'
        in page
    )
    assert "style=" not in page  # the CSP allows no inline styles


def test_alpha_below_zero_widens_the_axis_to_a_tick_under_it(weekly) -> None:
    rep = quality.report(weekly, bootstrap=0)
    rep["agreement_by_week"][1]["alpha"] = -0.3
    chart = quality_charts(rep)["alpha_weekly"]
    assert [t.value for t in chart.y_ticks] == [-0.5, 0.0, 0.5, 1.0]
    low = chart.series[0].points[1]
    assert chart.y_ticks[0].pos > low.y > chart.y_ticks[1].pos  # drawn between the -0.5 and 0 ticks
