"""Imported labels no longer count as human judgments: recount `Item.human_count` from the
annotators' judgments of every item that has an imported label, and open again the items that
were done only by imported labels. Batched by item id and re-runnable (it sets counts from the
judgments, it does not add to them)."""

from django.db import migrations
from django.db.models import Count, F, Q

BATCH = 2000


def recount(apps, schema_editor):
    Item = apps.get_model("annotation", "Item")
    touched = (
        Item.objects.filter(judgments__labeler__kind="imported").values_list("id", flat=True).distinct().order_by("id")
    )
    last = 0
    while True:
        ids = list(touched.filter(id__gt=last)[:BATCH])
        if not ids:
            return
        last = ids[-1]
        counted = Item.objects.filter(id__in=ids).annotate(
            n=Count("judgments", filter=Q(judgments__labeler__kind="human"))
        )
        for item_id, n in counted.values_list("id", "n"):
            Item.objects.filter(id=item_id).update(human_count=n)
        short = Item.objects.filter(
            id__in=ids, is_gold=False, status="done", human_count__lt=F("project__overlap") + F("extra_overlap")
        )
        short.update(status="open")


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0015_imported_labels_not_human_work"),
    ]

    operations = [
        migrations.RunPython(recount, migrations.RunPython.noop),
    ]
