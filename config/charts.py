"""Server-rendered SVG charts: the geometry, computed here; the markup, in the template partials of
`curation/_charts.html` (one per kind). No JavaScript and no style attributes: the pages' CSP
allows neither, so colours are SVG presentation attributes and layout is static CSS.

Three kinds cover the dashboards:
- `interval_chart`: rows of dots with a horizontal interval each, several series per row (a forest
  plot of ratings, reliabilities with their Wilson intervals, accuracy against baselines);
- `stacked_bars`: one horizontal bar per row split into categories, each bar 100 % (shares) or on
  a common count axis (budget spent and left);
- `line_chart`: series over weeks (ordinal x) or over a numeric x, dots sized by the number of
  observations behind each.

Every chart carries its data table (`columns`, `rows`: what the CSV download and the table under
the chart show, the same numbers the marks are drawn from) and a text alternative (`title` and
`desc`, referenced by the SVG's aria-labelledby). Each mark carries its values as data-*
attributes, so a browser test can check the drawing against the table.

Coordinates are in the SVG's user units (the viewBox is `width` x `height`); the SVG scales to
the page width. Nothing here reads the database: builders take plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

WIDTH = 720
FONT_PX = 12
CHAR_PX = 7.4  # a wide 12 px sans-serif character (DejaVu Sans), for the label column's width
# Categorical colours with at least 3:1 contrast against white (marks, not text).
PALETTE = ("#3b5bdb", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#495057")


def _px(value: float) -> float:
    return round(value, 1)


@dataclass(frozen=True)
class Scale:
    """Linear map from the data domain [lo, hi] to pixels [start, end]."""

    lo: float
    hi: float
    start: float
    end: float

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo
        t = 0.5 if span == 0 else (value - self.lo) / span
        return _px(self.start + t * (self.end - self.start))

    def invert(self, px: float) -> float:
        return self.lo + (px - self.start) / (self.end - self.start) * (self.hi - self.lo)


def nice_step(span: float, count: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about `count` intervals."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power * (1 + 1e-9):
            return m * power
    return 10 * power


def nice_domain(lo: float, hi: float, count: int = 5) -> tuple[float, float]:
    """[lo, hi] widened to multiples of a round step (a zero-width domain gets one step each side)."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, count)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values from lo to hi inclusive, about `count` intervals apart."""
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def fmt_number(value: float) -> str:
    """Tick labels: no trailing zeros (0.5, 1, 1000, 2.5)."""
    return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3g}"


def fmt_percent(value: float) -> str:
    return f"{value * 100:.0f}%"


@dataclass(frozen=True)
class Tick:
    value: float
    pos: float
    label: str


@dataclass(frozen=True)
class LegendEntry:
    label: str
    colour: str
    shape: str = "dot"  # "dot" | "diamond" | "line" | "dash" | "box"
    x: float = 0.0  # of the swatch
    y: float = 14.0  # of the text's baseline


def _legend(entries: Sequence[tuple[str, str, str]], left: float, right: float) -> list[LegendEntry]:
    """Swatches laid out left to right from `left`, wrapping before `right`, 18 px per line."""
    out, x, y = [], left, 14.0
    for label, colour, shape in entries:
        width = 22 + len(label) * CHAR_PX + 14
        if x + width > right and x > left:
            x, y = left, y + 18
        out.append(LegendEntry(label, colour, shape, _px(x), y))
        x += width
    return out


def _legend_height(legend: Sequence[LegendEntry]) -> float:
    return max((e.y for e in legend), default=14.0) + 20


@dataclass
class Chart:
    """What a chart partial renders: the kind, the box, the marks, the text alternative, the table."""

    key: str  # unique on the page: ids of the title and desc, the CSV's name
    kind: str  # "interval" | "bars" | "lines"
    title: str
    desc: str
    width: float
    height: float
    columns: list[str]
    rows: list[list[Any]]
    left: float = 0.0
    right: float = 0.0
    top: float = 0.0
    bottom: float = 0.0
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_label: str = ""
    y_label: str = ""
    legend: list[LegendEntry] = field(default_factory=list)
    reference: Tick | None = None  # a vertical rule (chance, the current budget)
    bands: list[Any] = field(default_factory=list)  # IntervalRow | BarRow
    series: list[Any] = field(default_factory=list)  # LineSeries
    empty: str = ""  # why nothing is drawn, when nothing is

    @property
    def table_rows(self) -> list[list[str]]:
        return [["" if v is None else str(v) for v in row] for row in self.rows]


