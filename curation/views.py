from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation.models import Item
from annotation.selectors import project_for_user
from config.http import AuthenticatedHttpRequest, HtmxHttpRequest
from curation import quality, selectors, services
from curation.export import ExportError
from curation.forms import ActionForm, BulkActionForm, ExportForm, ReviewFilterForm
from curation.models import CurationAction

CSV_TABLES = (
    "agreement",
    "annotators",
    "human_vs_ai",
    "biases",
    "leaderboard_human",
    "leaderboard_imported",
    "leaderboard_ai",
    "reward_models",
    "drift",
    "ai_consensus",
    "ai_consensus_differ",
    "kappa_pairs",
    "preference_groups",
    "group_items",
    "group_categories",
)
KAPPA_SHOWN = 100  # labeler pairs on the page; the CSV has them all


@login_required
@require_GET
def quality_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    from curation.quality_charts import GROUPS_KEY, groups, quality_charts

    project = project_for_user(request.user, slug, curator=True)
    rep = quality.cached_report(project, fresh=request.GET.get("fresh") == "1")
    charts = {**quality_charts(rep), GROUPS_KEY: groups(rep)}
    drift = [
        {"group": group, "title": quality.DRIFT_GROUPS[group], "chart": charts[f"drift_{group}"]}
        for group in rep["drift"]
    ]
    return render(
        request,
        "curation/quality.html",
        {
            "project": project,
            "r": rep,
            "charts": charts,
            "drift": drift,
            "tables": CSV_TABLES,
            "kappa_shown": KAPPA_SHOWN,
        },
    )


@login_required
@require_POST
def groups_place(request: AuthenticatedHttpRequest, slug: str, version_uuid: UUID) -> HttpResponse:
    """Place the annotators the project's pluralistic version did not train on (a `gpu` task), then
    back to the groups panel."""
    from django.contrib import messages

    from models_srv.selectors import version_for_curator
    from models_srv.services import place_request

    project = project_for_user(request.user, slug, curator=True)
    version = version_for_curator(request.user, version_uuid)
    if version.project_id != project.id:
        raise Http404("no such reward model in this project")
    try:
        place_request(version=version)
        messages.info(request, "Placing the new annotators in the groups; recompute the figures in a moment.")
    except ValueError as exc:
        messages.error(request, str(exc))
    return redirect(reverse("curation:quality", args=[project.slug]) + "#preference-groups")


