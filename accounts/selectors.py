"""Reads of a user's own tokens."""

from __future__ import annotations

from django.contrib.auth.models import User

from accounts.models import ApiToken


def tokens_of(user: User) -> list[ApiToken]:
    return list(ApiToken.objects.filter(user_id=user.pk).order_by("revoked_at", "-created_at", "-id"))


def token_of_user(user: User, token_id: int) -> ApiToken | None:
    """The user's own token, or None (another user's token id finds nothing)."""
    return ApiToken.objects.filter(user_id=user.pk, pk=token_id).first()
