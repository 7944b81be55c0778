"""Writes of the curation app: curation actions (apply, undo) and dataset exports (create,
reproduce, run, fail stale ones).

Curation actions are a stack per item: the newest action that is not undone is the item's
effective state, and only that one can be undone, which restores what the item was before it.
- `drop` takes the item out of the queue and out of training data (`Item.status = dropped`);
- `flip` swaps chosen and rejected in exports; `accept` marks the labels as reviewed;
- `requeue` sends the item back to human annotators: open, routed to humans (an AI-routed item)
  and served first (priority above every open item); an item already judged to its full overlap
  wants one more human judgment (`Item.extra_overlap`), from an annotator who has not seen it.

Exports: `export_create` validates and stores a pending snapshot (with its cutoff: now) and
queues the task on commit; the task claims it with a conditional update, writes into
`VAR_DIR/exports/<code>.<attempt>.partial/`, renames the folder into place and marks the snapshot
done in one step, while it still owns the snapshot. A worker killed mid-export leaves `running`
behind with a heartbeat (written by `config.jobs.liveness` throughout) that goes stale
(`EXPORT_HEARTBEAT_STALE_SECONDS`, default the reward models'): the periodic
`recover_stale_exports` (every minute) queues it again or, after `MAX_ATTEMPTS`, marks it failed;
a redelivered message takes it over the same way.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from annotation import audit, overlap, queue
from annotation.models import ImportJob, Item, Labeler, Project
from config.jobs import JobLost, claim_job, liveness, partial_folder, remove_partials, stale_after, sweep_stale
from curation.export import (
    ExportError,
    ExportFilters,
    build_export,
    bundle_export,
    parse_formats,
    remove_loose_files,
)
from curation.export.context import group_source
from curation.models import CurationAction, ExportSnapshot, ExportStatus, exports_root

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
HEARTBEAT_EVERY_SECONDS = 2.0


class CurationError(ValueError):
    """A curation action that cannot be carried out, with a reason to show."""


class ExportSupersededError(Exception):
    """This attempt no longer owns its snapshot (the sweep or a redelivery took it over)."""


# ---------------------------------------------------------------------------------------------
# Curation actions


def _settled_status(item: Item, project: Project) -> str:
    """Open or done from the item's human judgments (for an item coming back from `dropped`)."""
    if not item.is_gold and overlap.is_full(project.overlap, item):
        return Item.Status.DONE
    return Item.Status.OPEN


def curation_action_apply(
    *,
    item: Item,
    actor: User | None,
    action: str,
    reason: str = "",
    evidence: Mapping[str, Any] | None = None,
) -> CurationAction:
    """Record a curation decision on an item and apply its effect on the item."""
    if action not in CurationAction.Kind.values:
        raise CurationError(f"unknown curation action {action!r}; use one of {', '.join(CurationAction.Kind.values)}")
    if evidence is not None and not isinstance(evidence, Mapping):
        raise CurationError("evidence is a JSON object")
    with transaction.atomic():
        if action == CurationAction.Kind.DROP:
            queue.release_item_leases(item_id=item.pk)  # before the item's lock, as a submit orders them
        # The item's row only (`of`): the project's row is read, not locked, so this never waits
        # on (or deadlocks with) a member's removal or an overlap change holding the project.
        locked = Item.objects.select_for_update(of=("self",)).select_related("project").get(pk=item.pk)
        project = locked.project
        previous = {
            "status": locked.status,
            "route": locked.route,
            "priority": locked.priority,
            "extra_overlap": locked.extra_overlap,
        }
        if action == CurationAction.Kind.DROP:
            locked.status = Item.Status.DROPPED
        elif action == CurationAction.Kind.REQUEUE:
            if locked.is_gold:
                raise CurationError("gold items are served as checks; they cannot be requeued")
            top = Item.objects.filter(project=project, status=Item.Status.OPEN).aggregate(p=Max("priority"))["p"]
            locked.status = Item.Status.OPEN
            if locked.route == Item.Route.AI:
                locked.route = Item.Route.HUMAN
            locked.priority = max(locked.priority, (top or 0.0) + 1.0)
            if overlap.is_full(project.overlap, locked):
                # Judged to its full overlap: one more human judgment is wanted.
                locked.extra_overlap = overlap.extra_for_one_more(project.overlap, locked)
        elif locked.status == Item.Status.DROPPED:
            locked.status = _settled_status(locked, project)  # flip / accept bring a dropped item back
        locked.save(update_fields=["status", "route", "priority", "extra_overlap"])
        record = CurationAction.objects.create(
            project=project,
            item=locked,
            action=action,
            reason=reason.strip(),
            evidence=dict(evidence or {}),
            previous=previous,
            actor=actor,
        )
        audit.record(
            actor,
            "curation.apply",
            project=project,
            target=locked,
            details={"action": action, "action_id": record.id, "reason": reason},
        )
    item.status, item.route, item.priority = locked.status, locked.route, locked.priority
    item.extra_overlap = locked.extra_overlap
    return record


