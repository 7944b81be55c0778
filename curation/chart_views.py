"""Each dashboard chart's numbers as CSV: the Quality page's charts, the reward-model versions
chart and the routing charts, with the access check of the pages they sit on (a project's
curators). Without `?chart=`, the list of the project's charts."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from annotation.models import Project
from annotation.selectors import project_for_user
from config.charts import Chart
from curation import quality, quality_charts
from curation.views import _csv_cell


def _quality(key: str) -> Callable[[Project], Chart]:
    return lambda project: quality_charts.quality_charts(quality.cached_report(project))[key]


def _versions(project: Project) -> Chart:
    from models_srv import dashboards, selectors

    return dashboards.versions_chart(list(selectors.versions_of(project)))


def _budget(project: Project) -> Chart:
    from models_srv import dashboards

    return dashboards.budget_chart(**dashboards.routing_numbers(project))


def _curve(project: Project) -> Chart:
    from models_srv import dashboards

    chart = dashboards.routing_curve(project, compute=True)  # simulates where nothing is cached
    if chart is None:
        raise RuntimeError("routing_curve(compute=True) always returns a chart")
    return chart


CHARTS: dict[str, tuple[str, Callable[[Project], Chart]]] = {
    **{key: ("quality", _quality(key)) for key in quality_charts.CHART_KEYS},
    quality_charts.GROUPS_KEY: ("quality", lambda project: quality_charts.groups(quality.cached_report(project))),
    "rm_versions": ("reward models", _versions),
    "routing_budget": ("routing", _budget),
    "routing_curve": ("routing", _curve),
}


@login_required
@require_GET
def chart_csv(request: HttpRequest, slug: str) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    name = request.GET.get("chart", "")
    buf = io.StringIO()
    writer = csv.writer(buf)
    if not name:
        writer.writerow(["chart", "page", "url"])
        writer.writerows([[key, page, f"{request.path}?chart={key}"] for key, (page, _) in CHARTS.items()])
        filename = f"{project.slug}-charts.csv"
    elif name in CHARTS:
        chart = CHARTS[name][1](project)
        writer.writerow(chart.columns)
        writer.writerows([[_csv_cell(v) for v in row] for row in chart.rows])
        filename = f"{project.slug}-{name}.csv"
    else:
        return HttpResponse(f"chart must be one of: {', '.join(CHARTS)}", status=400, content_type="text/plain")
    response = HttpResponse(buf.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
