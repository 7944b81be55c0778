"""AI labeling runs count abstentions; an abstention is kept as a failure row marked `abstained`."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("models_srv", "0006_crossfit_runs_and_out_of_fold_margins"),
    ]

    operations = [
        migrations.AddField(
            model_name="ailabelfailure",
            name="abstained",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="ailabelrun",
            name="abstained",
            field=models.PositiveIntegerField(
                default=0,
                help_text="Answered, but the two response orders disagreed where the schema has no tie: no label.",
            ),
        ),
    ]
