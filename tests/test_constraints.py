"""Invariants that the database itself enforces, whatever code path writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.models import Assignment, Item, Judgment, Labeler, Project


def _item(project: Project, ext: str = "x", **extra) -> Item:
    fields = {"prompt": "p", "responses": [{"text": "a"}, {"text": "b"}], "num_responses": 2, **extra}
    return Item.objects.create(project=project, external_id=ext, **fields)


def _refused(fn) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        fn()


def test_external_ids_are_unique_per_project(project: Project, make_project) -> None:
    _item(project, "same")
    _refused(lambda: _item(project, "same"))
    _item(make_project("other"), "same")  # another project may reuse it


def test_a_labeler_judges_an_item_once(project: Project, annotator) -> None:
    item = _item(project)
    human = Labeler.objects.create(kind="human", user=annotator, name=annotator.username)
    payload = {"pairwise": {"choice": "A", "strength": 1}}
    Judgment.objects.create(item=item, labeler=human, payload=payload, schema_version=1)
    _refused(lambda: Judgment.objects.create(item=item, labeler=human, payload=payload, schema_version=1))


def test_human_labelers_have_a_user_and_ai_labelers_a_project(project: Project, annotator) -> None:
    _refused(lambda: Labeler.objects.create(kind="human", name="nobody"))
    _refused(lambda: Labeler.objects.create(kind="llm", name="judge", user=annotator))
    _refused(lambda: Labeler.objects.create(kind="llm", name="judge"))
    Labeler.objects.create(kind="llm", name="judge", project=project)
    _refused(lambda: Labeler.objects.create(kind="llm", name="judge", project=project))


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(Item, "status", "finished"), (Item, "split", "holdout"), (Project, "routing_policy", "coin")],
)
def test_state_columns_take_only_their_values(project: Project, model, field: str, value: str) -> None:
    obj = _item(project) if model is Item else project
    setattr(obj, field, value)
    _refused(lambda: obj.save())


def test_assignments_are_unique_per_annotator_and_have_a_valid_lease(project: Project, annotator) -> None:
    item = _item(project)
    now = timezone.now()
    lease = {"item": item, "annotator": annotator, "response_order": [1, 0], "leased_at": now}
    Assignment.objects.create(**lease, expires_at=now + timedelta(minutes=5))
    _refused(lambda: Assignment.objects.create(**lease, expires_at=now + timedelta(minutes=5)))
    other = _item(project, "y")
    _refused(lambda: Assignment.objects.create(**{**lease, "item": other}, expires_at=now - timedelta(seconds=1)))
    _refused(
        lambda: Assignment.objects.create(**{**lease, "item": other, "state": "lost"}, expires_at=now + timedelta(1))
    )


def test_project_numbers_stay_in_range(project: Project) -> None:
    for field, value in [("overlap", 0), ("human_budget", 1.5), ("gold_rate", -0.1), ("lease_seconds", 1)]:
        setattr(project, field, value)
        _refused(lambda: project.save())
        project.refresh_from_db()


def test_gold_items_carry_their_answer(project: Project) -> None:
    _refused(lambda: _item(project, "g", is_gold=True))
