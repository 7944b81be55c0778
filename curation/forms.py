from __future__ import annotations

import json
from typing import Any

from django import forms

from curation.models import CurationAction
from curation.selectors import REVIEW_PAGE_SIZES, REVIEW_REASONS, REVIEW_SORTS, ReviewFilters

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
    group_source = forms.ChoiceField(
        required=False,
        label="Preference groups from",
        help_text="A pluralistic reward model of this project whose groups the export reads; the raw format "
        "then carries each judgment's group and group confidence.",
    )
    group_mode = forms.ChoiceField(
        required=False,
        label="Groups",
        choices=[
            ("pooled", "All groups pooled (as without groups)"),
            ("one", "One group only"),
            ("split", "One consensus per group (pairs rows carry their group)"),
            ("weighted", "Weight each judgment by its annotator's group confidence"),
        ],
    )
    group = forms.IntegerField(required=False, min_value=1, help_text="The group kept by 'One group only'.")
    license = forms.CharField(max_length=100, initial="unknown", help_text="The dataset card's license field.")

    def __init__(self, *args: Any, project: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from models_srv.selectors import pluralistic_versions

        versions = pluralistic_versions(project) if project is not None else []
        field = self.fields["group_source"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "none")] + [
            (str(v.uuid), f"v{v.version}{' (current)' if v.is_current else ''}: {v.metrics['pluralistic']['k']} groups")
            for v in versions
        ]

    def filters(self) -> dict[str, Any]:
        d = self.cleaned_data
        keys = ("label_source", "min_agreement", "min_strength", "exclude_flagged", "exclude_dropped", "splits")
        out = {k: d[k] for k in keys if d.get(k) not in (None, "")}
        for k in ("date_from", "date_to"):
            if d.get(k):
                out[k] = d[k].isoformat()
        # Checked with the other filters (curation.export.ExportFilters), which name what is wrong.
        for k in ("group_source", "group_mode", "group"):
            if d.get(k) not in (None, "", "pooled"):
                out[k] = d[k]
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


class ReviewFilterForm(forms.Form):
    """The review queue's filters, sort and page, read from the URL (so a view is shareable and
    the back button returns to it) and, for a bulk action, from the posted copy of that URL."""

    reason = forms.MultipleChoiceField(
        required=False, choices=[(r, r) for r in REVIEW_REASONS], widget=forms.CheckboxSelectMultiple
    )
    labeler = forms.IntegerField(required=False, min_value=1)
    category = forms.CharField(required=False, max_length=200)
    margin_min = forms.FloatField(required=False, label="Margin from", help_text="logit for the label")
    margin_max = forms.FloatField(required=False, label="to")
    sort = forms.ChoiceField(required=False, choices=list(REVIEW_SORTS.items()))
    per = forms.TypedChoiceField(
        required=False, coerce=int, empty_value=50, choices=[(n, n) for n in REVIEW_PAGE_SIZES]  # type: ignore[arg-type]
    )
    page = forms.IntegerField(required=False, min_value=1)

    def filters(self) -> ReviewFilters:
        d = self.cleaned_data
        return ReviewFilters(
            reasons=tuple(d.get("reason") or ()),
            labeler_id=d.get("labeler"),
            category=(d.get("category") or "").strip(),
            margin_min=d.get("margin_min"),
            margin_max=d.get("margin_max"),
            sort=d.get("sort") or "evidence",
        )

    def state(self) -> list[tuple[str, str]]:
        """The filters and sort as (name, value) pairs for a URL or hidden fields; page aside."""
        d = self.cleaned_data
        pairs = [("reason", r) for r in d.get("reason") or ()]
        for name in ("labeler", "category", "margin_min", "margin_max", "sort"):
            if d.get(name) not in (None, ""):
                pairs.append((name, str(d[name])))
        if d.get("per") not in (None, 50):
            pairs.append(("per", str(d["per"])))
        return pairs


class _IdsField(forms.MultipleChoiceField):
    """Item ids ticked on the page: any positive integers (the view checks they are the project's)."""

    def valid_value(self, value: str) -> bool:
        return str(value).isdigit() and len(str(value)) < 19

    def clean(self, value: Any) -> list[int]:
        return [int(v) for v in super().clean(value)]


class BulkActionForm(forms.Form):
    """A bulk action; its why is `note` (the filter form's `reason` is the queue's reasons)."""

    action = forms.ChoiceField(choices=CurationAction.Kind.choices)
    note = forms.CharField(max_length=2000, required=False)
    scope = forms.ChoiceField(choices=[("selected", "the rows ticked"), ("all", "every row matching the filter")])
    item = _IdsField(required=False)
    count = forms.IntegerField(required=False, min_value=0, help_text="How many rows the curator saw matching.")

    def clean(self) -> dict[str, Any]:
        d = super().clean() or {}
        if d.get("scope") == "selected" and not d.get("item"):
            raise forms.ValidationError("Tick the rows to act on, or choose every row matching the filter.")
        if d.get("scope") == "all" and d.get("count") is None:
            raise forms.ValidationError("The number of matching rows is missing.")
        return d