def curation_action_undo(*, action: CurationAction, actor: User | None) -> CurationAction:
    """Undo the item's newest action, restoring the item's status, route and priority from before it.

    Undoing an action twice changes nothing; undoing an older action while a newer one stands is
    refused (undo the newer one first), so the restored state is always the one it replaced."""
    with transaction.atomic():
        if (action.previous or {}).get("status") == Item.Status.DROPPED:
            queue.release_item_leases(item_id=action.item_id)  # it goes back to dropped
        item = Item.objects.select_for_update(of=("self",)).select_related("project").get(pk=action.item_id)
        record = CurationAction.objects.select_for_update().get(pk=action.pk)
        if record.undone_at is not None:
            return record
        newest = CurationAction.objects.filter(item=item, undone_at__isnull=True).order_by("-created_at", "-id").first()
        if newest is not None and newest.pk != record.pk:
            raise CurationError(f"undo the newer {newest.action} action on this item first")
        prev = record.previous or {}
        item.status = prev.get("status", item.status)
        item.route = prev.get("route", item.route)
        item.priority = prev.get("priority", item.priority)
        item.extra_overlap = prev.get("extra_overlap", item.extra_overlap)
        if item.status == Item.Status.OPEN and not item.is_gold and overlap.is_full(item.project.overlap, item):
            item.status = Item.Status.DONE  # judged to the full overlap since: done, not back in the queue
        item.save(update_fields=["status", "route", "priority", "extra_overlap"])
        record.undone_at = timezone.now()
        record.undone_by = actor
        record.save(update_fields=["undone_at", "undone_by"])
        audit.record(
            actor,
            "curation.undo",
            project=item.project,
            target=item,
            details={"action": record.action, "action_id": record.id},
        )
    action.undone_at, action.undone_by = record.undone_at, record.undone_by
    return record


def curation_bulk_apply(
    *,
    project: Project,
    item_ids: Sequence[int],
    actor: User | None,
    action: str,
    reason: str = "",
    evidence: Mapping[int, Mapping[str, Any]] | None = None,
    scope: Mapping[str, Any] | None = None,
) -> list[CurationAction]:
    """One action on many items of `project`, all or none, undone as one (`curation_bulk_undo`).

    Each item gets its own action through `curation_action_apply` (its effect, its audit row, its
    own undo), carrying its evidence plus `bulk`: the batch id, the number of items and `scope`
    (what was selected: the rows ticked, or every row matching a filter). Items are locked in id
    order, so two bulk actions over overlapping items cannot deadlock."""
    ids = sorted(set(item_ids))
    if not ids:
        raise CurationError("no items selected")
    items = {i.pk: i for i in Item.objects.filter(project=project, pk__in=ids)}
    if len(items) != len(ids):
        raise CurationError(f"{len(ids) - len(items)} of the selected items are not in this project")
    batch = {"id": uuid.uuid4().hex, "items": len(ids), **dict(scope or {})}
    with transaction.atomic():
        return [
            curation_action_apply(
                item=items[i],
                actor=actor,
                action=action,
                reason=reason,
                evidence={**dict((evidence or {}).get(i) or {}), "bulk": batch},
            )
            for i in ids
        ]


def curation_bulk_undo(*, project: Project, batch: str, actor: User | None) -> list[CurationAction]:
    """Undo every action of a bulk action that still stands, all or none: refused (CurationError)
    when any of its items has a newer action since, as a single undo would be. Undoing twice
    changes nothing."""
    from curation.selectors import bulk_actions

    with transaction.atomic():
        standing = list(bulk_actions(project, batch).filter(undone_at__isnull=True).order_by("item_id"))
        return [curation_action_undo(action=a, actor=actor) for a in standing]


# ---------------------------------------------------------------------------------------------
# Exports


def heartbeat_stale_after() -> timedelta:
    return stale_after(settings.EXPORT_HEARTBEAT_STALE_SECONDS)


def _check_labelers(project: Project, ids: list[int] | None) -> None:
    if not ids:
        return
    found = set(
        Labeler.objects.filter(Q(project=project) | Q(project__isnull=True, judgments__item__project=project))
        .filter(id__in=ids)
        .values_list("id", flat=True)
        .distinct()
    )
    missing = sorted(set(ids) - found)
    if missing:
        raise ExportError(f"no labeler(s) {missing} in this project")


