"""What the HTTP API answers when it refuses, as its OpenAPI schema declares it.

Every refusal is JSON with a `detail`: a sentence, or for a request that fails validation (422) a
list of errors with `loc`, `msg` and `type`. Two kinds of status codes are declared:

- those that follow from how an operation is called, added to every operation by the schema
  generator (`common_refusals`, used by config.api): 401 and 403 (authentication, token scope,
  CSRF), 503 (the database is unavailable or busy, with Retry-After), 404 where the path names
  an object, 400 where it takes a body, 422 where it takes any input;
- those a view raises itself (a state conflict, a rule beyond the schema), which the operation
  names with `openapi_extra=refusals({409: "why"})` next to its code.

tests/test_openapi_contract.py checks both against what the API really answers.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "properties": {
        "detail": {
            "description": "What was refused: a sentence, or (422) a list of validation errors.",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
        }
    },
    "required": ["detail"],
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}
NOT_FOUND = "Not Found"  # django-ninja's own body for an Http404 inside an operation


def _refusal(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def refusals(reasons: dict[int, str]) -> dict[str, Any]:
    """An operation's `openapi_extra` declaring the refusals its view raises: {status: why}."""
    return {"responses": {status: _refusal(why) for status, why in reasons.items()}}


def common_refusals(*, path_params: bool, body: bool, params: bool) -> dict[int, dict[str, Any]]:
    """The refusals that follow from how an operation is called (every operation authenticates)."""
    out = {
        401: "No valid bearer token (or browser session).",
        403: "The token lacks the operation's scope, the user may not do this, or a session's CSRF token is missing.",
        429: "Too many bad bearer tokens from this address: retry after the Retry-After header's seconds.",
        503: "The database is unavailable or busy for a moment: retry after the Retry-After header's seconds.",
    }
    if path_params:
        out[404] = "No such object, or one in a project you cannot see (also: any /api/ URL no operation matches)."
    if body:
        out[400] = "The body is not JSON, or holds NaN, Infinity or a NUL character (which no text field stores)."
    if body or params or path_params:
        out[422] = "The input fails validation (a list of errors) or a rule the schema cannot state (a sentence)."
    return {status: _refusal(why) for status, why in sorted(out.items())}


def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """A URL under /api/ that no operation matches (say a malformed id, `items/not-a-uuid`): the
    same JSON 404 as a missing object, not Django's HTML page."""
    return JsonResponse({"detail": NOT_FOUND}, status=404)
