import json
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.models import Membership
from annotation.services import ProjectSpec, SpecError, project_create


class Command(BaseCommand):
    help = "Create a project from a JSON or YAML spec file (slug, name, schema, guidelines, overlap, members...)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("spec", type=Path)
        parser.add_argument(
            "--owner",
            help="Username that becomes the project's curator (required unless the spec lists a curator).",
        )

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
        try:
            spec = ProjectSpec.parse(data)
        except SpecError as exc:
            raise CommandError(f"{path}: {exc}") from None
        if not opts["owner"] and not any(m.role == Membership.Role.CURATOR for m in spec.members):
            # A project without a curator is one nobody can see the dashboards of, export or manage.
            raise CommandError(
                "--owner is required: name the user who curates the project (or list a curator under "
                "`members:` in the spec); nothing was created"
            )
        owner = None
        if opts["owner"]:
            owner = get_user_model().objects.filter(username=opts["owner"]).first()
            if owner is None:
                raise CommandError(f"no user {opts['owner']!r}")
        try:
            project = project_create(spec=spec, created_by=owner)
        except SpecError as exc:
            raise CommandError(f"{path}: {exc}") from None
        self.stdout.write(f"created project {project.slug} ({', '.join(project.judgment_schema.kinds)})")