def export_create(
    *,
    project: Project,
    user: User | None,
    filters: ExportFilters | Mapping[str, Any] | None,
    formats: Sequence[str] | str,
    license: str = "unknown",  # noqa: A002 - the dataset card's field name
    enqueue: bool = True,
) -> ExportSnapshot:
    """Validate, store a pending snapshot with the cutoff set to now, and queue its export on commit.

    Raises ExportError (a ValueError) with a readable reason for bad filters or formats."""
    parsed = ExportFilters.parse(filters)
    names = parse_formats(formats, project.judgment_schema)
    _check_labelers(project, parsed.labelers)
    group_source(project, parsed, project.judgment_schema)
    license_name = (license or "unknown").strip()[:100] or "unknown"
    if ImportJob.objects.filter(project=project, status=ImportJob.Status.RUNNING).exists():
        # An import writes in one transaction stamped with its start time: a snapshot cut while it
        # runs would miss rows that a reproduction with the same cutoff later sees.
        raise ExportError("an import into this project is running; export once it has finished")
    with transaction.atomic():
        snapshot = ExportSnapshot.objects.create(
            project=project,
            created_by=user,
            filters=parsed.to_json(),
            formats=names,
            license=license_name,
            cutoff=timezone.now(),
            progress={"phase": "queued"},
        )
        _record_export(snapshot, user, {"formats": names})
    if enqueue:
        _enqueue(snapshot)
    return snapshot


def export_reproduce(*, snapshot: ExportSnapshot, user: User | None, enqueue: bool = True) -> ExportSnapshot:
    """A new snapshot with the same filters, formats, license and cutoff: the same rows again."""
    with transaction.atomic():
        copy = ExportSnapshot.objects.create(
            project=snapshot.project,
            created_by=user,
            filters=snapshot.filters,
            formats=snapshot.formats,
            license=snapshot.license,
            cutoff=snapshot.cutoff,
            source_snapshot=snapshot,
            progress={"phase": "queued"},
        )
        _record_export(copy, user, {"formats": snapshot.formats, "reproduces": str(snapshot.code)})
    if enqueue:
        _enqueue(copy)
    return copy


def _record_export(snapshot: ExportSnapshot, user: User | None, details: dict[str, Any]) -> None:
    """The one `export.create` event, new or reproduced (inside the snapshot's transaction)."""
    audit.record(user, "export.create", project=snapshot.project, target=snapshot, details=details)


def _enqueue(snapshot: ExportSnapshot) -> None:
    from curation.tasks import export_snapshot

    transaction.on_commit(lambda: export_snapshot.delay(snapshot.id))


