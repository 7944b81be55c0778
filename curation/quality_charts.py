"""The Quality page's charts, built from its report (`quality.report`): each chart is drawn from
the same rows its table and CSV show (`config.charts`). Keys name the CSV (`chart_views`)."""

from __future__ import annotations

import math
from typing import Any

from config import charts
from config.charts import Chart, Point
from curation.quality import DRIFT_GROUPS

SOURCES = {"human": "Annotators", "imported": "Imported labels", "ai": "AI labelers"}
SOURCE_SERIES = {
    "human": ("From annotators", charts.PALETTE[0], "dot"),
    "imported": ("From imported labels", charts.PALETTE[2], "diamond"),
    "ai": ("From AI labelers", charts.PALETTE[1], "dot"),
}
LABEL_COLOURS = {"A": ("A", charts.PALETTE[0]), "B": ("B", charts.PALETTE[1]), "tie": ("tie", charts.PALETTE[7])}


def leaderboard(rep: dict[str, Any]) -> Chart:
    """Forest plot: each model's Bradley-Terry rating with its 95 % bootstrap interval, one line per
    source of labels; models in the order of the first source's ranking (annotators' first)."""
    board: dict[str, list[dict[str, Any]]] = rep["leaderboard"]
    order: list[str] = []
    for source in ("human", "imported", "ai"):
        order += [r["model"] for r in board.get(source, []) if r["model"] not in order]
    by = {(s, r["model"]): r for s, rows in board.items() for r in rows}
    rows = [
        (
            model,
            [
                Point(s, r["rating"], r["ci_low"], r["ci_high"], r["comparisons"])
                for s in board
                if (r := by.get((s, model))) is not None
            ],
        )
        for model in order
    ]
    table = [
        [s, r["rank"], r["model"], r["rating"], r["ci_low"], r["ci_high"], r["wins"], r["losses"], r["ties"]]
        for s, rs in board.items()
        for r in rs
    ]
    return charts.interval_chart(
        key="leaderboard",
        title="Model ratings (Bradley-Terry, 95% bootstrap interval), by source of labels",
        rows=rows,
        series={s: SOURCE_SERIES[s] for s in ("human", "imported", "ai") if s in board},
        columns=["source", "rank", "model", "rating", "ci_low", "ci_high", "wins", "losses", "ties"],
        table=table,
        x_label="rating (Elo scale: 400 points = 10:1 odds; mean 1000)",
        reference=1000.0 if rows else None,
        empty="No comparisons between named models yet.",
    )


def agreement_by_week(rep: dict[str, Any]) -> Chart:
    weeks = list(rep["agreement_by_week"])
    return charts.line_chart(
        key="alpha_weekly",
        title="Krippendorff's alpha among annotators, by week the items were completed",
        series=[("alpha (ordinal)", [(w["week"], w["alpha"], w["units"]) for w in weeks])],
        columns=["week", "alpha", "items"],
        table=[[w["week"], w["alpha"], w["units"]] for w in weeks],
        x_label="ISO week (dot area: items completed that week)",
        y_label="alpha",
        y_domain=_unit_or_wider([w["alpha"] for w in weeks if w["alpha"] is not None]),
        empty="No item has two annotators' judgments yet.",
    )


