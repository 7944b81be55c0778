from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.importing import FORMATS, ImportRefused
from annotation.models import Project
from annotation.services import import_file


class Command(BaseCommand):
    help = "Import items (and any labels they carry) from a JSONL, CSV, Parquet or JSON file, all or nothing."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True, help="Project slug.")
        parser.add_argument("--format", choices=FORMATS, help="Force a format instead of detecting it.")
        parser.add_argument("file", type=Path)

    def handle(self, *args: Any, **opts: Any) -> None:
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"no project with slug {opts['project']!r}")
        try:
            result = import_file(project=project, path=opts["file"], fmt=opts["format"])
        except ImportRefused as exc:
            for error in exc.errors:
                self.stderr.write(f"{opts['file']}: {error}")
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{result.format}: {result.rows_read} rows read, {result.items_created} items created, "
            f"{result.items_existing} already present, {result.judgments_created} judgments created"
        )
