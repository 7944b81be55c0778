"""The table the login and API-token throttles count in when no shared cache is configured
(config/throttle.py; settings CACHES["throttle"]): Django's database-cache table, created here so
that `migrate` is the only set-up step. Created whatever CACHE_URL says now, so that unsetting it
later finds the table in place."""

from django.core.management.commands.createcachetable import Command
from django.db import migrations

TABLE = "prefloop_throttle"


def create(apps, schema_editor):
    command = Command()
    command.verbosity = 0
    command.create_table(schema_editor.connection.alias, TABLE, dry_run=False)


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(TABLE)}")


class Migration(migrations.Migration):
    dependencies = [("annotation", "0012_assignment_versions")]

    operations = [migrations.RunPython(create, drop)]
