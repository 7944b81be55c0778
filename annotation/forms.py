from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from annotation.importing import FORMATS
from annotation.models import Project
from annotation.schema import JudgmentSchema
from annotation.schema_builder import DEFAULT_SCHEMA, SchemaInput, schema_from_post, schema_from_stored, schema_yaml
from annotation.services import ProjectSpec, SpecError


class SchemaFieldsMixin:
    """The schema part of a project form: the builder's fields and the YAML text (`schema`), read by
    `annotation.schema_builder.schema_from_post` from whichever the curator edited last. The page
    renders them from `schema_input` (see `_schema_editor.html`), not from a widget."""

    data: Any
    schema_input: SchemaInput

    def _clean_schema(self) -> JudgmentSchema | None:
        self.schema_input = schema_from_post(self.data)
        if self.schema_input.error:
            self.add_error("schema", self.schema_input.error)  # type: ignore[attr-defined]
        return self.schema_input.schema


class ProjectCreateForm(SchemaFieldsMixin, forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=64, help_text="Lowercase letters, digits and dashes; used in URLs.")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    guidelines = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text="Markdown, shown to annotators."
    )
    schema = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12, "class": "mono"}),
        initial=schema_yaml(DEFAULT_SCHEMA),
        help_text="YAML or JSON: pairwise or ranking, plus optional rubric and spans.",
    )
    overlap = forms.IntegerField(min_value=1, max_value=50, initial=1, help_text="Human judgments per item.")
    lease_seconds = forms.IntegerField(min_value=10, initial=900, help_text="How long an item stays leased.")
    gold_rate = forms.FloatField(min_value=0, max_value=1, initial=0)
    show_model_names = forms.BooleanField(required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema_input = schema_from_stored(DEFAULT_SCHEMA)
        self.fields["schema"].required = False  # the builder may be what was edited; checked in clean()

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        schema = self._clean_schema()
        if self.errors or schema is None:
            return data
        fields = {k: v for k, v in data.items() if k != "schema"}
        try:
            data["spec"] = ProjectSpec.parse({**fields, "schema": schema.model_dump(mode="json", exclude_none=True)})
        except SpecError as exc:
            self.add_error("schema" if "schema" in str(exc) else None, str(exc))
        return data


class ProjectSettingsForm(SchemaFieldsMixin, forms.Form):
    """A curator's edit of an existing project's schema and guidelines: each change is a new version."""

    guidelines = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10}), required=False, help_text="Markdown, shown to annotators."
    )
    schema = forms.CharField(widget=forms.Textarea(attrs={"rows": 12, "class": "mono"}), required=False)

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"guidelines": project.guidelines})
        super().__init__(*args, **kwargs)
        self.schema_input = schema_from_stored(project.judgment_schema)

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        data["judgment_schema"] = self._clean_schema()
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
