"""Charts of the reward-model versions page and the routing page (geometry: `config.charts`).

- Versions: each succeeded version's held-out pairwise accuracy with its 95 % Wilson interval,
  beside the two length baselines scored on the same pairs (`models_srv.evaluation`).
- Routing: the human budget, spent and left; and the accuracy of the pool's final labels against
  the human budget, simulated on the project's own stored labels (`simulation_stored`, the reward
  model left out: no embeddings in a page request) for the learned router and for random routing.
  The simulation is kept for ten minutes per project and set of judgments; the page loads it as
  a fragment of its own (htmx), so a large project's page does not wait for it.
"""

from __future__ import annotations

from typing import Any

from config import charts
from config.charts import Chart, Point
from models_srv.stats import wilson_interval

CURVE_BUDGETS = tuple(k / 10 for k in range(11))
CURVE_SEEDS = (0, 1, 2, 3, 4)
CURVE_CACHE_SECONDS = 600


def versions_chart(versions: list[Any]) -> Chart:
    rows, table = [], []
    for v in versions:
        pw = (v.metrics or {}).get("pairwise") or {}
        if v.status != "succeeded" or pw.get("accuracy") is None:
            continue
        n = int(pw.get("n") or 0)
        interval = wilson_interval(pw["accuracy"] * n, n)  # ties count half: a fractional count
        low, high = (None, None) if interval is None else (round(interval[0], 3), round(interval[1], 3))
        label = f"v{v.version}" + (" (current)" if v.is_current else "")
        rows.append(
            (
                label,
                [
                    Point("accuracy", pw["accuracy"], low, high, n),
                    Point("shorter", pw.get("baseline_prefer_shorter")),
                    Point("longer", pw.get("baseline_prefer_longer")),
                ],
            )
        )
        table.append(
            [
                v.version,
                pw["accuracy"],
                low,
                high,
                n,
                pw.get("baseline_prefer_shorter"),
                pw.get("baseline_prefer_longer"),
            ]
        )
    return charts.interval_chart(
        key="rm_versions",
        title="Held-out pairwise accuracy per reward-model version (95% Wilson interval) against the length baselines",
        rows=rows,
        series={
            "accuracy": ("Reward model", charts.PALETTE[0], "dot"),
            "shorter": ("Prefer the shorter", charts.PALETTE[1], "diamond"),
            "longer": ("Prefer the longer", charts.PALETTE[7], "diamond"),
        },
        columns=["version", "accuracy", "ci_low", "ci_high", "held_out_pairs", "prefer_shorter", "prefer_longer"],
        table=table,
        x_label="held-out pairwise accuracy (ties count half; 0.5 = chance)",
        reference=0.5,
        describe=lambda row, p: {"accuracy": f"accuracy (n={p.n})", "shorter": "prefer shorter"}.get(
            p.series, "prefer longer"
        ),
        empty="No version with held-out pairs yet.",
    )


def routing_numbers(project: Any) -> dict[str, int]:
    """The routing page's budget figures: routable items (not gold, not dropped), the human budget
    in items, and the items with an annotator's label (imported labels spend none of it)."""
    from annotation.models import Item, Judgment, LabelSource, source_q

    items = Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED)
    total = items.count()
    used = Judgment.objects.filter(source_q(LabelSource.HUMAN), item__in=items).values("item_id").distinct().count()
    return {"total": total, "budget": round(project.human_budget * total), "used": used}


BUDGET_PARTS = {
    "spent": ("Spent", charts.PALETTE[0]),
    "left": ("Left", "#748ffc"),
    "over": ("Over budget", charts.PALETTE[4]),
    "ai": ("Outside the budget (AI)", "#adb5bd"),
}


def budget_chart(*, total: int, budget: int, used: int) -> Chart:
    parts: dict[str, float] = {
        "spent": min(used, budget),
        "left": max(0, budget - used),
        "over": max(0, used - budget),
        "ai": max(0, total - max(budget, used)),
    }
    return charts.stacked_bars(
        key="routing_budget",
        title=f"Human budget: {min(used, budget)} of {budget} items spent, {max(0, budget - used)} left, of {total}",
        rows=[("Items", parts)],
        categories=BUDGET_PARTS,
        columns=["part", "items"],
        table=[[BUDGET_PARTS[k][0], v] for k, v in parts.items()],
        shares=False,
        x_label="items (not gold, not dropped)",
        reference=float(budget),
    )


