import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.importing import FORMATS, ImportRefused
from models_srv import services
from models_srv.models import RewardModelVersion


class Command(BaseCommand):
    help = "Evaluate a reward-model version on a labeled file (JSONL, CSV, Parquet, JSON) and print the metrics."

    def add_base_argument(self, parser: CommandParser, *args: Any, **kwargs: Any) -> None:
        if "--version" not in args:  # our --version is the model's, not Django's
            super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--version", type=int, help="Version number (default: the current one).")
        parser.add_argument("--file", required=True, type=Path)
        parser.add_argument("--format", choices=FORMATS)

    def handle(self, *args: Any, **opts: Any) -> None:
        versions = RewardModelVersion.objects.filter(project__slug=opts["project"], status="succeeded")
        version = (
            versions.filter(version=opts["version"]).first()
            if opts["version"]
            else versions.filter(is_current=True).first()
        )
        if version is None:
            raise CommandError("no such succeeded version (train one first, or pass --version)")
        try:
            with opts["file"].open("rb") as fh:
                metrics = services.evaluate_file(version=version, fileobj=fh, fmt=opts["format"])
        except FileNotFoundError:
            raise CommandError(f"no such file: {opts['file']}") from None
        except ImportRefused as exc:
            for e in exc.errors:
                self.stderr.write(f"{opts['file']}: {e}")
            raise CommandError("the file cannot be evaluated") from None
        pairwise = metrics.get("pairwise", {})
        if pairwise:
            self.stdout.write(
                f"pairwise accuracy {pairwise['accuracy']} on {pairwise['n']} pairs "
                f"(prefer shorter {pairwise['baseline_prefer_shorter']}, "
                f"prefer longer {pairwise['baseline_prefer_longer']}), "
                f"ECE {pairwise['ece']}"
            )
        if metrics.get("ranking"):
            r = metrics["ranking"]
            self.stdout.write(
                f"ranking: pairwise {r['pairwise_accuracy']}, top-1 {r['top1_accuracy']}, tau {r['kendall_tau']}"
            )
        for aspect, a in metrics.get("aspects", {}).items():
            self.stdout.write(f"{aspect}: MAE {a['mae']}, Spearman {a['spearman']} (n={a['n']})")
        self.stdout.write(json.dumps({"project": opts["project"], "version": version.version, "metrics": metrics}))
