from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from annotation.models import Membership, Project
from annotation.services import ProjectSpec, import_file, membership_set, project_create

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
DEMO_PROJECTS = [
    ("chat-quality.yaml", "pairwise_items.jsonl"),
    ("answer-ranking.yaml", "ranking_items.jsonl"),
]
DEMO_USERS = [
    # username, password, role
    ("curator", "demo-curator-pass", Membership.Role.CURATOR),
    ("alice", "demo-alice-pass", Membership.Role.ANNOTATOR),
    ("bob", "demo-bob-pass", Membership.Role.ANNOTATOR),
]


class Command(BaseCommand):
    help = "Create the demo projects, items and users (idempotent: running it again changes nothing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet-credentials", action="store_true", help="Do not print the demo passwords.")

    @transaction.atomic
    def handle(self, *args: Any, **opts: Any) -> None:
        users = get_user_model()
        accounts = {}
        for username, password, role in DEMO_USERS:
            user, created = users.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            if created:
                user.set_password(password)
                if role == Membership.Role.CURATOR:
                    user.is_staff = True
                user.save()
                if role == Membership.Role.CURATOR:
                    user.user_permissions.add(
                        Permission.objects.get(codename="add_project", content_type__app_label="annotation")
                    )
            accounts[username] = (user, password, role)
        curator = accounts["curator"][0]
        for spec_file, items_file in DEMO_PROJECTS:
            spec = ProjectSpec.parse(yaml.safe_load((DEMO_DIR / spec_file).read_text()))
            project = Project.objects.filter(slug=spec.slug).first() or project_create(spec=spec, created_by=curator)
            for user, _, role in accounts.values():
                membership_set(project=project, user=user, role=role)
            result = import_file(project=project, path=DEMO_DIR / items_file)
            self.stdout.write(
                f"demo project {project.slug}: {result.items_created} new items ({result.items_existing} already there)"
            )
        if not opts["quiet_credentials"]:
            self.stdout.write("demo accounts (username / password / role):")
            for username, (_, password, role) in accounts.items():
                self.stdout.write(f"  {username} / {password} / {role}")
