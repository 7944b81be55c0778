"""Reads of the model registry on behalf of a user; other projects' versions answer 404."""

from __future__ import annotations

from django.http import Http404

from annotation.selectors import User, project_for_user
from models_srv.models import RewardModelVersion


def version_for_curator(user: User, version_uuid: object) -> RewardModelVersion:
    version = RewardModelVersion.objects.select_related("project", "snapshot").filter(uuid=version_uuid).first()
    if version is None:
        raise Http404("No such model version.")
    project_for_user(user, version.project.slug, curator=True)  # 404 unless the user curates it
    return version


def versions_of(project: object) -> list[RewardModelVersion]:
    return list(RewardModelVersion.objects.filter(project=project).select_related("snapshot").order_by("-version"))
