"""API authentication: a per-user bearer token with scopes, or the browser session (with CSRF).

Scopes (`ApiToken.scopes`, a list of names):

- `read`: every GET except export downloads. Every token has it, so a token with no scopes is a
  read-only token (tokens stored before scopes existed included).
- `write`: create projects, import items.
- `train`: start, cancel, promote and rescore reward models; add AI labelers and start their runs.
- `export`: start dataset exports and download them.

An operation names its scope with `auth=scoped("train")`; one that names none needs `read` for
GET/HEAD/OPTIONS and `write` for anything else, so a new endpoint is never laxer than `write`.
A token without the scope an operation needs gets 403 with the scope's name. A browser session
is not limited by scopes (it is the user themself) but needs the CSRF token on unsafe methods.

Tokens are created and revoked by `annotation.services` (with their audit events). Only the
key's SHA-256 is stored; `last_used_at` is refreshed at most once a minute. Bad tokens
are counted per client address (accounts.throttle): past API_TOKEN_RATE_LIMIT_PER_IP within the
window, that address's token requests get 429 with Retry-After, before any token is looked up.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.http import HttpRequest
from django.utils import timezone
from ninja.errors import HttpError
from ninja.security import HttpBearer, SessionAuth

from accounts import throttle
from accounts.models import ApiToken

SCOPES: dict[str, str] = {
    "read": "read projects, items, judgments, jobs, models and exports (always granted)",
    "write": "create projects and import items",
    "train": "train, cancel, promote and rescore reward models; add and run AI labelers",
    "export": "start dataset exports and download them",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(ValueError):
    """A token that cannot be created, with a readable reason."""


def token_scopes(token: ApiToken) -> set[str]:
    """The scopes a token grants: its own known scopes, plus `read`."""
    stored = token.scopes if isinstance(token.scopes, list) else []
    return {"read"} | {s for s in stored if s in SCOPES}


def parse_scopes(scopes: Iterable[str] | str) -> list[str]:
    """Scope names in canonical order ("read,write" works too); `read` is always added."""
    names = [scopes] if isinstance(scopes, str) else list(scopes)
    names = [p.strip().lower() for n in names for p in str(n).split(",") if p.strip()]
    unknown = sorted(set(names) - set(SCOPES))
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in names or s == "read"]


class TokenAuth(HttpBearer):
    """`Authorization: Bearer pl_...`; `scope` None means read for safe methods, else write."""

    def __init__(self, scope: str | None = None) -> None:
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        self.scope = scope
        super().__init__()

    def scope_for(self, methods: Iterable[str]) -> str:
        if self.scope:
            return self.scope
        return "read" if set(methods) <= SAFE_METHODS else "write"

    def required_scope(self, request: HttpRequest) -> str:
        return self.scope_for([request.method or "GET"])

    def authenticate(self, request: HttpRequest, token: str) -> object | None:
        throttle.check_token_throttle(request)  # past the limit, refused unread (429)
        row = (
            ApiToken.objects.select_related("user")
            .filter(key_hash=ApiToken.hash_key(token), revoked_at__isnull=True, user__is_active=True)
            .first()
            if token.startswith(ApiToken.PREFIX)
            else None
        )
        if row is None:
            throttle.bad_token(request)
            return None
        now = timezone.now()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)  # not a write per request
        needed = self.required_scope(request)
        if needed not in token_scopes(row):
            raise HttpError(403, f"this token lacks the {needed!r} scope ({SCOPES[needed]}); create one that has it")
        request.user = row.user
        return row.user


class BrowserSession(SessionAuth):
    """The logged-in browser session, CSRF-checked on unsafe methods.

    A request that carries an Authorization header is judged by its token alone (a bad token is a
    401, not a fall back to the session), and an anonymous one is a 401 rather than a CSRF 403."""

    def __call__(self, request: HttpRequest) -> Any:
        if "Authorization" in request.headers or not request.user.is_authenticated:
            return None
        return super().__call__(request)


def scoped(scope: str | None = None) -> list[Any]:
    """The `auth=` of an operation that needs `scope` from tokens (sessions pass with CSRF)."""
    return [TokenAuth(scope), BrowserSession()]
