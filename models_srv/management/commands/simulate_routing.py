import csv
import json
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_srv.simulation import JUDGES, POLICIES, embed_pairs, load_pairs, plot, simulate


def _floats(value: str) -> list[float]:
    try:
        return [float(v) / 100 for v in value.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"--budgets takes percentages separated by commas, not {value!r}") from None


class Command(BaseCommand):
    help = (
        "Simulate routing policies on pairs with human labels: train a cheap reward model on the mix each "
        "policy picks at each human budget and report held-out accuracy, as JSON, CSV and a PNG plot."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data", required=True, type=Path, help="HH-RLHF style JSONL(.gz): {chosen, rejected} or {prompt, ...}"
        )
        parser.add_argument("--limit", type=int, help="Use the first N pairs.")
        parser.add_argument("--judges", default=",".join(JUDGES), help=f"AI labelers, of {JUDGES}.")
        parser.add_argument("--policies", default=",".join(POLICIES), help=f"Policies, of {POLICIES}.")
        parser.add_argument("--budgets", default="0,10,25,50,100", type=_floats, help="Human budgets in %%.")
        parser.add_argument("--seeds", type=int, default=5)
        parser.add_argument(
            "--backbone", default="default", help="Frozen backbone: a Hugging Face id, or a folder under MODEL_DIRS."
        )
        parser.add_argument("--max-length", type=int, default=128)
        parser.add_argument("--out", type=Path, required=True, help="Folder for results.json, results.csv, plot.png")

    def handle(self, *args: Any, **opts: Any) -> None:
        from models_srv.engine import TrainConfig

        judges = [j for j in opts["judges"].split(",") if j]
        policies = [p for p in opts["policies"].split(",") if p]
        for name, given, known in (("judge", judges, JUDGES), ("policy", policies, POLICIES)):
            stray = [g for g in given if g not in known]
            if stray:
                raise CommandError(f"unknown {name} {stray}; choose from {known}")
        if not opts["data"].exists():
            raise CommandError(f"no such file: {opts['data']}")
        pairs = load_pairs(opts["data"], opts["limit"])
        if len(pairs) < 100:
            raise CommandError(f"{len(pairs)} usable pairs: the simulation needs at least 100")
        started = time.monotonic()
        config = TrainConfig(backbone=opts["backbone"], max_length=opts["max_length"])
        chosen, rejected = embed_pairs(pairs, config, Path(settings.VAR_DIR) / "cache")
        self.stdout.write(f"{len(pairs)} pairs embedded in {time.monotonic() - started:.1f}s")
        results = []
        for judge in judges:
            res = simulate(
                pairs,
                chosen,
                rejected,
                judge=judge,
                budgets=opts["budgets"],
                seeds=range(opts["seeds"]),
                policies=policies,
                progress=lambda msg, judge=judge: self.stdout.write(f"  {judge}: {msg}"),
            )
            results.append(res)
        out: Path = opts["out"]
        out.mkdir(parents=True, exist_ok=True)
        rows = [row for res in results for row in res.summary()]
        report = {
            "data": str(opts["data"]),
            "pairs": len(pairs),
            "seeds": opts["seeds"],
            "backbone": opts["backbone"],
            "results": [
                {
                    "judge": res.judge,
                    "sizes": res.sizes,
                    "ai_accuracy_on_test": [round(a, 4) for a in res.ai_accuracy],
                    "accuracy": {p: {str(b): v for b, v in by.items()} for p, by in res.accuracy.items()},
                    "gain_over_random": {
                        p: {str(b): g for b, g in res.paired_gain(p).items()}
                        for p in ("disagreement", "performance")
                        if p in res.accuracy and "random" in res.accuracy
                    },
                }
                for res in results
            ],
        }
        (out / "results.json").write_text(json.dumps(report, indent=2))
        with (out / "results.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["judge", "policy", "budget", "mean", "std", "n"])
            writer.writeheader()
            writer.writerows(rows)
        plot(results, out / "plot.png")
        for res in results:
            self.stdout.write(
                f"\nAI labeler {res.judge} (its own test accuracy {sum(res.ai_accuracy) / len(res.ai_accuracy):.3f})"
            )
            self.stdout.write(f"{'policy':<14}" + "".join(f"{100 * b:>16.0f}%" for b in res.budgets))
            for policy, by in res.accuracy.items():
                cells = []
                for b in res.budgets:
                    v = by[b]
                    mean = sum(v) / len(v)
                    std = (sum((x - mean) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else 0.0
                    cells.append(f"{mean:>10.4f}±{std:.4f}")
                self.stdout.write(f"{policy:<14}" + "".join(cells))
            for p in ("disagreement", "performance"):
                if p in res.accuracy and "random" in res.accuracy:
                    gains = ", ".join(f"{100 * b:.0f}%: {m:+.4f}±{se:.4f}" for b, (m, se) in res.paired_gain(p).items())
                    self.stdout.write(f"  {p} - random (mean ± s.e. over seeds): {gains}")
        self.stdout.write(f"\nwrote {out / 'results.json'}, {out / 'results.csv'} and {out / 'plot.png'}")