def reliability(rep: dict[str, Any]) -> Chart:
    """Each annotator's agreement with the others' majority and gold accuracy, with Wilson 95 %
    intervals: who is reliable, and how sure that is."""
    rows, table = [], []
    for a in rep["annotators"]:
        name = a["annotator"] + (" (imported)" if a["source"] == "imported" else "")
        points = [
            Point("agreement", a["agreement_with_consensus"], a["agreement_low"], a["agreement_high"], a["compared"]),
            Point("gold", a["gold_accuracy"], a["gold_low"], a["gold_high"], a["gold_items"]),
        ]
        rows.append((name, points))
        table.append(
            [
                a["annotator"],
                a["source"],
                a["agreement_with_consensus"],
                a["agreement_low"],
                a["agreement_high"],
                a["compared"],
                a["gold_accuracy"],
                a["gold_low"],
                a["gold_high"],
                a["gold_items"],
            ]
        )
    return charts.interval_chart(
        key="reliability",
        title="Annotator reliability: agreement with the others' majority and gold accuracy (95% Wilson interval)",
        rows=rows,
        series={
            "agreement": ("Agreement with the others' majority", charts.PALETTE[0], "dot"),
            "gold": ("Gold accuracy", charts.PALETTE[2], "diamond"),
        },
        columns=[
            "annotator",
            "source",
            "agreement",
            "agreement_low",
            "agreement_high",
            "compared",
            "gold_accuracy",
            "gold_low",
            "gold_high",
            "gold_items",
        ],
        table=table,
        x_label="share",
        domain=(0.0, 1.0),
        describe=lambda row, p: f"{'agreement' if p.series == 'agreement' else 'gold accuracy'} (n={p.n})",
        empty="No human or imported judgments yet.",
    )


def label_distribution(rep: dict[str, Any]) -> Chart:
    rows = [(b["labeler"], {k: b["distribution"].get(k, 0) for k in LABEL_COLOURS}) for b in rep["biases"]]
    return charts.stacked_bars(
        key="labels",
        title="Label distribution (stored order) by labeler: A / B / tie",
        rows=rows,
        categories=LABEL_COLOURS,
        columns=["labeler", "A", "B", "tie", "judgments"],
        table=[[name, c["A"], c["B"], c["tie"], sum(c.values())] for name, c in rows],
        x_label="share of the labeler's judgments (count in each segment)",
        empty="No judgments yet.",
    )


def biases(rep: dict[str, Any]) -> Chart:
    """Shown-first-wins and longer-wins rates per labeler with Wilson intervals, against 0.5, and
    their exact binomial p-values at the end of each row."""
    rows, notes, table = [], {}, []
    for b in rep["biases"]:
        points = [
            Point("first", b["first_shown_wins"], b["first_shown_low"], b["first_shown_high"], b["first_shown_n"]),
            Point("longer", b["longer_wins"], b["longer_low"], b["longer_high"], b["longer_n"]),
        ]
        rows.append((b["labeler"], points))
        notes[b["labeler"]] = (
            " · ".join(
                f"{name} {_p(p)}"
                for name, p in (("first", b["first_shown_p"]), ("longer", b["longer_p"]))
                if p is not None
            )
            or "n/a"
        )
        table.append(
            [
                b["labeler"],
                b["first_shown_wins"],
                b["first_shown_low"],
                b["first_shown_high"],
                b["first_shown_n"],
                b["first_shown_p"],
                b["longer_wins"],
                b["longer_low"],
                b["longer_high"],
                b["longer_n"],
                b["longer_p"],
            ]
        )
    return charts.interval_chart(
        key="biases",
        title="Position and length bias: how often the response shown first, and the longer one, wins (95% interval)",
        rows=rows,
        series={
            "first": ("Shown first wins", charts.PALETTE[3], "dot"),
            "longer": ("Longer wins", charts.PALETTE[5], "diamond"),
        },
        columns=[
            "labeler",
            "first_shown_wins",
            "first_shown_low",
            "first_shown_high",
            "first_shown_n",
            "first_shown_p",
            "longer_wins",
            "longer_low",
            "longer_high",
            "longer_n",
            "longer_p",
        ],
        table=table,
        x_label="share of decisive judgments (0.5 = no bias)",
        domain=(0.0, 1.0),
        reference=0.5,
        notes=notes,
        describe=lambda row, p: f"{'shown first wins' if p.series == 'first' else 'longer wins'} (n={p.n})",
        empty="No judgments yet.",
    )


