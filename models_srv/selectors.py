"""Reads of the model registry on behalf of a user; other projects' versions answer 404."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet
from django.http import Http404
from pydantic import BaseModel

from annotation.models import Labeler, LabelSource, Project, source_q
from annotation.selectors import AnyUser, project_for_user, projects_curated_by
from models_srv.models import AILabelerAudit, AILabelRun, CrossFitRun, RewardModelVersion, RunStatus


def version_for_curator(user: AnyUser, version_uuid: UUID | str) -> RewardModelVersion:
    version = RewardModelVersion.objects.select_related("project", "snapshot").filter(uuid=version_uuid).first()
    if version is None:
        raise Http404("No such model version.")
    project_for_user(user, version.project.slug, curator=True)  # 404 unless the user curates it
    return version


def judge_versions_for(user: AnyUser | None, project: Project) -> QuerySet[RewardModelVersion]:
    """The versions a reward-model judge of `project` may use on behalf of `user`: the succeeded
    versions of `project` itself, and of every project `user` curates (whose versions they may
    read: `version_for_curator`). Without a user (a run started from the shell), its own only."""
    allowed = Q(project=project)
    if user is not None:
        allowed |= Q(project__in=projects_curated_by(user))
    return RewardModelVersion.objects.filter(allowed, status=RunStatus.SUCCEEDED).select_related("project")


def judge_version(user: AnyUser | None, project: Project, version: str) -> RewardModelVersion | None:
    """The version a judge's `version` names ("current": its own project's current version, else
    a uuid) if `user` may use it there, else None: a version they may not use and one that does
    not exist answer alike."""
    versions = judge_versions_for(user, project)
    if version == "current":
        return versions.filter(project=project, is_current=True).first()
    return versions.filter(uuid=version).first()


def versions_of(project: Project) -> list[RewardModelVersion]:
    return list(RewardModelVersion.objects.filter(project=project).select_related("snapshot").order_by("-version"))


def ai_labelers_of(project: Project) -> list[Labeler]:
    return list(
        Labeler.objects.filter(source_q(LabelSource.AI, labeler=""), project=project).order_by("name", "-version")
    )


def ai_runs_of(project: Project, limit: int = 20) -> list[AILabelRun]:
    return list(AILabelRun.objects.filter(project=project).select_related("labeler")[:limit])


def labeler_for_curator(user: AnyUser, labeler_id: int) -> Labeler:
    labeler = Labeler.objects.select_related("project").filter(id=labeler_id, project__isnull=False).first()
    if labeler is None or not labeler.is_ai:
        raise Http404("No such AI labeler.")
    project_for_user(user, labeler.own_project.slug, curator=True)
    return labeler


def ai_run_for_curator(user: AnyUser, run_uuid: UUID | str) -> AILabelRun:
    run = AILabelRun.objects.select_related("project", "labeler").filter(uuid=run_uuid).first()
    if run is None:
        raise Http404("No such run.")
    project_for_user(user, run.project.slug, curator=True)
    return run


def crossfit_latest(project: Project) -> CrossFitRun | None:
    """The project's latest cross-fitting run, whatever its status (what the review page shows)."""
    return CrossFitRun.objects.filter(project=project).order_by("-created_at", "-id").first()


def crossfit_done(project: Project) -> CrossFitRun | None:
    """The project's latest succeeded cross-fitting run: the out-of-fold margins the review queue reads."""
    return (
        CrossFitRun.objects.filter(project=project, status=RunStatus.SUCCEEDED).order_by("-finished_at", "-id").first()
    )


def audits_of(labeler: Labeler, limit: int = 10) -> list[AILabelerAudit]:
    """A labeler's latest judge audits, newest first."""
    return list(AILabelerAudit.objects.filter(labeler=labeler).select_related("created_by")[:limit])


