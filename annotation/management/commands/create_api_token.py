from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.auth import SCOPES, TokenError
from annotation.services import token_create


class Command(BaseCommand):
    help = (
        "Create an API token for a user and print its key (once; only a hash is stored). "
        f"Scopes: {', '.join(SCOPES)} (read is always granted)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="Username the token acts as.")
        parser.add_argument("--name", required=True, help="What the token is for.")
        parser.add_argument("--scopes", default="read", help="Comma-separated, e.g. read,write,train,export.")

    def handle(self, *args: Any, **opts: Any) -> None:
        user = get_user_model().objects.filter(username=opts["user"], is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {opts['user']!r}")
        try:
            token, key = token_create(user=user, name=opts["name"], scopes=opts["scopes"])
        except TokenError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"token {token.name!r} of {user.username} with scopes {', '.join(token.scopes)}")
        self.stdout.write(key)
