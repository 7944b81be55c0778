from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms

from models_srv.engine import TrainConfig
from models_srv.models import LabelSource

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from annotation.models import Project

_defaults = TrainConfig()


class TrainForm(forms.Form):
    backbone = forms.CharField(
        initial=_defaults.backbone,
        help_text="'default' (the packaged MiniLM), a Hugging Face id the operator has downloaded, or a folder "
        "under the operator's MODEL_DIRS.",
    )
    mode = forms.ChoiceField(
        choices=[
            ("top", "Top layers: fine-tune the backbone's top blocks on the whole dialogue (default)"),
            ("frozen", "Frozen backbone: train heads on cached embeddings (fastest)"),
            ("full", "Full fine-tuning (for GPUs)"),
            ("pluralistic", "Pluralistic: one reward head per preference group of annotators (pairwise judgments)"),
        ],
        initial=_defaults.mode,
    )
    groups = forms.IntegerField(
        min_value=0,
        max_value=8,
        initial=0,
        help_text="Pluralistic mode: preference groups; 0 = chosen from 1-4 by held-out likelihood.",
    )
    label_source = forms.ChoiceField(choices=LabelSource.choices, initial=LabelSource.PEOPLE)
    ensemble = forms.IntegerField(
        min_value=1, max_value=16, initial=_defaults.ensemble, help_text="Heads whose spread is the uncertainty."
    )
    epochs = forms.IntegerField(min_value=0, max_value=1000, initial=0, help_text="0 = the mode's default.")
    max_length = forms.IntegerField(
        min_value=0, max_value=8192, initial=0, help_text="Tokens per text; 0 = the mode's default (top 128, else 256)."
    )
    eval_fraction = forms.FloatField(min_value=0, max_value=0.9, initial=_defaults.eval_fraction)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False  # a bare "Train" button uses every default

    def clean_backbone(self) -> str:
        from models_srv.model_sources import ModelSourceError, check_model_source

        name = self.cleaned_data.get("backbone") or ""
        if not name:
            return name
        try:
            return check_model_source(name)
        except ModelSourceError as exc:
            raise forms.ValidationError(str(exc)) from None

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}


LABELER_EXAMPLES = {
    "llm": (
        "base_url: https://api.openai.com/v1\nmodel: gpt-4o-mini\napi_key_env: PREFLOOP_LLM_KEY_OPENAI\n"
        "concurrency: 4\nswap_positions: true\n"
    ),
    "reward_model": "version: current\nstrength_threshold: 1.0\n",
    "density_ratio": (
        "strong: Qwen/Qwen2.5-7B-Instruct\nweak: Qwen/Qwen2.5-0.5B-Instruct\n"
        "preamble: Prefer helpful and harmless answers.\n"
    ),
}


class LabelerForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(
        choices=[
            ("llm", "LLM judge (OpenAI-compatible endpoint)"),
            ("reward_model", "Reward-model judge"),
            ("density_ratio", "Density-ratio judge (two local causal LMs)"),
        ]
    )
    config = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono"}),
        initial=LABELER_EXAMPLES["llm"],
        help_text="YAML or JSON. Prompt templates can be overridden under 'templates'.",
    )
    api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=(
            "LLM judges: stored encrypted and never shown again (or name an environment variable starting "
            "with PREFLOOP_LLM_KEY_ in api_key_env)."
        ),
    )
    version = forms.ChoiceField(
        required=False,
        label="Reward model",
        help_text="Reward-model judges: a version of this project or of another project you curate; empty: the "
        "config's version (by default this project's current one).",
    )

    def __init__(self, *args: Any, user: User, project: Project, **kwargs: Any) -> None:
        from models_srv.selectors import judge_versions_for

        super().__init__(*args, **kwargs)
        versions = judge_versions_for(user, project).order_by("project__name", "-version")
        field = self.fields["version"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "as in the config")] + [
            (str(v.uuid), f"{v.project.name} v{v.version}{' (current)' if v.is_current else ''}") for v in versions
        ]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        version, config = data.get("version"), data.get("config")
        if version and data.get("kind") != "reward_model":
            self.add_error("version", "Only reward-model judges use a version.")
        elif version and isinstance(config, dict):
            data["config"] = {**config, "version": version}
        return data

    def clean_config(self) -> dict[str, Any]:
        import yaml

        try:
            value = yaml.safe_load(self.cleaned_data["config"]) or {}
        except yaml.YAMLError as exc:
            raise forms.ValidationError(f"not valid YAML/JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("the config is a mapping of settings")
        return value


# Policies offered but not recommended: `performance` did no better than random routing in any
# setting simulated (README, "Routing"; bench/route/README.md). New projects never start on it.
EXPERIMENTAL_POLICIES = ("performance",)


class RoutingForm(forms.Form):
    """A project's routing settings; saving re-routes its items."""

    routing_policy = forms.ChoiceField(
        label="Policy",
        help_text="The experimental performance-prediction policy did no better than random routing in our "
        "simulations; prefer the learned router.",
    )
    budget_percent = forms.FloatField(
        label="Human budget (% of items)", min_value=0, max_value=100, help_text="Items humans may label."
    )
    calibration_percent = forms.FloatField(
        label="Calibration share (% of items)",
        min_value=0,
        max_value=100,
        initial=10,
        help_text="Items labeled by both humans and AI, so the router can learn; counts against the budget.",
    )
    require_ai_audit = forms.BooleanField(
        label="Use only audited AI labelers",
        required=False,
        help_text="The router and the AI consensus skip AI labelers without a passing audit of their current config.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from annotation.models import Project

        super().__init__(*args, **kwargs)
        field = self.fields["routing_policy"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [
            (value, f"Experimental: {label}" if value in EXPERIMENTAL_POLICIES else label)
            for value, label in Project.RoutingPolicy.choices
        ]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        budget, calibration = data.get("budget_percent"), data.get("calibration_percent")
        if budget is not None and calibration is not None and calibration > budget:
            self.add_error("calibration_percent", "The calibration share cannot exceed the human budget.")
        return data