def export_run(*, snapshot_id: int, redelivered: bool = False) -> ExportSnapshot | None:
    """Build a pending snapshot. Returns None when another worker has it or it is finished.

    On a redelivery (the broker handing the message out again because its worker died) a
    `running` snapshot whose heartbeat went stale is taken over and built again from scratch."""
    claim = claim_job(
        ExportSnapshot,
        pk=snapshot_id,
        pending=ExportStatus.PENDING,
        running=ExportStatus.RUNNING,
        redelivered=redelivered,
        stale=Q(heartbeat_at__lt=timezone.now() - heartbeat_stale_after()),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda s: _fail(s, f"gave up after {s.attempts} attempts (the worker died each time)"),
        fields={"progress": {"phase": "starting"}},
    )
    if claim is None:
        return None
    attempt, mine = claim.attempt, claim.owned
    snapshot = ExportSnapshot.objects.select_related("project").get(id=snapshot_id)
    final = snapshot.folder
    temp = partial_folder(final, attempt)
    last = [0.0]

    def heartbeat(info: dict[str, Any]) -> None:
        beat.check()  # lost the snapshot: stop
        if time.monotonic() - last[0] >= HEARTBEAT_EVERY_SECONDS:
            last[0] = time.monotonic()
            if not mine.update(progress=info, heartbeat_at=timezone.now()):
                raise ExportSupersededError

    # The heartbeat goes on through phases that report nothing (a slow page, bundling).
    with liveness(mine) as beat:
        name = f"{snapshot.project.slug}-{str(snapshot.code)[:8]}"
        try:
            result = build_export(
                project=snapshot.project,
                filters=ExportFilters.parse(snapshot.filters),
                formats=snapshot.formats,
                cutoff=snapshot.cutoff,
                out_dir=temp,
                card={
                    "code": str(snapshot.code),
                    "license": snapshot.license,
                    "source": str(snapshot.source_snapshot.code) if snapshot.source_snapshot is not None else "",
                },
                heartbeat=heartbeat,
            )
            heartbeat({"phase": "bundling"})
            bundle, digest, size = bundle_export(temp, name, snapshot.cutoff)
            remove_loose_files(temp)
            beat.check()
        except (ExportSupersededError, JobLost):
            shutil.rmtree(temp, ignore_errors=True)
            log.warning("export %s: attempt %s lost the snapshot to a takeover; stopped", snapshot.code, attempt)
            return None
        except Exception as exc:
            shutil.rmtree(temp, ignore_errors=True)
            log.exception("export %s failed", snapshot.code)
            _fail(snapshot, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}", attempt=attempt)
            raise
        beat.finishing()
        with transaction.atomic():
            # The conditional update locks the row (and SQLite's database) and proves this attempt
            # still owns the snapshot: the folder moves into place only then, under that lock.
            done = mine.update(
                status=ExportStatus.DONE,
                counts=result.counts,
                files=result.files,
                bundle_path=f"{snapshot.code}/{bundle.name}",
                bundle_sha256=digest,
                bundle_bytes=size,
                finished_at=timezone.now(),
                heartbeat_at=timezone.now(),
                progress={"phase": "done"},
                error="",
            )
            if not done:
                shutil.rmtree(temp, ignore_errors=True)
                log.warning("export %s: attempt %s lost the snapshot to a takeover; discarded", snapshot.code, attempt)
                return None
            shutil.rmtree(final, ignore_errors=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            temp.rename(final)
    return ExportSnapshot.objects.get(id=snapshot.id)


def _fail(snapshot: ExportSnapshot, error: str, attempt: int | None = None) -> None:
    """Mark the snapshot failed; with `attempt`, only while that attempt still owns it."""
    rows = ExportSnapshot.objects.filter(id=snapshot.id).exclude(status=ExportStatus.DONE)
    if attempt is not None:
        rows = rows.filter(status=ExportStatus.RUNNING, attempts=attempt)
    rows.update(
        status=ExportStatus.FAILED, error=error[:20000], finished_at=timezone.now(), progress={"phase": "failed"}
    )


def _remove_partials(code: Any) -> None:
    """Every attempt's half-written folder of a snapshot (`<code>.partial`, `<code>.<n>.partial`)."""
    remove_partials(exports_root() / str(code))


def recover_stale_exports(now: Any = None) -> dict[str, int]:
    """Periodic: exports whose worker stopped reporting (killed, lost) go back to the queue with
    their task sent again, or, after `MAX_ATTEMPTS`, are marked failed; half-written files go.

    Independent of the broker's redelivery (an hour on Redis, never on the filesystem broker);
    an export whose heartbeat is fresh is left alone."""
    from curation.tasks import export_snapshot

    now = now or timezone.now()
    return sweep_stale(
        ExportSnapshot.objects.filter(status=ExportStatus.RUNNING, heartbeat_at__lt=now - heartbeat_stale_after()),
        what="export",
        name="code",
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda attempts: {
            "status": ExportStatus.FAILED,
            "error": f"the worker stopped reporting (killed or lost), {attempts} attempts: gave up",
            "finished_at": now,
            "progress": {"phase": "failed"},
        },
        requeue=lambda attempts: {
            "status": ExportStatus.PENDING,
            "progress": {"phase": "queued", "after_lost_attempt": attempts},
        },
        send=lambda job: export_snapshot.delay(job["id"]),
        cleanup=lambda job: _remove_partials(job["code"]),
    )


def export_copy_to(*, snapshot: ExportSnapshot, out: str | Path) -> list[str]:
    """Copy a done export out of the store: to `out` itself when it ends in .zip (the bundle),
    else unpacked into the folder `out` (created; must be empty). Returns the paths written."""
    if snapshot.status != ExportStatus.DONE or snapshot.bundle_file is None:
        raise ExportError(f"export {snapshot.code} is {snapshot.status}, not done")
    out = Path(out)
    if out.suffix == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot.bundle_file, out)
        return [str(out)]
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(snapshot.bundle_file) as zf:
        for info in zf.infolist():
            rel = Path(*Path(info.filename).parts[1:])  # strip the bundle's top folder
            if info.is_dir() or ".." in rel.parts or rel.is_absolute():
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            written.append(str(target))
    return written


__all__ = [
    "CurationError",
    "ExportError",
    "curation_action_apply",
    "curation_action_undo",
    "curation_bulk_apply",
    "curation_bulk_undo",
    "export_copy_to",
    "export_create",
    "export_reproduce",
    "export_run",
    "recover_stale_exports",
]
