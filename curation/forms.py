from __future__ import annotations

import json
from typing import Any

from django import forms

from curation.models import CurationAction

FORMAT_CHOICES = [
    ("pairs", "Preference pairs (TRL: prompt, chosen, rejected, margin)"),
    ("listwise", "Listwise rankings"),
    ("rubric", "Rubric ratings (a column per aspect)"),
    ("spans", "Span annotations"),
    ("raw", "Raw per-labeler judgments (pseudonymous ids)"),
]


class ExportForm(forms.Form):
    formats = forms.MultipleChoiceField(choices=FORMAT_CHOICES, widget=forms.CheckboxSelectMultiple)
    label_source = forms.ChoiceField(
        choices=[
            ("human", "Annotators' judgments (made here)"),
            ("imported", "Imported labels"),
            ("ai", "AI judgments"),
            ("consensus", "Consensus (annotators where any, else imported, else AI)"),
            ("all", "All sources, pooled"),
        ]
    )
    min_agreement = forms.FloatField(required=False, min_value=0, max_value=1, help_text="0..1, e.g. 0.67")
    min_strength = forms.FloatField(required=False, min_value=0)
    exclude_flagged = forms.BooleanField(required=False)
    exclude_dropped = forms.BooleanField(required=False, initial=True)
    splits = forms.MultipleChoiceField(
        required=False, choices=[("train", "train"), ("eval", "eval")], widget=forms.CheckboxSelectMultiple
    )
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    license = forms.CharField(max_length=100, initial="unknown", help_text="The dataset card's license field.")

    def filters(self) -> dict[str, Any]:
        d = self.cleaned_data
        keys = ("label_source", "min_agreement", "min_strength", "exclude_flagged", "exclude_dropped", "splits")
        out = {k: d[k] for k in keys if d.get(k) not in (None, "")}
        for k in ("date_from", "date_to"):
            if d.get(k):
                out[k] = d[k].isoformat()
        return out


class ActionForm(forms.Form):
    action = forms.ChoiceField(choices=CurationAction.Kind.choices)
    reason = forms.CharField(max_length=2000, required=False)
    evidence = forms.JSONField(required=False)

    def clean_evidence(self) -> Any:
        value = self.cleaned_data.get("evidence")
        if value is not None and "\\u0000" in json.dumps(value):  # PostgreSQL's jsonb refuses NUL
            raise forms.ValidationError("The evidence may not contain NUL characters.")
        return value
