"""Property-based tests of the whole HTTP API from its own OpenAPI schema (Schemathesis): whatever
a client sends, valid or not, the API answers with no server error.

Each operation gets inputs generated from the schema (positive: what the schema allows; negative:
what it forbids), half of them aimed at the ids of a real project that the caller curates, so
the views run past the access check with odd bodies and query strings. Requests go through the
real WSGI application (not Django's test client, which re-raises exceptions) inside the test's
database transaction. Hypothesis is derandomized, so a run is reproducible."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from annotation.models import Project
from config.api import api
from tests.test_api import build_world, token_for

SCHEMA = schemathesis.openapi.from_dict(api.get_openapi_schema())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
EXAMPLES = 40  # per operation (about 20 s for all on two cores), many aimed at the real project's ids


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def wsgi_app() -> Iterator[Any]:
    """The real WSGI application, kept from closing the test's connection (as the test client does)."""
    from config.wsgi import application

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield application
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def real_path_parameters(operation: Any, project: Project, *, curator: Any, annotator: Any) -> dict[str, Any]:
    """The operation's path parameters as the ids of real objects of `project` (built for it)."""
    names = re.findall(r"{(\w+)}", operation.path)
    world = build_world(project, curator=curator, annotator=annotator, export="export_id" in names)
    real = {
        "slug": project.slug,
        "job_id": str(world["job"].uuid),
        "version_id": str(world["version"].uuid),
        "labeler_id": world["ai"].id,
        "run_id": str(world["run"].uuid),
        "export_id": str(world["export"].code) if "export" in world else None,
    }
    return {name: real[name] for name in names}


def test_every_operation_is_covered() -> None:
    labels = {op.label for op in OPERATIONS}
    assert "POST /api/v1/projects/{slug}/exports" in labels
    assert "GET /api/v1/exports/{export_id}/download" in labels
    assert len(labels) >= 21


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_no_input_makes_a_server_error(
    operation: Any, project: Project, curator: Any, annotator: Any, wsgi_app: Any, settings: Any, tmp_path: Path
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    settings.MEDIA_ROOT = tmp_path / "media"
    known = real_path_parameters(operation, project, curator=curator, annotator=annotator)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode) for mode in modes]
    if known:
        strategies += [operation.as_strategy(mode, path_parameters=known) for mode in modes]
    headers = {"Authorization": f"Bearer {token_for(curator)}"}

    @given(case=st.one_of(strategies))
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def no_server_error(case: Any) -> None:
        response = case.call(app=wsgi_app, headers=headers)
        case.validate_response(response, checks=[not_a_server_error])

    no_server_error()
