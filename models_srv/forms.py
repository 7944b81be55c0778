from __future__ import annotations

from typing import Any

from django import forms

from models_srv.engine import TrainConfig

_defaults = TrainConfig()


class TrainForm(forms.Form):
    backbone = forms.CharField(
        initial=_defaults.backbone, help_text="Hugging Face id or local path; 'default' is the packaged MiniLM."
    )
    mode = forms.ChoiceField(
        choices=[
            ("frozen", "Frozen backbone: train heads on cached embeddings (fast on CPU)"),
            ("full", "Full fine-tuning (for GPUs)"),
        ],
        initial=_defaults.mode,
    )
    label_source = forms.ChoiceField(
        choices=[("human", "Human judgments"), ("ai", "AI judgments"), ("both", "Both")], initial="human"
    )
    ensemble = forms.IntegerField(
        min_value=1, max_value=16, initial=_defaults.ensemble, help_text="Heads whose spread is the uncertainty."
    )
    epochs = forms.IntegerField(min_value=0, max_value=1000, initial=0, help_text="0 = the mode's default.")
    max_length = forms.IntegerField(min_value=16, max_value=8192, initial=_defaults.max_length)
    eval_fraction = forms.FloatField(min_value=0, max_value=0.9, initial=_defaults.eval_fraction)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False  # a bare "Train" button uses every default

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