def _table(rep: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if name == "agreement":
        flat = {k: v for k, v in rep["agreement"].items() if not isinstance(v, dict)}
        for aspect, v in (rep["agreement"].get("alpha_rubric_ordinal") or {}).items():
            flat[f"alpha_rubric_ordinal:{aspect}"] = v
        return [{"metric": k, "value": v} for k, v in flat.items()]
    if name in ("leaderboard_human", "leaderboard_imported", "leaderboard_ai"):
        return rep["leaderboard"].get(name.split("_")[1], [])
    if name == "ai_consensus":
        return rep["ai_consensus"]["methods"]
    if name == "ai_consensus_differ":
        return rep["ai_consensus"]["differ"]
    if name == "drift":
        return [
            {"group": group, "key": key, **p}
            for group, series in rep["drift"].items()
            for key, pts in series.items()
            for p in pts
        ]
    if name == "human_vs_ai":
        return [
            {
                "labeler": r["labeler"],
                "source": r["source"],
                "reference": r["reference"],
                "category": cat,
                "items": v["n"],
                "agreement": v["agreement"],
            }
            for r in rep["human_vs_ai"]
            for cat, v in [("(all)", {"n": r["items"], "agreement": r["agreement"]}), *r["by_category"].items()]
        ]
    if name in ("preference_groups", "group_items", "group_categories"):
        return _groups_table(rep.get("groups"), name)
    if name == "biases":
        return [
            {
                **{k: v for k, v in r.items() if k != "distribution"},
                **{f"n_{k}": v for k, v in r["distribution"].items()},
            }
            for r in rep["biases"]
        ]
    return rep[name]


def _groups_table(panel: dict[str, Any] | None, name: str) -> list[dict[str, Any]]:
    """The preference groups panel as rows: one per member, per compared item, or per category."""
    if panel is None:
        return []
    if name == "preference_groups":
        return [
            {"group": g["group"], "size": g["size"], "labeler": m["labeler"], "confidence": m["confidence"]}
            for g in panel["groups"]
            for m in g["members"]
        ]
    if name == "group_categories":
        return panel["categories"]
    return [
        {
            "item": r["external_id"],
            "category": r["category"],
            "distance": r["score"],
            "majorities_differ": r["differ"],
            **{f"group_{g['group']}_majority": g["majority"] for g in r["groups"]},
            **{f"group_{g['group']}_{c}": g["votes"].get(c, 0) for g in r["groups"] for c in ("A", "B", "tie")},
        }
        for r in panel["items"]
    ]


def _csv_cell(value: Any) -> Any:
    """Names come from data (model names, categories, labelers): a text cell a spreadsheet would
    run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@login_required
@require_GET
def quality_csv(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    name = request.GET.get("table", "")
    if name not in CSV_TABLES:
        return HttpResponse(f"table must be one of: {', '.join(CSV_TABLES)}", status=400, content_type="text/plain")
    rows = _table(quality.cached_report(project, fresh=request.GET.get("fresh") == "1"), name)
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows([{k: _csv_cell(v) for k, v in r.items()} for r in rows])
    response = HttpResponse(buf.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-{name}.csv"'
    return response


# ---------------------------------------------------------------------------------------------
# Review queue


def _crossfit_context(project: Any, error: str | None = None) -> dict[str, Any]:
    from models_srv.selectors import crossfit_done, crossfit_latest

    return {"project": project, "latest": crossfit_latest(project), "done": crossfit_done(project), "error": error}


def _review_filters(data: Any) -> ReviewFilterForm:
    form = ReviewFilterForm(data)
    if not form.is_valid():
        raise BadRequest("; ".join(f"{k}: {' '.join(str(e) for e in v)}" for k, v in form.errors.items()))
    return form


def _queue_context(project: Any, form: ReviewFilterForm, **extra: Any) -> dict[str, Any]:
    """What the queue fragment shows: the page of rows, the pager and the state kept in its URLs."""
    d = form.cleaned_data
    queue = selectors.review_queue(project, form.filters(), page=d.get("page") or 1, per_page=d.get("per") or 50)
    state = form.state()
    return {
        "project": project,
        "q": queue,
        "f": form.filters(),
        "per": queue.per_page,
        "state": state,
        "query": urlencode(state),
        "sorts": selectors.REVIEW_SORTS.items(),
        "reasons": selectors.REVIEW_REASONS,
        "page_sizes": selectors.REVIEW_PAGE_SIZES,
        "kinds": CurationAction.Kind.choices,
        **extra,
    }


def _history(project: Any) -> list[CurationAction]:
    return list(CurationAction.objects.filter(project=project).select_related("item", "actor", "undone_by")[:50])


@login_required
@require_GET
def review_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """The review queue: filters, sort and page come from the URL. An htmx GET aimed at the queue
    (filters, pager) gets the queue only; the out-of-fold run's status polling gets its part."""
    project = project_for_user(request.user, slug, curator=True)
    if request.htmx and not request.htmx.history_restore_request and request.htmx.target != "queue":
        return render(request, "curation/review.html#crossfit", _crossfit_context(project))
    form = _review_filters(request.GET)
    context = _queue_context(project, form)
    if request.htmx and not request.htmx.history_restore_request:
        return render(request, "curation/review.html#queue", context)
    context.update(_crossfit_context(project), history=_history(project))
    return render(request, "curation/review.html", context)


def _review_url(project: Any, form: ReviewFilterForm) -> str:
    query = urlencode(form.state())
    return reverse("curation:review", args=[project.slug]) + (f"?{query}" if query else "")


def _bulk_done(request: HtmxHttpRequest, project: Any, form: ReviewFilterForm, **extra: Any) -> HttpResponse:
    """After a bulk action or its undo: the queue again (htmx, with the history out of band), or
    back to the same filtered page."""
    if not request.htmx:
        if extra.get("error"):
            return HttpResponse(extra["error"], status=409, content_type="text/plain")
        return redirect(_review_url(project, form))
    context = _queue_context(project, form, history=_history(project), history_oob=True, **extra)
    return render(request, "curation/review.html#queue", context, status=409 if extra.get("error") else 200)


@login_required
@require_POST
def review_bulk(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """One action on the rows ticked, or on every row matching the filter (as many as the curator
    saw: if the count changed meanwhile, nothing is done and the queue is shown again)."""
    project = project_for_user(request.user, slug, curator=True)
    filters = _review_filters(request.POST)
    form = BulkActionForm(request.POST)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
    d = form.cleaned_data
    queue = selectors.review_queue(project, filters.filters(), per_page=1)
    rows = {r["item_id"]: r for r in queue.matching}
    if d["scope"] == "all":
        if d["count"] != queue.total:
            error = f"{queue.total} rows match the filter now, not {d['count']}: nothing was done; look again."
            return _bulk_done(request, project, filters, error=error)
        ids = list(rows)
    else:
        ids = d["item"]
    scope = {"scope": d["scope"], "filter": urlencode(filters.state())}
    evidence = {i: {"reasons": rows[i]["reasons"], **rows[i]["evidence"]} for i in ids if i in rows}
    try:
        actions = services.curation_bulk_apply(
            project=project,
            item_ids=ids,
            actor=request.user,
            action=d["action"],
            reason=d["note"] or "",
            evidence=evidence,
            scope=scope,
        )
    except services.CurationError as exc:
        return _bulk_done(request, project, filters, error=str(exc))
    return _bulk_done(request, project, filters, bulk=actions[0], bulk_count=len(actions))


@login_required
@require_POST
def review_bulk_undo(request: AuthenticatedHttpRequest, slug: str, action_id: int) -> HttpResponse:
    """Undo the whole bulk action that `action_id` was part of, in one step."""
    project = project_for_user(request.user, slug, curator=True)
    action = selectors.curation_action_for_user(request.user, action_id)
    batch = (action.evidence or {}).get("bulk") or {}
    if action.project_id != project.id or not batch.get("id"):
        raise Http404("No such bulk action.")
    filters = _review_filters(request.POST)
    try:
        undone = services.curation_bulk_undo(project=project, batch=batch["id"], actor=request.user)
    except services.CurationError as exc:
        return _bulk_done(request, project, filters, error=str(exc))
    return _bulk_done(request, project, filters, undone=len(undone), undone_kind=action.get_action_display())


@login_required
@require_POST
def review_crossfit(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    """Start computing the out-of-fold margins the queue reads (k reward-model fits on the gpu queue)."""
    from models_srv.services import crossfit_start

    project = project_for_user(request.user, slug, curator=True)
    error = None
    try:
        crossfit_start(project=project, created_by=request.user)
    except ValueError as exc:
        error = str(exc)
    if request.htmx:
        return render(
            request, "curation/review.html#crossfit", _crossfit_context(project, error), status=409 if error else 200
        )
    if error:
        return HttpResponse(error, status=409, content_type="text/plain")
    return redirect("curation:review", slug=project.slug)


def _item_in(project: Any, item_id: int) -> Item:
    item = Item.objects.filter(project=project, id=item_id).first()
    if item is None:
        raise Http404("No such item.")
    return item


@login_required
@require_POST
def review_act(request: AuthenticatedHttpRequest, slug: str, item_id: int) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    item = _item_in(project, item_id)
    form = ActionForm(request.POST)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain")
    try:
        action = services.curation_action_apply(
            item=item,
            actor=request.user,
            action=form.cleaned_data["action"],
            reason=form.cleaned_data["reason"] or "",
            evidence=form.cleaned_data["evidence"] or {},
        )
    except services.CurationError as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain")
    if request.htmx:
        context = {"project": project, "action": action, "item": item, "kinds": CurationAction.Kind.choices}
        return render(request, "curation/review.html#acted", context)
    return redirect("curation:review", slug=project.slug)


@login_required
@require_POST
def review_undo(request: AuthenticatedHttpRequest, slug: str, action_id: int) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    action = selectors.curation_action_for_user(request.user, action_id)
    if action.project_id != project.id:
        raise Http404("No such curation action.")
    try:
        action = services.curation_action_undo(action=action, actor=request.user)
    except services.CurationError as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain")
    if request.htmx:
        context = {"project": project, "action": action, "item": action.item, "kinds": CurationAction.Kind.choices}
        return render(request, "curation/review.html#acted", context)
    return redirect("curation:review", slug=project.slug)


# ---------------------------------------------------------------------------------------------
# Exports


@login_required
@require_http_methods(["GET", "POST"])
def exports_page(request: AuthenticatedHttpRequest, slug: str) -> HttpResponse:
    project = project_for_user(request.user, slug, curator=True)
    form = ExportForm(request.POST or None, initial={"label_source": "human", "exclude_dropped": True}, project=project)
    error = None
    if request.method == "POST" and form.is_valid():
        try:
            snapshot = services.export_create(
                project=project,
                user=request.user,
                filters=form.filters(),
                formats=form.cleaned_data["formats"],
                license=form.cleaned_data["license"],
            )
        except ExportError as exc:
            error = str(exc)
        else:
            return redirect("curation:export", code=snapshot.code)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "curation/exports.html",
        {"project": project, "form": form, "error": error, "exports": selectors.exports_for_project(project)},
        status=status,
    )


# Why an item or a row is left out of an export (curation.export.build.keep_reason and the writers).
LEFT_OUT_WHY = {
    "dropped": "dropped by a curator",
    "flagged": "flagged by an annotator",
    "no_judgments": "no judgment from the label source",
    "low_agreement": "consensus agreement below the minimum",
    "low_strength": "consensus strength below the minimum",
}
NOT_WRITTEN_WHY = {
    "pairs:tie": "the consensus is a tie: no chosen and rejected response",
    "pairs:undecided": "A and B have equal votes: no consensus",
    "listwise:no_rankings": "no complete ranking",
}


def _card_context(snapshot: Any) -> dict[str, Any]:
    """The dataset card of a done export: its figures from the stored counts, laid out, and the
    card's text as written into the bundle (rendered from markdown, sanitized)."""
    if snapshot.status != "done":
        return {}

    def mapping(value: Any) -> dict[str, Any]:  # the record as stored; older ones lack parts of it
        return value if isinstance(value, dict) else {}

    counts = mapping(snapshot.counts)
    filters = mapping(snapshot.filters)
    thresholds = {"low_agreement": filters.get("min_agreement"), "low_strength": filters.get("min_strength")}
    rows = {fmt: per for fmt, per in mapping(counts.get("rows")).items() if isinstance(per, dict)}
    splits = sorted({split for per in rows.values() for split in per})
    return {
        "card": {
            "text": selectors.export_card_text(snapshot),
            "considered": counts.get("items_considered"),
            "exported": counts.get("items_exported"),
            "judgments": counts.get("judgments"),
            "splits": splits,
            "rows": [(fmt, [(split, per.get(split)) for split in splits]) for fmt, per in rows.items()],
            "filters": sorted(filters.items()),
            "left_out": [
                (reason, n, LEFT_OUT_WHY.get(reason, reason), thresholds.get(reason))
                for reason, n in mapping(counts.get("excluded")).items()
            ],
            "not_written": [
                (key, n, NOT_WRITTEN_WHY.get(key, key)) for key, n in mapping(counts.get("skipped_rows")).items()
            ],
        }
    }


@login_required
@require_GET
def export_detail(request: AuthenticatedHttpRequest, code: UUID) -> HttpResponse:
    """The export's page; its status part is polled until it is finished, when it brings the card."""
    snapshot = selectors.export_get_for_user(request.user, code)
    template = "curation/export.html#status" if request.htmx else "curation/export.html"
    return render(request, template, {"project": snapshot.project, "s": snapshot, **_card_context(snapshot)})


@login_required
@require_GET
def export_download(request: AuthenticatedHttpRequest, code: UUID) -> FileResponse:
    snapshot = selectors.export_get_for_user(request.user, code)
    path = snapshot.bundle_file if snapshot.status == "done" else None
    if path is None or not path.exists():
        raise Http404("This export has no bundle (yet).")
    return FileResponse(path.open("rb"), as_attachment=True, filename=snapshot.bundle_name)


@login_required
@require_POST
def export_reproduce(request: AuthenticatedHttpRequest, code: UUID) -> HttpResponse:
    snapshot = selectors.export_get_for_user(request.user, code)
    copy = services.export_reproduce(snapshot=snapshot, user=request.user)
    return redirect("curation:export", code=copy.code)
