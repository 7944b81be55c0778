"""The overlap rule (`annotation.overlap`) says the same thing in Python, in the ORM and in SQL: for
every item of a grid of counts, the Python check, the ORM filter and the raw SQL fragment pick the
same items on the real database."""

from __future__ import annotations

import itertools

from django.db import connection

from annotation import overlap
from annotation.importing import import_items
from annotation.models import Item
from tests.conftest import jsonl, pair_row

# (human_count, leased_count, extra_overlap): below, at and above each boundary for overlaps 1..3.
GRID = list(itertools.product(range(5), range(3), range(3)))


def _grid_project(make_project, curator):
    project = make_project("rule", curator=curator)
    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(len(GRID))]))
    items = list(Item.objects.filter(project=project).order_by("id"))
    for item, (human, leased, extra) in zip(items, GRID, strict=True):
        item.human_count, item.leased_count, item.extra_overlap = human, leased, extra
    Item.objects.bulk_update(items, ["human_count", "leased_count", "extra_overlap"])
    return project, list(Item.objects.filter(project=project).order_by("id"))


def _sql_ids(project_id: int, fragment: str, project_overlap: int) -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT i.id FROM annotation_item i WHERE i.project_id = %(project)s AND {fragment}",  # noqa: S608
            {"project": project_id, "overlap": project_overlap},
        )
        return {row[0] for row in cursor.fetchall()}


def test_full_is_the_same_rule_in_python_the_orm_and_sql(make_project, curator) -> None:
    project, items = _grid_project(make_project, curator)
    for n in (1, 2, 3):
        in_python = {i.id for i in items if overlap.is_full(n, i)}
        in_orm = set(Item.objects.filter(overlap.full_q(n), project=project).values_list("id", flat=True))
        in_sql = _sql_ids(project.pk, overlap.full_sql("i"), n)
        assert in_python == in_orm == in_sql
        # The grid straddles the boundary: some items are full and some are not.
        assert 0 < len(in_python) < len(items)
        expected = {i.id for i, (human, _, extra) in zip(items, GRID, strict=True) if human >= n + extra}
        assert in_python == expected


def test_full_after_one_more_judgment_is_the_same_rule_in_python_and_sql(make_project, curator) -> None:
    project, items = _grid_project(make_project, curator)
    for n in (1, 2, 3):
        in_python = {i.id for i in items if overlap.is_full(n, i, human_count=i.human_count + 1)}
        in_sql = _sql_ids(project.pk, overlap.full_sql("i", human_count="i.human_count + 1"), n)
        assert in_python == in_sql
        assert in_python != {i.id for i in items if overlap.is_full(n, i)}


def test_a_free_slot_is_the_same_rule_in_python_the_orm_and_sql(make_project, curator) -> None:
    project, items = _grid_project(make_project, curator)
    for n in (1, 2, 3):
        in_python = {i.id for i in items if overlap.has_free_slot(n, i)}
        in_orm = set(Item.objects.filter(overlap.free_slot_q(n), project=project).values_list("id", flat=True))
        in_sql = _sql_ids(project.pk, overlap.free_slot_sql("i"), n)
        assert in_python == in_orm == in_sql
        expected = {i.id for i, (human, leased, extra) in zip(items, GRID, strict=True) if human + leased < n + extra}
        assert in_python == expected and 0 < len(expected) < len(items)


def test_the_wanted_total_is_the_same_in_python_and_the_orm(make_project, curator) -> None:
    project, items = _grid_project(make_project, curator)
    annotated = dict(Item.objects.filter(project=project).annotate(w=overlap.wanted_expr(2)).values_list("id", "w"))
    assert annotated == {i.id: overlap.wanted(2, i) for i in items}
    assert sorted(set(annotated.values())) == [2, 3, 4]


def test_one_more_judgment_is_wanted_of_a_full_item() -> None:
    item = Item(human_count=3, leased_count=0, extra_overlap=0)
    assert overlap.is_full(2, item)
    item.extra_overlap = overlap.extra_for_one_more(2, item)
    assert item.extra_overlap == 2 and not overlap.is_full(2, item)
    assert overlap.is_full(2, item, human_count=4)
