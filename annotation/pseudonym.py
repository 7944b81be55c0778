"""The pseudonymous labeler id that the API and the dataset exports show instead of a name."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def pseudonym(project_slug: str, labeler_id: int) -> str:
    """A stable pseudonymous annotator id: HMAC-SHA256(SECRET_KEY, "slug:labeler id"), 16 hex digits."""
    mac = hmac.new(settings.SECRET_KEY.encode(), f"{project_slug}:{labeler_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:16]
