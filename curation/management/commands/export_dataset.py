"""Build a dataset export in this process and copy it out.

    manage.py export_dataset --project SLUG --format pairs,raw --out data/           # unpacked files
    manage.py export_dataset --project SLUG --format pairs --out data/export.zip     # the bundle

The export is recorded as a snapshot like one made in the browser (so it can be reproduced with
`--reproduce CODE`), built synchronously by the same service the Celery task runs.
"""

from __future__ import annotations

import argparse
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.models import Project
from curation.export import FORMATS, ExportError
from curation.models import ExportSnapshot
from curation.services import export_copy_to, export_create, export_reproduce, export_run


class Command(BaseCommand):
    help = (
        "Export a project's judgments as a dataset (JSONL + Parquet, dataset card, checksums). "
        "--out ending in .zip receives the bundle; any other --out is a folder that receives the files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", help="Project slug (not needed with --reproduce).")
        parser.add_argument(
            "--format",
            action="append",
            default=[],
            help=f"Repeatable or a comma list of: {', '.join(FORMATS)}.",
        )
        parser.add_argument("--out", required=True, type=Path, help="A .zip path, or a folder (empty or new).")
        parser.add_argument("--label-source", choices=["human", "imported", "ai", "consensus", "all"], default="human")
        parser.add_argument("--min-agreement", type=float)
        parser.add_argument("--min-strength", type=float)
        parser.add_argument("--split", action="append", default=[], help="train or eval (repeatable; default all).")
        parser.add_argument("--exclude-flagged", action=argparse.BooleanOptionalAction, default=False)
        parser.add_argument(
            "--exclude-dropped",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Leave out items curated as dropped (default; --no-exclude-dropped keeps them).",
        )
        parser.add_argument("--from", dest="date_from", type=date.fromisoformat, help="Judgments from this day (UTC).")
        parser.add_argument("--to", dest="date_to", type=date.fromisoformat, help="Judgments up to this day (UTC).")
        parser.add_argument("--labeler", action="append", type=int, dest="labelers", help="Labeler id (repeatable).")
        parser.add_argument("--license", default="unknown", help="License field of the dataset card.")
        parser.add_argument("--reproduce", metavar="CODE", help="Build an existing snapshot again (same cutoff).")

    def handle(self, *args: Any, **opts: Any) -> None:
        out: Path = opts["out"]
        if out.suffix != ".zip" and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise CommandError(f"{out} is not empty: give a new or empty folder, or a .zip path")
        try:
            snapshot = self._create(opts)
            built = export_run(snapshot_id=snapshot.id)
            if built is None:
                raise CommandError(f"export {snapshot.code} was taken by another process")
            written = export_copy_to(snapshot=built, out=opts["out"])
        except ExportError as exc:
            raise CommandError(str(exc)) from None
        counts = built.counts
        self.stdout.write(
            f"export {built.code}: {counts['items_exported']} of {counts['items_considered']} items, "
            f"{counts['judgments']} judgments, cutoff {built.cutoff.isoformat()}"
        )
        for name, splits in sorted(counts["rows"].items()):  # each format's configurations (pairs_plain too)
            per = ", ".join(f"{split} {n}" for split, n in splits.items()) or "no rows"
            self.stdout.write(f"  {name}: {per}")
        if counts["excluded"]:
            self.stdout.write("  left out: " + ", ".join(f"{k} {v}" for k, v in counts["excluded"].items()))
        self.stdout.write(f"bundle sha256 {built.bundle_sha256} ({built.bundle_bytes} bytes)")
        self.stdout.write(f"wrote {len(written)} file(s) to {opts['out']}")

    def _create(self, opts: dict[str, Any]) -> ExportSnapshot:
        if opts["reproduce"]:
            try:
                source = ExportSnapshot.objects.filter(code=uuid.UUID(opts["reproduce"])).first()
            except ValueError:
                source = None
            if source is None:
                raise CommandError(f"no export with code {opts['reproduce']!r}")
            return export_reproduce(snapshot=source, user=None, enqueue=False)
        if not opts["project"]:
            raise CommandError("--project is required")
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {opts['project']!r}")
        if not opts["format"]:
            raise CommandError(f"--format is required: {', '.join(FORMATS)}")
        filters = {
            "label_source": opts["label_source"],
            "min_agreement": opts["min_agreement"],
            "min_strength": opts["min_strength"],
            "exclude_flagged": opts["exclude_flagged"],
            "exclude_dropped": opts["exclude_dropped"],
            "splits": opts["split"],
            "date_from": opts["date_from"],
            "date_to": opts["date_to"],
            "labelers": opts["labelers"],
        }
        return export_create(
            project=project, user=None, filters=filters, formats=opts["format"], license=opts["license"], enqueue=False
        )
