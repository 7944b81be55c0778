import json
import time
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from models_srv.simulation import JUDGES, POLICIES, SimulationResult, embed_pairs, load_pairs, simulate
from models_srv.simulation_report import format_table, plot, result_to_dict, write_csv


def _floats(value: str) -> list[float]:
    try:
        return [float(v) / 100 for v in value.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"--budgets takes percentages separated by commas, not {value!r}") from None


class Command(BaseCommand):
    help = (
        "Simulate routing policies: on pairs with human labels and a simulated AI labeler (--data), or on a "
        "project's stored human and AI judgments (--project, --ai-labeler). Each policy picks the items humans "
        "label at each budget; reports the pool labels' accuracy and a cheap reward model's held-out accuracy, "
        "as JSON, CSV and a PNG plot."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--data", type=Path, help="HH-RLHF style JSONL(.gz): {chosen, rejected} or {prompt, ...}; simulated judges"
        )
        source.add_argument("--project", help="A project's slug: its stored AI and human judgments")
        parser.add_argument(
            "--ai-labeler",
            action="append",
            default=[],
            dest="ai_labelers",
            help="With --project: an AI labeler's name (its latest version). Repeat it to simulate several, each "
            "alone; 'A+B' takes the majority of A and B as one AI label.",
        )
        parser.add_argument(
            "--truth",
            choices=["human", "imported", "people"],
            default="human",
            help="With --project: the human label is the annotators' majority (human), the imported labels' "
            "(imported), or the annotators' where any, else the imported ones (people).",
        )
        parser.add_argument("--limit", type=int, help="With --data: use the first N pairs.")
        parser.add_argument(
            "--judges", default=",".join(JUDGES), help=f"With --data: simulated AI labelers, of {JUDGES}."
        )
        parser.add_argument("--policies", default=",".join(POLICIES), help=f"Policies, of {POLICIES}.")
        parser.add_argument("--budgets", default="0,10,25,50,100", type=_floats, help="Human budgets in %%.")
        parser.add_argument("--seeds", type=int, default=5)
        parser.add_argument(
            "--no-reward-model",
            action="store_true",
            help="With --project: only the pool labels' accuracy (no embeddings, no performance policy).",
        )
        parser.add_argument(
            "--backbone", default="default", help="Frozen backbone: a Hugging Face id, or a folder under MODEL_DIRS."
        )
        parser.add_argument("--max-length", type=int, default=128)
        parser.add_argument("--out", type=Path, required=True, help="Folder for results.json, results.csv, plot.png")

    def handle(self, *args: Any, **opts: Any) -> None:
        from models_srv.engine import TrainConfig

        policies = [p for p in opts["policies"].split(",") if p]
        stray = [p for p in policies if p not in POLICIES]
        if stray:
            raise CommandError(f"unknown policy {stray}; choose from {POLICIES}")
        config = TrainConfig(backbone=opts["backbone"], max_length=opts["max_length"])
        seeds = range(opts["seeds"])
        started = time.monotonic()
        if opts["project"]:
            results, described = self._stored(opts, config, policies, seeds)
        else:
            results, described = self._simulated(opts, config, policies, seeds)
        self.stdout.write(f"simulated in {time.monotonic() - started:.1f}s")
        out: Path = opts["out"]
        out.mkdir(parents=True, exist_ok=True)
        report = {
            **described,
            "seeds": opts["seeds"],
            "backbone": opts["backbone"],
            "results": [result_to_dict(res) for res in results],
        }
        (out / "results.json").write_text(json.dumps(report, indent=2))
        write_csv(results, out / "results.csv")
        plot(results, out / "plot.png")
        for res in results:
            self.stdout.write(format_table(res))
        self.stdout.write(f"\nwrote {out / 'results.json'}, {out / 'results.csv'} and {out / 'plot.png'}")

    def _progress(self, judge: str, message: str) -> None:
        self.stdout.write(f"  {judge}: {message}")

    def _simulated(
        self, opts: dict[str, Any], config: Any, policies: list[str], seeds: range
    ) -> tuple[list[SimulationResult], dict[str, Any]]:
        judges = [j for j in opts["judges"].split(",") if j]
        stray = [j for j in judges if j not in JUDGES]
        if stray:
            raise CommandError(f"unknown judge {stray}; choose from {JUDGES}")
        if not opts["data"].exists():
            raise CommandError(f"no such file: {opts['data']}")
        pairs = load_pairs(opts["data"], opts["limit"])
        if len(pairs) < 100:
            raise CommandError(f"{len(pairs)} usable pairs: the simulation needs at least 100")
        started = time.monotonic()
        chosen, rejected = embed_pairs(pairs, config, Path(settings.VAR_DIR) / "cache")
        self.stdout.write(f"{len(pairs)} pairs embedded in {time.monotonic() - started:.1f}s")
        results = [
            simulate(
                pairs,
                chosen,
                rejected,
                judge=judge,
                budgets=opts["budgets"],
                seeds=seeds,
                policies=policies,
                progress=partial(self._progress, judge),
            )
            for judge in judges
        ]
        return results, {"data": str(opts["data"]), "pairs": len(pairs)}

    def _stored(
        self, opts: dict[str, Any], config: Any, policies: list[str], seeds: range
    ) -> tuple[list[SimulationResult], dict[str, Any]]:
        from annotation.models import Project
        from models_srv.simulation_stored import StoredLabelsError, load_stored_labels, simulate_stored

        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"no project {opts['project']!r}")
        if not opts["ai_labelers"]:
            raise CommandError("--project needs at least one --ai-labeler NAME")
        results, rows = [], {}
        for spec in opts["ai_labelers"]:
            try:
                data = load_stored_labels(
                    project=project,
                    ai_labelers=[n for n in spec.split("+") if n],
                    truth=opts["truth"],
                    config=config,
                    embed=not opts["no_reward_model"],
                )
            except StoredLabelsError as exc:
                raise CommandError(str(exc)) from None
            rows[spec] = len(data)
            self.stdout.write(f"{data.name}: {len(data)} items with a human ({opts['truth']}) and an AI label")
            results.append(
                simulate_stored(
                    data,
                    budgets=opts["budgets"],
                    seeds=seeds,
                    policies=policies,
                    progress=lambda msg, spec=spec: self.stdout.write(f"  {spec}: {msg}"),
                )
            )
        return results, {"project": project.slug, "truth": opts["truth"], "items": rows}
