"""API tokens. Users are Django's own (`settings.AUTH_USER_MODEL`).

`ApiToken` was defined in the annotation app until the accounts app took it over; its table keeps
the name it was created with, `annotation_apitoken` (see migration accounts 0001), so existing
tokens keep working.
"""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    """A per-user API token. Only a hash is stored; the key is shown once when created."""

    PREFIX = "pl_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "annotation_apitoken"

    def __str__(self) -> str:
        return f"token {self.name} of {self.user}"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def new_key(cls) -> str:
        return cls.PREFIX + secrets.token_urlsafe(32)
