"""The chart module's geometry (config/charts.py): scales and ticks, and each kind of chart
placing its marks where its numbers say, checked by inverting the drawn coordinates."""

from __future__ import annotations

from typing import Any

import pytest

from config import charts
from config.charts import Point, Scale


def test_scale_maps_and_inverts() -> None:
    s = Scale(0.0, 1.0, 100.0, 600.0)
    assert (s(0), s(0.5), s(1)) == (100.0, 350.0, 600.0)
    assert s.invert(225.0) == pytest.approx(0.25)
    down = Scale(0.0, 1.0, 200.0, 0.0)  # a y axis: larger values higher up
    assert down(0.75) == 50.0
    assert Scale(3.0, 3.0, 0.0, 10.0)(3.0) == 5.0  # a zero-width domain lands in the middle


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (900.0, 1100.0, [900.0, 950.0, 1000.0, 1050.0, 1100.0]),
        (0.0, 100.0, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
        (0.0, 10.0, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]),
    ],
)
def test_ticks_are_round_and_inside(lo: float, hi: float, expected: list[float]) -> None:
    assert charts.ticks(lo, hi) == pytest.approx(expected)


def test_nice_domain_rounds_outwards() -> None:
    assert charts.nice_domain(912.3, 1087.9) == (900.0, 1100.0)
    assert charts.nice_domain(0.43, 0.71) == pytest.approx((0.4, 0.8))  # step 0.1 for a 0.28 span
    lo, hi = charts.nice_domain(5.0, 5.0)
    assert lo < 5.0 < hi
    assert charts.nice_step(7.0, 5) == 2.0 and charts.nice_step(0.0) == 1.0


def _inverse(chart: charts.Chart, axis: str = "x") -> Any:
    """Pixels back to values, as the drawing shows them: from the axis' first and last ticks."""
    ticks = chart.x_ticks if axis == "x" else chart.y_ticks
    return Scale(ticks[0].value, ticks[-1].value, ticks[0].pos, ticks[-1].pos).invert


def test_forest_plot_rows_follow_the_given_order_and_intervals_land_on_their_values() -> None:
    rows = [
        ("gpt-big", [Point("human", 1120.0, 1080.0, 1170.0, 40), Point("ai", 1100.0, 1060.0, 1150.0, 40)]),
        ("small", [Point("human", 880.0, 830.0, 925.0, 40)]),
    ]
    chart = charts.interval_chart(
        key="lb",
        title="Ratings",
        rows=rows,
        series={"human": ("Annotators", "#000", "dot"), "ai": ("AI", "#111", "dot")},
        columns=["model"],
        table=[],
        x_label="rating",
        reference=1000.0,
    )
    assert [b.label for b in chart.bands] == ["gpt-big", "small"]
    top, bottom = chart.bands
    assert top.y < bottom.y and [m.series for m in top.marks] == ["human", "ai"]
    assert top.marks[0].y < top.marks[1].y  # side by side: one line per source within the row
    back = _inverse(chart)
    for band, (_, points) in zip(chart.bands, rows, strict=True):
        for mark, p in zip(band.marks, points, strict=True):
            assert back(mark.x) == pytest.approx(p.value, abs=0.5)
            assert back(mark.x_low) == pytest.approx(p.low, abs=0.5)
            assert back(mark.x_high) == pytest.approx(p.high, abs=0.5)
    # The domain covers every interval: nothing is drawn outside the plot.
    xs = [x for b in chart.bands for m in b.marks for x in (m.x_low, m.x_high)]
    assert chart.left <= min(xs) and max(xs) <= chart.right
    assert chart.reference is not None and back(chart.reference.pos) == pytest.approx(1000.0, abs=0.5)
    assert "gpt-big: Annotators 1120 (1080 to 1170)" in chart.desc
    assert [e.label for e in chart.legend] == ["Annotators", "AI"]


def test_rows_without_a_value_draw_no_mark_and_an_empty_chart_says_why() -> None:
    chart = charts.interval_chart(
        key="r",
        title="Reliability",
        rows=[("ann", [Point("agreement", 0.8, 0.6, 0.9, 20), Point("gold", None)])],
        series={"agreement": ("Agreement", "#000", "dot"), "gold": ("Gold", "#111", "diamond")},
        columns=[],
        table=[],
        x_label="share",
        domain=(0.0, 1.0),
    )
    assert [m.series for m in chart.bands[0].marks] == ["agreement"] and not chart.empty
    assert [e.label for e in chart.legend] == ["Agreement"]  # no gold figure anywhere: no legend entry
    nothing = charts.interval_chart(
        key="n", title="t", rows=[], series={}, columns=[], table=[], x_label="", empty="No models."
    )
    assert nothing.empty == "No models."