# ---------------------------------------------------------------------------------------------
# Dots with intervals (the forest plot is one)


@dataclass(frozen=True)
class Point:
    """One mark in a row: `value` with an optional interval [low, high], of one series."""

    series: str
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int | None = None


@dataclass
class Mark:
    series: str
    label: str  # the series' label, for the mark's <title>
    value: float
    low: float | None
    high: float | None
    n: int | None
    x: float
    x_low: float | None
    x_high: float | None
    y: float
    colour: str
    shape: str


@dataclass
class IntervalRow:
    label: str
    y: float  # the band's centre: the row label's baseline
    y_top: float
    y_bottom: float
    marks: list[Mark]
    note: str = ""


def interval_chart(
    *,
    key: str,
    title: str,
    rows: Sequence[tuple[str, Sequence[Point]]],
    series: dict[str, tuple[str, str, str]],
    columns: list[str],
    table: list[list[Any]],
    x_label: str,
    domain: tuple[float, float] | None = None,
    reference: float | None = None,
    notes: dict[str, str] | None = None,
    fmt: Callable[[float], str] = fmt_number,
    describe: Callable[[str, Point], str] | None = None,
    empty: str = "Nothing to draw yet.",
) -> Chart:
    """One band per row, one line per series present in the row (dot at `value`, rule from `low`
    to `high`). `series` maps a series key to (label, colour, shape) in legend order; `notes`
    prints text at the right end of a row (p-values). The x domain is the data's (intervals and
    `reference` included), rounded out, unless given."""
    notes = notes or {}
    label_w = min(230.0, max(60.0, max((len(r[0]) for r in rows), default=4) * CHAR_PX + 16))
    note_w = max((len(n) for n in notes.values()), default=0) * CHAR_PX + (16 if notes else 0)
    left, right = label_w, WIDTH - 16 - note_w
    order = list(series)
    drawn = {p.series for _, ps in rows for p in ps if p.value is not None}
    legend = _legend([series[s] for s in order if s in drawn], left, WIDTH - 16)
    top = _legend_height(legend)
    values = [
        v for _, points in rows for p in points for v in (p.value, p.low, p.high) if v is not None and math.isfinite(v)
    ]
    if reference is not None:
        values.append(reference)
    if domain is None:
        domain = nice_domain(min(values), max(values)) if values else (0.0, 1.0)
    scale = Scale(domain[0], domain[1], left, right)
    bands, y = [], top
    for label, points in rows:
        present = sorted((p for p in points if p.value is not None), key=lambda p: order.index(p.series))
        lines = max(1, len(present))
        height = 10 + 14 * lines
        marks = []
        for k, p in enumerate(present):
            name, colour, shape = series[p.series]
            my = y + 5 + 14 * k + 7
            value = float(p.value or 0.0)  # `present` holds only points with a value
            marks.append(
                Mark(
                    p.series,
                    describe(label, p) if describe else name,
                    value,
                    p.low,
                    p.high,
                    p.n,
                    scale(value),
                    None if p.low is None else scale(p.low),
                    None if p.high is None else scale(p.high),
                    _px(my),
                    colour,
                    shape,
                )
            )
        bands.append(IntervalRow(label, _px(y + height / 2 + 4), _px(y), _px(y + height), marks, notes.get(label, "")))
        y += height
    bottom = y
    chart = Chart(
        key=key,
        kind="interval",
        title=title,
        desc="",
        width=WIDTH,
        height=_px(bottom + 40),
        columns=columns,
        rows=table,
        left=left,
        right=right,
        top=top,
        bottom=_px(bottom),
        x_ticks=[Tick(v, scale(v), fmt(v)) for v in ticks(*domain)],
        x_label=x_label,
        legend=legend,
        reference=None if reference is None else Tick(reference, scale(reference), fmt(reference)),
        bands=bands,
        empty="" if values else empty,
    )
    chart.desc = _describe_rows(title, bands, fmt)
    return chart


