"""The OpenAPI schema says what the API does: every operation declares the status codes it answers
(config/api_errors.py), a body valid by the schema is accepted (or refused only for a rule the
schema cannot state, in a sentence the operation declares), and every 404 under /api/ is JSON.

The schemathesis runs are bounded (a few dozen derandomized examples per operation) and go
through the real WSGI application as tests/test_api_schemathesis.py does, as P's curator with a
token of every scope, half the cases aimed at the ids of real objects."""

from __future__ import annotations

import inspect
import re
import typing
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from annotation.api import ImportFormat
from annotation.importing import FORMATS
from annotation.models import Project
from config.api import api
from models_srv.api import LabelerIn
from models_srv.judges import CONFIGS
from tests.test_api import token_for
from tests.test_api_schemathesis import (
    real_path_parameters,
    wsgi_app,  # noqa: F401 - a fixture
)

OPENAPI = api.get_openapi_schema()
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
# No NUL characters: the schema says (400) that no text field stores one, but cannot say it of
# the free-form objects (configs, metadata) where the generator would put them.
SCHEMA.config.generation.update(allow_x00=False)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
POSITIVE, NEGATIVE = 30, 10  # examples per operation

# Rules that JSON Schema cannot state (uniqueness by a field, one value above another; the
# project spec's and the export filters'): a schema-valid body may still get a 422 naming one.
UNSTATEABLE = re.compile(
    r"names must be unique|scale max must be greater than min|a scale has at most 11 points|scale labels outside"
    r"|date_from is after date_to"
    r"|need a group_source|needs the group to keep|a group is chosen only with group_mode"
    # which models a server loads is the operator's setting (models_srv.model_sources)
    r"|is not available on this server|ALLOW_MODEL_FROM_CONFIG"
)


def _views() -> dict[tuple[str, str], Any]:
    """(method, OpenAPI path) -> the view function of every operation."""
    out = {}
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                full = re.sub(r"{\w+:(\w+)}", r"{\1}", f"/api/v1{prefix.rstrip('/')}/{path.lstrip('/')}")
                for method in operation.methods:
                    out[(method.lower(), full)] = operation.view_func
    return out


def _declared(method: str, path: str) -> set[int]:
    return {int(code) for code in OPENAPI["paths"][path][method]["responses"]}


def test_every_operation_declares_the_status_codes_it_answers() -> None:
    views = _views()
    operations = {(m, p): op for p, ops in OPENAPI["paths"].items() for m, op in ops.items()}
    assert set(views) == set(operations) and len(views) >= 21
    for (method, path), view in views.items():
        declared = _declared(method, path)
        op = operations[(method, path)]
        raised = {int(code) for code in re.findall(r"HttpError\(\s*(\d{3})", inspect.getsource(view))}
        expected = {401, 403, 503} | raised  # every operation authenticates and uses the database
        if "{" in path:
            expected |= {404}  # the object named in the path, or another project's
        if "requestBody" in op:
            expected |= {400, 422}  # unparsable, or invalid
        if op.get("parameters"):
            expected |= {422}
        assert expected <= declared, f"{method.upper()} {path} does not declare {sorted(expected - declared)}"
        success = [code for code in declared if code < 300]
        assert len(success) == 1, (method, path, success)
        for code, response in op["responses"].items():
            if int(code) >= 400:  # each refusal: why, and the JSON body with `detail`
                assert response["description"] and response["content"]["application/json"]["schema"], (path, code)


def test_the_schema_enums_are_what_the_server_accepts() -> None:
    assert set(typing.get_args(LabelerIn.model_fields["kind"].annotation)) == set(CONFIGS)
    assert set(typing.get_args(ImportFormat)) == {"", *FORMATS}


@pytest.mark.django_db
def test_every_404_under_the_api_is_json(curator: Any) -> None:
    client = Client(headers={"Authorization": f"Bearer {token_for(curator)}"})
    missing_object = client.get(f"/api/v1/imports/{uuid.uuid4()}")  # an operation's own 404
    assert missing_object.status_code == 404
    for url in (
        "/api/v1/imports/not-a-uuid",  # a path converter that does not match
        "/api/v1/projects/p1/items/not-a-uuid",
        "/api/v1/reward-models/12345",
        "/api/v1/no-such-thing",
        "/api/v2/projects",
    ):
        for response in (client.get(url), client.post(url, {}, content_type="application/json")):
            assert response.status_code == 404, url
            assert response["Content-Type"] == "application/json", url
            assert response.json() == missing_object.json(), url


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_the_api_answers_only_what_it_declares_and_accepts_schema_valid_input(
    operation: Any,
    project: Project,
    curator: Any,
    annotator: Any,
    wsgi_app: Any,  # noqa: F811 - the fixture
    settings: Any,
    tmp_path: Path,
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    settings.MEDIA_ROOT = tmp_path / "media"
    known = real_path_parameters(operation, project, curator=curator, annotator=annotator)
    checks = [not_a_server_error, status_code_conformance]
    headers = {"Authorization": f"Bearer {token_for(curator)}"}

    def strategies(mode: GenerationMode) -> list[Any]:
        aimed = [operation.as_strategy(mode, path_parameters=known)] if known else []
        return [operation.as_strategy(mode), *aimed]

    anonymous = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known or None)

    @given(case=anonymous)
    @hypothesis_settings(max_examples=1, deadline=None, database=None, derandomize=True, phases=[Phase.generate])
    def without_a_token(case: Any) -> None:
        response = case.call(app=wsgi_app)
        assert response.status_code == 401
        case.validate_response(response, checks=checks)

    refused: list[str] = []

    @given(case=st.one_of(strategies(GenerationMode.POSITIVE)))
    @hypothesis_settings(
        max_examples=POSITIVE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def schema_valid(case: Any) -> None:
        response = case.call(app=wsgi_app, headers=headers)
        case.validate_response(response, checks=checks)
        if response.status_code == 400 or (response.status_code == 422 and isinstance(response.json()["detail"], list)):
            errors = response.json()["detail"]
            if not (isinstance(errors, list) and all(UNSTATEABLE.search(e.get("msg", "")) for e in errors)):
                refused.append(f"{response.status_code} {errors} for body {case.body!r}, query {case.query!r}")

    @given(case=st.one_of(strategies(GenerationMode.NEGATIVE)))
    @hypothesis_settings(
        max_examples=NEGATIVE,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def schema_invalid(case: Any) -> None:
        case.validate_response(case.call(app=wsgi_app, headers=headers), checks=checks)

    without_a_token()
    schema_valid()
    schema_invalid()
    assert not refused, "schema-valid input refused:\n" + "\n".join(refused[:5])
