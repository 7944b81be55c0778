"""Projects may require a passing audit of an AI labeler before the router and the AI consensus use it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0016_recount_human_count_without_imported"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="require_ai_audit",
            field=models.BooleanField(
                default=False,
                help_text="The router and the AI consensus use only AI labelers with a passing audit of their current config.",
            ),
        ),
    ]
