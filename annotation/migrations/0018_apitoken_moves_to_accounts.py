"""ApiToken now belongs to the accounts app (accounts 0001 took over its table,
`annotation_apitoken`): drop it from annotation's model state only; the table and its rows stay."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0017_project_require_ai_audit"),
        ("accounts", "0001_apitoken_from_annotation"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="ApiToken")],
            database_operations=[],
        ),
    ]