def drift(rep: dict[str, Any], group: str) -> Chart:
    series = rep["drift"][group]
    return charts.line_chart(
        key=f"drift_{group}",
        title=f"Weekly agreement with consensus: {DRIFT_GROUPS[group].lower()}",
        series=[(key, [(p["bucket"], p["share"], p["n"]) for p in pts]) for key, pts in series.items()],
        columns=["key", "week", "share", "n"],
        table=[[key, p["bucket"], p["share"], p["n"]] for key, pts in series.items() for p in pts],
        x_label="ISO week (dot area: judgments behind the point)",
        y_label="agreement",
        y_domain=(0.0, 1.0),
        empty="Not enough overlapping judgments yet.",
    )


def groups(rep: dict[str, Any]) -> Chart:
    """Per preference group: how often its longer response wins and how often two of its members
    agree, with Wilson intervals; a last row for pairs of annotators from different groups."""
    panel = rep.get("groups") or {"groups": [], "agreement": {}}
    rows, table = [], []
    for g in panel["groups"]:
        longer, within = g["longer_wins"], g["within"]
        label = f"Group {g['group']} ({len(g['members'])})"
        rows.append((label, [_point("longer", longer), _point("agreement", within)]))
        table.append([g["group"], len(g["members"]), g["size"], *_interval(longer), *_interval(within)])
    across = panel["agreement"].get("across")
    if panel["groups"] and across:
        rows.append(("Across groups", [_point("agreement", across)]))
        table.append(["across", None, None, None, None, None, None, *_interval(across)])
    return charts.interval_chart(
        key="groups",
        title="Preference groups: how often the longer response wins, and how often two annotators agree",
        rows=rows,
        series={
            "longer": ("Longer wins", charts.PALETTE[5], "diamond"),
            "agreement": ("Annotator pairs agree", charts.PALETTE[0], "dot"),
        },
        columns=[
            "group",
            "members",
            "size",
            "longer_wins",
            "longer_low",
            "longer_high",
            "longer_n",
            "agreement",
            "agreement_low",
            "agreement_high",
            "pairs",
        ],
        table=table,
        x_label="share (95% Wilson interval; 0.5 = no length preference)",
        domain=(0.0, 1.0),
        reference=0.5 if rows else None,
        describe=lambda row, p: f"{'longer wins' if p.series == 'longer' else 'pairs agree'} (n={p.n})",
        empty="No pluralistic reward model has found preference groups yet.",
    )


def _interval(s: dict[str, Any]) -> list[Any]:
    """A share with its Wilson interval and count (`curation.groups`), as table cells."""
    return [s["share"], s["low"], s["high"], s["n"]]


def _point(series: str, s: dict[str, Any]) -> Point:
    return Point(series, *_interval(s))


def _p(value: float) -> str:
    """A p-value as printed: rounded to 4 places, so 0 reads "p<0.0001"."""
    return "p<0.0001" if value < 0.0001 else f"p={value}"


def _unit_or_wider(values: list[float]) -> tuple[float, float]:
    """[0, 1], widened by halves down to a negative alpha where there is one (worse than chance),
    so the lowest point has a tick at or below it."""
    return (math.floor(min([0.0, *values]) * 2) / 2, 1.0)


CHART_KEYS = (
    "leaderboard",
    "alpha_weekly",
    "reliability",
    "labels",
    "biases",
    *(f"drift_{g}" for g in DRIFT_GROUPS),
)
# The preference groups' chart (`groups`), apart: the page draws it only where a pluralistic reward
# model found groups; its CSV always answers.
GROUPS_KEY = "groups"


def quality_charts(rep: dict[str, Any]) -> dict[str, Chart]:
    """Every chart of the Quality page by key, in page order."""
    out = {
        "leaderboard": leaderboard(rep),
        "alpha_weekly": agreement_by_week(rep),
        "reliability": reliability(rep),
        "labels": label_distribution(rep),
        "biases": biases(rep),
    }
    for group in DRIFT_GROUPS:
        out[f"drift_{group}"] = drift(rep, group)
    return out