def config_rows(model: type[BaseModel], values: dict[str, Any], hidden: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A stored configuration as people read it: one row per setting of `model`, in its order, with
    the value shown, the default, whether it was changed from that default, and the setting's help.
    `hidden` settings show "(set)" or "not set" in place of their value (a key, say)."""
    rows = []
    for name, spec in model.model_fields.items():
        default = spec.get_default(call_default_factory=True)
        value = values.get(name, default)
        if name in hidden:
            shown = "(set)" if value else "not set"
        else:
            shown = _show(value)
        rows.append(
            {
                "name": name,
                "value": shown,
                "multiline": "\n" in shown,
                "default": "required" if spec.is_required() else _show(default),
                "changed": not spec.is_required() and value != default,
                "help": spec.description or "",
            }
        )
    return rows


def labeler_config_rows(labeler: Any) -> list[dict[str, Any]]:
    """An AI labeler's settings as people read them; its API key never appears, only whether one is set."""
    from models_srv.judges import CONFIGS

    return config_rows(CONFIGS[labeler.kind], labeler.config, hidden=("api_key_encrypted",))


def _show(value: Any) -> str:
    if value is None or value == "" or value == {} or value == []:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Preference groups of a pluralistic reward model


@dataclass(frozen=True)
class PreferenceGroups:
    """The preference groups a pluralistic version found (`models_srv.evaluation.pluralistic_metrics`,
    stored in its metrics): each group's share of the annotators (`size`), its head's weight on
    response length, and its members, each a labeler id with the posterior of their group."""

    version: RewardModelVersion
    groups: list[dict[str, Any]]

    @property
    def k(self) -> int:
        return len(self.groups)

    def members(self) -> dict[int, tuple[int, float]]:
        """{labeler id: (group number, confidence)}; a labeler the model did not train on is absent."""
        return {int(m["labeler"]): (int(g["group"]), float(m["confidence"])) for g in self.groups for m in g["members"]}


def _pluralistic(project: Project) -> QuerySet[RewardModelVersion]:
    return RewardModelVersion.objects.filter(
        project=project, status=RunStatus.SUCCEEDED, config__mode="pluralistic", metrics__pluralistic__isnull=False
    )


def preference_groups(version: RewardModelVersion | None) -> PreferenceGroups | None:
    """The version's groups, with the annotators placed since training (`services.place_annotators`)
    among the members, each marked with the number of judgments that placed them (`placed_from`)."""
    if version is None:
        return None
    found = (version.metrics or {}).get("pluralistic", {})
    groups = [{**g, "members": list(g["members"])} for g in found.get("groups") or []]
    by_number = {int(g["group"]): g for g in groups}
    for p in found.get("placed") or []:
        weights = p["weights"]
        best = max(range(len(weights)), key=weights.__getitem__)  # the most likely group, numbered from 1
        if best + 1 in by_number:
            by_number[best + 1]["members"].append(
                {"labeler": p["labeler"], "confidence": weights[best], "placed_from": p["judgments"]}
            )
    return PreferenceGroups(version, groups) if groups else None


def pluralistic_latest(project: Project) -> PreferenceGroups | None:
    """The project's pluralistic version whose groups the Quality page shows: the promoted
    (current) one if it is pluralistic, else the latest that finished; None when there is none."""
    versions = _pluralistic(project).order_by("-is_current", "-finished_at", "-version")
    return preference_groups(versions.first())


def pluralistic_version_in(project: Project, version_uuid: object) -> PreferenceGroups | None:
    """The groups of a finished pluralistic version of `project` named by its uuid, else None (a
    version of another project, one that failed, a model that is not pluralistic and a malformed
    uuid answer alike)."""
    import uuid

    try:
        key = uuid.UUID(str(version_uuid))
    except ValueError:
        return None
    return preference_groups(_pluralistic(project).filter(uuid=key).first())


def pluralistic_versions(project: Project) -> list[RewardModelVersion]:
    """Every finished pluralistic version of the project, newest first (the export's group sources)."""
    return list(_pluralistic(project).order_by("-version"))


def unplaced_labelers(found: PreferenceGroups) -> int:
    """How many labelers have pairwise judgments in the version's project, of the label source it
    trained on, yet are in none of its groups: those `services.place_annotators` would place."""
    from models_srv.data import training_judgments

    version = found.version
    return (
        training_judgments(version.project, version.snapshot.label_source)
        .filter(payload__has_key="pairwise")
        .exclude(labeler_id__in=list(found.members()))
        .values("labeler_id")
        .distinct()
        .count()
    )