def _describe_rows(title: str, bands: list[IntervalRow], fmt: Callable[[float], str], limit: int = 12) -> str:
    parts = []
    for band in bands[:limit]:
        marks = "; ".join(
            f"{m.label} {fmt(m.value)}"
            + (f" ({fmt(m.low)} to {fmt(m.high)})" if m.low is not None and m.high is not None else "")
            for m in band.marks
        )
        parts.append(f"{band.label}: {marks or 'none'}" + (f", {band.note}" if band.note else ""))
    more = f"; and {len(bands) - limit} more rows in the table" if len(bands) > limit else ""
    return f"{title}. " + ". ".join(parts) + more + "."


# ---------------------------------------------------------------------------------------------
# Stacked horizontal bars


@dataclass
class Segment:
    category: str
    label: str
    count: float
    share: float
    x: float
    width: float
    colour: str
    text: str  # printed inside the segment where it fits, else ""


@dataclass
class BarRow:
    label: str
    total: float
    y: float  # top of the bar
    y_text: float
    bar_height: float
    segments: list[Segment]


def stacked_bars(
    *,
    key: str,
    title: str,
    rows: Sequence[tuple[str, dict[str, float]]],
    categories: dict[str, tuple[str, str]],
    columns: list[str],
    table: list[list[Any]],
    shares: bool = True,
    x_label: str = "",
    reference: float | None = None,
    empty: str = "Nothing to draw yet.",
) -> Chart:
    """One bar per row, split into `categories` (key -> (label, colour), in order). With `shares`
    every bar spans the axis (each segment's width = its share of the row); else all bars share a
    count axis from 0 to the largest total."""
    label_w = min(230.0, max(60.0, max((len(r[0]) for r in rows), default=4) * CHAR_PX + 16))
    left, right, bar_h, gap = label_w, WIDTH - 60.0, 22.0, 12.0
    present = {cat for _, counts in rows for cat, n in counts.items() if n}
    legend = _legend(
        [(name, colour, "box") for cat, (name, colour) in categories.items() if cat in present], left, WIDTH - 16
    )
    top = _legend_height(legend)
    largest = max((sum(c.values()) for _, c in rows), default=0)
    hi = 1.0 if shares else nice_domain(0, max(largest, reference or 0, 1))[1]
    scale = Scale(0.0, hi, left, right)
    bands, y = [], top
    for label, counts in rows:
        total = sum(counts.values())
        segments, acc = [], 0.0
        for cat, (name, colour) in categories.items():
            count = counts.get(cat, 0)
            share = count / total if total else 0.0
            start = acc / total if shares and total else acc
            acc += count
            end = acc / total if shares and total else acc
            x0, x1 = scale(start), scale(end)
            width = _px(x1 - x0)
            text = f"{fmt_number(count)}" if width >= 8 + len(fmt_number(count)) * CHAR_PX else ""
            segments.append(Segment(cat, name, count, round(share, 4), x0, width, colour, text))
        bands.append(BarRow(label, total, _px(y), _px(y + bar_h / 2 + 4), bar_h, segments))
        y += bar_h + gap
    tick_values = ticks(0.0, hi)
    chart = Chart(
        key=key,
        kind="bars",
        title=title,
        desc="",
        width=WIDTH,
        height=_px(y + 34),
        columns=columns,
        rows=table,
        left=left,
        right=right,
        top=top,
        bottom=_px(y - gap),
        x_ticks=[Tick(v, scale(v), fmt_percent(v) if shares else fmt_number(v)) for v in tick_values],
        x_label=x_label,
        legend=legend,
        reference=None if reference is None else Tick(reference, scale(reference), fmt_number(reference)),
        bands=bands,
        empty="" if rows else empty,
    )
    described = []
    for band in bands[:12]:
        cells = ", ".join(f"{s.label} {fmt_number(s.count)}" for s in band.segments)
        described.append(f"{band.label}: {cells} (of {fmt_number(band.total)})")
    chart.desc = f"{title}. " + ". ".join(described) + "."
    return chart


# ---------------------------------------------------------------------------------------------
# Lines


@dataclass
class LinePoint:
    x_value: Any  # the bucket's label, or the number
    value: float
    n: int | None
    x: float
    y: float
    r: float


