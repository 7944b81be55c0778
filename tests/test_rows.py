"""annotation.rows: instances loaded from hand-written SQL are what the ORM would have made."""

from __future__ import annotations

import pytest
from django.db.models import signals

from annotation import queue, rows
from annotation.importing import import_items
from annotation.models import Assignment, Item
from annotation.rows import Rows
from tests.conftest import jsonl, pair_row


def _load(model: type, pk: int) -> object:
    loader = Rows(model, "t")
    sql = f'SELECT {loader.columns} FROM "{model._meta.db_table}" t WHERE t.id = %s'  # noqa: S608 - metadata
    return loader.load(rows.fetch_one(sql, [pk]))


def _fields(obj: object, model: type) -> dict[str, object]:
    return {f.attname: getattr(obj, f.attname) for f in model._meta.concrete_fields}


@pytest.mark.django_db
def test_loaded_rows_match_the_orms_instances(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(i, metadata={"k": [i]}) for i in range(3)]))
    handout = queue.hand_out(project=project, user=annotator)
    assert handout.assignment is not None
    for model, pk in ((Assignment, handout.assignment.pk), (Item, handout.assignment.item_id)):
        fast = _load(model, pk)
        orm = model.objects.get(pk=pk)
        assert type(fast) is model and fast == orm
        assert _fields(fast, model) == _fields(orm, model)
        assert fast._state.adding is False and fast._state.db == "default"
    before = Item.objects.count()
    fast.priority = 7
    fast.save()  # an UPDATE of the existing row, not an INSERT
    assert Item.objects.count() == before and Item.objects.get(pk=fast.pk).priority == 7
    assignment = _load(Assignment, handout.assignment.pk)
    assert assignment.item.pk == handout.assignment.item_id  # the foreign key loads on access


@pytest.mark.django_db
def test_with_an_init_signal_connected_rows_go_through_the_models_init(project, annotator) -> None:
    import_items(project=project, fileobj=jsonl([pair_row(1)]))
    seen: list[object] = []

    def receiver(sender: type, instance: object, **kwargs: object) -> None:
        seen.append(instance)

    signals.post_init.connect(receiver, sender=Item)
    try:
        item = Item.objects.filter(project=project).first()
        loaded = _load(Item, item.pk)
    finally:
        signals.post_init.disconnect(receiver, sender=Item)
    assert loaded in seen and loaded == item