def routing_curve(project: Any, *, compute: bool = True) -> Chart | None:
    """Simulated pool-label accuracy against the human budget: the learned router and random.
    With `compute=False`, None unless the simulation is cached (the page then loads it apart)."""
    data = simulated_curve(project, compute=compute)
    if data is None:
        return None
    policy = project.routing_policy
    learned = "Current policy (learned router)" if policy == "learned" else "Learned router"
    series, table = [], []
    for key, name in (("learned", learned), ("random", "Random")):
        means = data.get("curves", {}).get(key, [])
        series.append((name, [(100 * b, m, None) for b, m, _ in means]))
        table += [[key, round(100 * b), m, se] for b, m, se in means]
    note = {
        "performance": " The project routes by predicted reward-model gain, which needs the backbone's embeddings: "
        "not simulated on the page; the disagreement router is.",
        "all_human": " The project sends every item to humans now.",
        "all_ai": " The project sends every item to AI labelers now.",
    }.get(policy, "")
    chart = charts.line_chart(
        key="routing_curve",
        title="Simulated accuracy of the final labels against the human budget, learned router vs random",
        series=series,
        columns=["policy", "budget_percent", "label_accuracy", "std_error"],
        table=table,
        x_label="human budget, % of the routed pool (rule: the project's budget)",
        y_label="labels right",
        x_numeric=True,
        x_fmt=lambda v: f"{v:.0f}%",
        dashed=["Random"],
        reference=100 * project.human_budget,
        empty=data.get("error") or "Nothing simulated yet.",
    )
    chart.desc += f" {data.get('described', '')}{note}"
    return chart


def simulated_curve(project: Any, *, compute: bool = True) -> dict[str, Any] | None:
    """{"curves": {policy: [(budget, mean, s.e.)]}, "described": ...} or {"error": why not};
    None where it is not cached and `compute` is off."""
    from django.core.cache import cache

    from annotation.models import Judgment
    from models_srv.judge_audit import audit_gate

    last = Judgment.objects.filter(item__project=project).order_by("-id").values_list("id", flat=True).first()
    key = f"routing-curve:{project.pk}:{last}:{project.require_ai_audit}"
    found = cache.get(key)
    if found is None and compute:
        found = _simulate(project, audit_gate(project))
        cache.set(key, found, timeout=CURVE_CACHE_SECONDS)
    return found


def _simulate(project: Any, gate: Any) -> dict[str, Any]:
    import math

    from annotation.models import Judgment, LabelSource, source_q
    from models_srv.simulation_stored import StoredLabelsError, load_stored_labels, simulate_stored

    labelers = Judgment.objects.filter(source_q(LabelSource.AI), item__project=project)
    if gate.required:
        labelers = labelers.filter(labeler_id__in=gate.trusted)
    names = sorted(set(labelers.values_list("labeler__name", flat=True)))
    if not names:
        return {"error": "No AI labeler has judged the project's items: nothing to simulate."}
    try:
        stored = load_stored_labels(project=project, ai_labelers=names, embed=False)
        result = simulate_stored(stored, budgets=CURVE_BUDGETS, seeds=CURVE_SEEDS, policies=["random", "learned"])
    except (StoredLabelsError, ValueError) as exc:
        return {"error": f"Not simulated: {exc}."}
    curves = {}
    for policy, by in result.label_accuracy.items():
        rows = []
        for b in CURVE_BUDGETS:
            v = by[b]
            mean = sum(v) / len(v)
            se = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v)) if len(v) > 1 else 0.0
            rows.append((b, round(mean, 4), round(se, 4)))
        curves[policy] = rows
    return {
        "curves": curves,
        "described": f"{len(stored)} items with both a human and an AI label ({', '.join(names)}), "
        f"{len(CURVE_SEEDS)} random splits; pool {result.sizes.get('pool')} items.",
    }
