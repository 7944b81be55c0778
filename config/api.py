"""The HTTP API at /api/v1 (django-ninja): schema at /api/v1/openapi.json, docs at /api/v1/docs.

Authentication and scopes are in accounts.auth: every operation takes a bearer token (`read` for
GET, `write` for other methods unless it names a scope with `auth=scoped(...)`) or the browser
session with CSRF."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.db import DataError
from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.openapi.schema import OpenAPISchema
from ninja.operation import Operation
from ninja.parser import Parser

from accounts.auth import TokenAuth, scoped
from accounts.throttle import TooManyBadTokensError
from annotation.api import router as annotation_router
from config.api_errors import ERROR_SCHEMA, common_refusals
from curation.api import router as curation_router
from models_srv.api import router as models_router

log = logging.getLogger(__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_text(value: Any) -> None:
    """PostgreSQL stores no NUL character in text or jsonb: refuse them at the door."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise ValueError("strings may not contain NUL characters")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


class StrictJSONParser(Parser):
    """JSON bodies as RFC 8259 has them (no NaN / Infinity) and without NUL characters; a body
    that breaks either is a 400 like any other unparsable body."""

    def parse_body(self, request: HttpRequest) -> Any:
        data = json.loads(request.body, parse_constant=_no_constant)
        _check_text(data)
        return data


class ScopedOpenAPISchema(OpenAPISchema):
    """Names each operation's token scope in its security requirement (OpenAPI 3.1 lets non-OAuth
    schemes list roles there) and in its description."""

    def operation_details(self, operation: Operation) -> dict[str, Any]:
        result = super().operation_details(operation)
        where = {p.get("in") for p in result.get("parameters", [])}
        common = common_refusals(path_params="path" in where, body="requestBody" in result, params=bool(where))
        for status, response in common.items():  # what the operation declares itself comes first
            result["responses"].setdefault(status, response)
        token = next((a for a in operation.auth_callbacks if isinstance(a, TokenAuth)), None)
        if token is not None:
            scope = token.scope_for(operation.methods)
            for requirement in result.get("security", []):
                if "TokenAuth" in requirement:
                    requirement["TokenAuth"] = [scope]
            note = f"Token scope: `{scope}`."
            result["description"] = f"{result['description']}\n\n{note}" if result.get("description") else note
        return result


class PrefloopAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: Any = None) -> OpenAPISchema:
        if path_prefix is None:
            path_prefix = self.get_root_path(path_params or {})
        schema = ScopedOpenAPISchema(self, path_prefix)
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        return schema


api = PrefloopAPI(
    title="Prefloop API",
    version="1",
    description=(
        "Projects, item imports, judgments, reward models, AI labelers and dataset exports. "
        "Authenticate with `Authorization: Bearer <token>` (create tokens at /account/tokens). "
        "Token scopes: `read` (every GET; always granted), `write` (create projects, import items), "
        "`train` (reward models, AI labelers), `export` (start and download exports); a token without "
        "the scope an operation needs gets 403. Another project's ids answer 404. Every refusal is JSON "
        "with a `detail`; each operation lists the status codes it answers."
    ),
    auth=scoped(),
    parser=StrictJSONParser(),
    urls_namespace="api",
)
api.add_router("/", annotation_router)
api.add_router("/", models_router)
api.add_router("/", curation_router)


@api.exception_handler(TooManyBadTokensError)
def too_many_bad_tokens(request: HttpRequest, exc: TooManyBadTokensError) -> HttpResponse:
    response = api.create_response(request, {"detail": str(exc)}, status=429)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(DataError)
def data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    """A value the database cannot store (a number out of its column's range, ...) is the
    client's mistake: 422, not a server error."""
    log.warning("API %s %s: %s", request.method, request.path, exc)
    return api.create_response(request, {"detail": "a value is out of range for storage"}, status=422)