@dataclass
class LineSeries:
    name: str
    colour: str
    points: list[LinePoint]
    dashed: bool = False

    @property
    def path(self) -> str:
        return " ".join(f"{'M' if k == 0 else 'L'}{p.x},{p.y}" for k, p in enumerate(self.points))


def line_chart(
    *,
    key: str,
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[Any, float | None, int | None]]]],
    columns: list[str],
    table: list[list[Any]],
    x_label: str,
    y_label: str,
    x_numeric: bool = False,
    x_fmt: Callable[[float], str] = fmt_number,
    y_domain: tuple[float, float] | None = None,
    y_fmt: Callable[[float], str] = fmt_number,
    dashed: Sequence[str] = (),
    reference: float | None = None,
    empty: str = "Nothing to draw yet.",
) -> Chart:
    """Series of (x, y, n) points. x is ordinal (week labels, placed evenly in sorted order) unless
    `x_numeric`; points with y None are left out; a dot's area grows with its n (the number of
    observations behind it) where n is given. `reference` draws a vertical rule at that x."""
    left, right = 52.0, WIDTH - 20.0
    legend = _legend(
        [(name, PALETTE[k % len(PALETTE)], "dash" if name in dashed else "line") for k, (name, _) in enumerate(series)],
        left,
        right,
    )
    top = _legend_height(legend) + 14  # room for the y axis' label above the plot
    bottom = top + 190
    ys = [y for _, pts in series for _, y, _ in pts if y is not None]
    if y_domain is None:
        y_domain = nice_domain(min(ys), max(ys)) if ys else (0.0, 1.0)
    y_scale = Scale(y_domain[0], y_domain[1], bottom, top)
    if x_numeric:
        xs = [float(x) for _, pts in series for x, _, _ in pts] + ([reference] if reference is not None else [])
        x_domain = (min(xs), max(xs)) if xs else (0.0, 1.0)
        x_scale = Scale(*x_domain, left + 8, right - 8)
        x_pos: Callable[[Any], float] = lambda x: x_scale(float(x))  # noqa: E731
        x_ticks = [Tick(v, x_scale(v), x_fmt(v)) for v in ticks(*x_domain)]
    else:
        buckets = sorted({x for _, pts in series for x, _, _ in pts})
        step = (right - left - 48) / max(1, len(buckets) - 1)  # room for the last label's half
        where = {
            b: _px(left + 16 + k * step) if len(buckets) > 1 else _px((left + right) / 2) for k, b in enumerate(buckets)
        }
        x_pos = where.__getitem__
        every = max(1, math.ceil(len(buckets) / 8))  # at most 8 labels under the axis
        x_ticks = [Tick(k, where[b], str(b)) for k, b in enumerate(buckets) if k % every == 0 or k == len(buckets) - 1]
    most = max((n or 0 for _, pts in series for _, _, n in pts), default=0)
    out = []
    for k, (name, pts) in enumerate(series):
        points = [
            LinePoint(
                x,
                y,
                n,
                x_pos(x),
                y_scale(y),
                _px(2.5 + 4.5 * math.sqrt(n / most)) if n and most else 3.0,
            )
            for x, y, n in pts
            if y is not None
        ]
        out.append(LineSeries(name, PALETTE[k % len(PALETTE)], points, name in dashed))
    chart = Chart(
        key=key,
        kind="lines",
        title=title,
        desc="",
        width=WIDTH,
        height=_px(bottom + 42),
        columns=columns,
        rows=table,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        x_ticks=x_ticks,
        y_ticks=[Tick(v, y_scale(v), y_fmt(v)) for v in ticks(*y_domain, count=4)],
        x_label=x_label,
        y_label=y_label,
        legend=legend,
        reference=None if reference is None or not x_numeric else Tick(reference, x_pos(reference), x_fmt(reference)),
        series=out,
        empty="" if ys else empty,
    )
    described = []
    for line in out[:10]:
        text = ", ".join(
            f"{p.x_value if not x_numeric else x_fmt(float(p.x_value))}: {y_fmt(p.value)}"
            + (f" (n={p.n})" if p.n is not None else "")
            for p in line.points[:12]
        )
        described.append(f"{line.name}: {text}")
    chart.desc = f"{title}. " + ". ".join(described) + "."
    return chart