def test_stacked_bars_split_each_bar_in_proportion_to_the_counts() -> None:
    chart = charts.stacked_bars(
        key="labels",
        title="Labels",
        rows=[("annotators", {"A": 30, "B": 10, "tie": 10}), ("judge", {"A": 5, "B": 15, "tie": 0})],
        categories={"A": ("A", "#000"), "B": ("B", "#111"), "tie": ("tie", "#222")},
        columns=[],
        table=[],
    )
    full = chart.right - chart.left
    people, judge = chart.bands
    assert [s.width for s in people.segments] == pytest.approx([0.6 * full, 0.2 * full, 0.2 * full], abs=0.2)
    assert people.segments[1].x == pytest.approx(people.segments[0].x + people.segments[0].width, abs=0.2)
    assert [s.width for s in judge.segments] == pytest.approx([0.25 * full, 0.75 * full, 0.0], abs=0.2)
    assert (people.total, judge.total) == (50, 20)
    assert "annotators: A 30, B 10, tie 10 (of 50)" in chart.desc


def test_stacked_bars_on_a_count_axis_share_one_scale() -> None:
    chart = charts.stacked_bars(
        key="budget",
        title="Budget",
        rows=[("items", {"spent": 30, "left": 20, "ai": 150})],
        categories={"spent": ("Spent", "#000"), "left": ("Left", "#111"), "ai": ("AI", "#222")},
        columns=[],
        table=[],
        shares=False,
        reference=50.0,
    )
    back = _inverse(chart)
    spent, left, ai = chart.bands[0].segments
    assert back(spent.x + spent.width) == pytest.approx(30, abs=0.5)
    assert back(left.x + left.width) == pytest.approx(50, abs=0.5)
    assert back(ai.x + ai.width) == pytest.approx(200, abs=0.5)
    assert back(chart.reference.pos) == pytest.approx(50, abs=0.5)


def test_line_chart_places_weeks_in_order_and_values_on_the_y_scale() -> None:
    chart = charts.line_chart(
        key="drift",
        title="Drift",
        series=[
            ("ann1", [("2026-W02", 0.5, 10), ("2026-W01", 0.9, 40)]),
            ("ann2", [("2026-W03", 0.25, 5)]),
        ],
        columns=[],
        table=[],
        x_label="week",
        y_label="agreement",
        y_domain=(0.0, 1.0),
    )
    ann1, ann2 = chart.series
    # Weeks sorted along x, whatever order the points came in; shared across series.
    by_week = {p.x_value: p.x for s in chart.series for p in s.points}
    assert by_week["2026-W01"] < by_week["2026-W02"] < by_week["2026-W03"]
    back = _inverse(chart, "y")
    assert [back(p.y) for p in ann1.points] == pytest.approx([0.5, 0.9], abs=0.01)
    assert back(ann2.points[0].y) == pytest.approx(0.25, abs=0.01)
    # A dot's area grows with its n: the 40-judgment dot is the largest.
    radii = {p.n: p.r for s in chart.series for p in s.points}
    assert radii[40] > radii[10] > radii[5]
    assert ann1.path.startswith("M") and ann1.path.count("L") == 1
    assert "ann1: 2026-W02: 0.5 (n=10), 2026-W01: 0.9 (n=40)" in chart.desc


def test_numeric_line_chart_and_its_reference_rule() -> None:
    chart = charts.line_chart(
        key="curve",
        title="Curve",
        series=[("learned", [(0, 0.7, None), (50, 0.9, None), (100, 1.0, None)])],
        columns=[],
        table=[],
        x_label="budget",
        y_label="accuracy",
        x_numeric=True,
        reference=25.0,
    )
    back = _inverse(chart)
    assert [back(p.x) for p in chart.series[0].points] == pytest.approx([0, 50, 100], abs=0.5)
    assert back(chart.reference.pos) == pytest.approx(25, abs=0.5)
    assert all(p.r == 3.0 for p in chart.series[0].points)  # no n: every dot the same size


def test_long_legends_wrap_inside_the_chart() -> None:
    names = [f"annotator-with-a-long-name-{k}" for k in range(8)]
    chart = charts.line_chart(
        key="many",
        title="Many",
        series=[(n, [("2026-W01", 0.5, 1)]) for n in names],
        columns=[],
        table=[],
        x_label="",
        y_label="",
    )
    assert max(e.y for e in chart.legend) > min(e.y for e in chart.legend)
    assert all(e.x + 20 + len(e.label) * charts.CHAR_PX <= chart.width for e in chart.legend)
    assert chart.top > max(e.y for e in chart.legend)  # the plot starts below the legend
