"""Reporting a routing simulation: the CSV, the text tables, the JSON of every per-seed figure
and the plot (`simulate_routing` and `bench/route/run.py` share them)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models_srv.simulation import METRICS, SimulationResult


def write_csv(results: list[SimulationResult], path: Path) -> None:
    rows = [row for res in results for row in res.summary()]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh,
            fieldnames=["judge", "metric", "policy", "budget", "mean", "std", "n", "minus_random", "minus_random_se"],
        )
        writer.writeheader()
        writer.writerows(rows)


def format_table(res: SimulationResult) -> str:
    """The figures as text: mean ± std over seeds, then each policy minus random (mean ± paired s.e.)."""
    lines = [f"\nAI labeler {res.judge} (its own accuracy {sum(res.ai_accuracy) / len(res.ai_accuracy):.3f})"]
    for metric in METRICS:
        figures = res.metric(metric)
        if not figures:
            continue
        lines.append(f"{metric:<14}" + "".join(f"{100 * b:>16.0f}%" for b in res.budgets))
        for policy, by in figures.items():
            cells = []
            for b in res.budgets:
                v = by[b]
                mean = sum(v) / len(v)
                std = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
                cells.append(f"{mean:>10.4f}±{std:.4f}")
            lines.append(f"{policy:<14}" + "".join(cells))
        for p in ("learned", "performance"):
            if p in figures and "random" in figures:
                gains = ", ".join(
                    f"{100 * b:.0f}%: {m:+.4f}±{se:.4f}" for b, (m, se) in res.paired_gain(p, metric=metric).items()
                )
                lines.append(f"  {p} - random (mean ± paired s.e.): {gains}")
    return "\n".join(lines)


def result_to_dict(res: SimulationResult) -> dict[str, Any]:
    """Every figure of a result, per seed, with the paired differences from random (JSON-ready)."""
    return {
        "judge": res.judge,
        "budgets": res.budgets,
        "seeds": res.seeds,
        "sizes": res.sizes,
        "ai_accuracy_on_test": [round(a, 4) for a in res.ai_accuracy],
        **{
            metric: {p: {str(b): v for b, v in by.items()} for p, by in res.metric(metric).items()}
            for metric in METRICS
        },
        "minus_random": {
            metric: {
                p: {str(b): g for b, g in res.paired_gain(p, metric=metric).items()}
                for p in res.metric(metric)
                if p != "random" and "random" in res.metric(metric)
            }
            for metric in METRICS
        },
    }


def result_from_dict(d: dict[str, Any]) -> SimulationResult:
    res = SimulationResult(d["judge"], list(d["budgets"]), list(d["seeds"]), sizes=d.get("sizes", {}))
    res.ai_accuracy = list(d["ai_accuracy_on_test"])
    for metric in METRICS:
        res.metric(metric).update({p: {float(b): v for b, v in by.items()} for p, by in (d.get(metric) or {}).items()})
    return res


def plot(results: Sequence[SimulationResult], path: Path) -> None:
    """One column per AI labeler. Top: the cheap reward model's held-out accuracy against the human
    budget (mean over seeds, shaded ± std; only where some result has it). Bottom: each policy's
    pool-label accuracy minus random's, with its paired standard error, where the differences
    between policies are visible (the accuracies themselves all rise along the same diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = (["rm_accuracy"] if any(res.accuracy for res in results) else []) + ["label_gain"]
    fig, axes = plt.subplots(len(rows), len(results), figsize=(5.5 * len(results), 3.8 * len(rows)), squeeze=False)
    colors = {"random": "C1", "learned": "C2", "performance": "C3", "all_ai": "C0", "all_human": "C4"}
    for row, kind in enumerate(rows):
        for ax, res in zip(axes[row], results, strict=True):
            xs = [100 * b for b in res.budgets]
            if kind == "rm_accuracy":
                for policy, by_budget in res.accuracy.items():
                    means = np.array([np.mean(by_budget[b]) for b in res.budgets])
                    stds = np.array([np.std(by_budget[b], ddof=1) if len(by_budget[b]) > 1 else 0 for b in res.budgets])
                    if policy in ("all_ai", "all_human"):  # references: they ignore the budget
                        ax.plot(xs, means, "--", linewidth=1, color=colors[policy], label=f"{policy} (reference)")
                        continue
                    ax.plot(xs, means, marker="o", color=colors[policy], label=policy)
                    ax.fill_between(xs, means - stds, means + stds, alpha=0.06, color=colors[policy])
                ax.set_ylabel("held-out reward-model accuracy")
            else:
                ax.axhline(0, color=colors["random"], linewidth=1, label="random")
                for k, policy in enumerate(p for p in ("learned", "performance") if p in res.label_accuracy):
                    gains = res.paired_gain(policy, metric="label_accuracy")
                    shift = (k - 0.5) * 0.8  # side by side at each budget
                    ax.errorbar(
                        [x + shift for x in xs],
                        [100 * gains[b][0] for b in res.budgets],
                        yerr=[100 * gains[b][1] for b in res.budgets],
                        marker="o",
                        capsize=3,
                        color=colors[policy],
                        label=f"{policy} - random (± paired s.e.)",
                    )
                ax.set_ylabel("pool labels right, points over random")
            title = f"{res.judge} (AI accuracy {np.mean(res.ai_accuracy):.3f}); {len(res.seeds)} seeds"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("human budget (% of the routed pool)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
