import json
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.services import ProjectSpec, SpecError, project_create


class Command(BaseCommand):
    help = "Create a project from a JSON or YAML spec file (slug, name, schema, guidelines, overlap, members...)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("spec", type=Path)
        parser.add_argument("--owner", help="Username that becomes the project's curator.")

    def handle(self, *args: Any, **opts: Any) -> None:
        path: Path = opts["spec"]
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise CommandError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
        owner = None
        if opts["owner"]:
            owner = get_user_model().objects.filter(username=opts["owner"]).first()
            if owner is None:
                raise CommandError(f"no user {opts['owner']!r}")
        try:
            project = project_create(spec=ProjectSpec.parse(data), created_by=owner)
        except SpecError as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.stdout.write(f"created project {project.slug} ({', '.join(project.judgment_schema.kinds)})")
