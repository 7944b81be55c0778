from __future__ import annotations

from typing import Any

import yaml
from django import forms
from django.conf import settings

from annotation.importing import FORMATS
from annotation.services import ProjectSpec, SpecError

EXAMPLE_SCHEMA = """\
pairwise:
  strengths: [better, much better]
  allow_tie: true
  justification: optional
rubric:
  aspects:
    - {name: helpfulness, description: Does it address the request?, scale: {min: 1, max: 5}}
    - {name: correctness, description: Is every claim true?, scale: {min: 1, max: 5}}
"""


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=64, help_text="Lowercase letters, digits and dashes; used in URLs.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    guidelines = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text="Markdown, shown to annotators."
    )
    schema = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12, "class": "mono"}),
        initial=EXAMPLE_SCHEMA,
        help_text="YAML or JSON: pairwise or ranking, plus optional rubric and spans.",
    )
    overlap = forms.IntegerField(min_value=1, max_value=50, initial=1, help_text="Human judgments per item.")
    lease_seconds = forms.IntegerField(min_value=10, initial=900, help_text="How long an item stays leased.")
    gold_rate = forms.FloatField(min_value=0, max_value=1, initial=0)
    show_model_names = forms.BooleanField(required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            schema = yaml.safe_load(data["schema"])
        except yaml.YAMLError as exc:
            self.add_error("schema", f"not valid YAML/JSON: {exc}")
            return data
        try:
            data["spec"] = ProjectSpec.parse({**{k: v for k, v in data.items() if k != "schema"}, "schema": schema})
        except SpecError as exc:
            self.add_error("schema" if "schema" in str(exc) else None, str(exc))
        return data


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL, CSV, Parquet or a JSON array; gzip-compressed is fine.")
    format = forms.ChoiceField(
        choices=[("", "Detect from content")] + [(f, f.upper()) for f in FORMATS], required=False
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > settings.IMPORT_MAX_UPLOAD_BYTES:
            raise forms.ValidationError(
                f"The file is {upload.size:,} bytes; the limit is {settings.IMPORT_MAX_UPLOAD_BYTES:,}."
            )
        return upload
