"""Writes of the reward-model service: start, run, cancel, promote and rescore versions; and a
project's routing settings. Audited writes record their event here, in the write's transaction.

Registry invariants: a version is `succeeded` only once its artifacts are on disk in their final
folder and its metrics are stored (both in one transaction with the status change); a run that
dies leaves `running` behind with a heartbeat (written by `config.jobs.liveness` throughout the
run) that goes stale. The sweep (`recover_stale_runs`,
beat every minute) puts such a run back in the queue and sends its task again, or marks it failed
after `MAX_ATTEMPTS`; a redelivered message takes a stale run over the same way. Each attempt
writes into its own `<uuid>.<attempt>.partial` folder and owns the run only while
`(status, attempts)` is still what it claimed: an attempt that lost the run (swept while merely
slow) stops once its heartbeat or a progress report finds that out, and never registers
anything. One version per project is current; promoting one demotes the others in the same
transaction.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, Q
from django.http import HttpRequest
from django.utils import timezone

from annotation import audit
from annotation.models import Item, Judgment, Labeler, Project
from annotation.services import record_settings_changed
from config.jobs import JobLost, claim_job, liveness, partial_folder, remove_partials, stale_after, sweep_stale
from models_srv.data import Examples, examples_from_judgment, load_snapshot, snapshot_create, training_judgments
from models_srv.models import (
    AILabelerAudit,
    CrossFitRun,
    OutOfFoldMargin,
    ResponseScore,
    RewardModelVersion,
    RunStatus,
)

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


def heartbeat_stale_after() -> timedelta:
    """How long a running version may go without a progress report before it counts as dead."""
    return stale_after(settings.RM_HEARTBEAT_STALE_SECONDS)


def artifacts_root() -> Path:
    return Path(settings.MEDIA_ROOT) / "reward_models"


class RunSupersededError(Exception):
    """This attempt no longer owns its run (the sweep or a redelivery took it over)."""


def _remove_partials(slug: str, run_uuid: Any) -> None:
    """Every attempt's half-written folder of a run (`<uuid>.partial`, `<uuid>.<n>.partial`)."""
    remove_partials(artifacts_root() / slug / str(run_uuid))


def training_start(
    *, project: Project, config: dict[str, Any], created_by: User | None = None, enqueue: bool = True
) -> RewardModelVersion:
    """Snapshot the project's judgments and queue a training run on the gpu queue."""
    from models_srv.engine import TrainConfig
    from models_srv.tasks import train_reward_model

    cfg = TrainConfig.model_validate(config)
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)  # version numbers in order
        snapshot = snapshot_create(
            project=project,
            label_source=cfg.label_source,
            seed=cfg.seed,
            eval_fraction=cfg.eval_fraction,
            created_by=created_by,
        )
        if snapshot.counts["judgments"] == 0:
            raise ValueError("the project has no judgments of that source to train on")
        number = (RewardModelVersion.objects.filter(project=project).aggregate(n=Max("version"))["n"] or 0) + 1
        version = RewardModelVersion.objects.create(
            project=project,
            version=number,
            config=cfg.model_dump(),
            snapshot=snapshot,
            created_by=created_by,
            progress={"phase": "queued"},
        )
        audit.record(created_by, "reward_model.train", project=project, target=version, details=version.config)
        if enqueue:
            transaction.on_commit(lambda: train_reward_model.delay(version.id))
    return version


def training_run(*, version_id: int, redelivered: bool = False, echo: Any = None) -> RewardModelVersion | None:
    """Run a queued version to the end. Returns None when another worker has it or it is over."""
    from models_srv import engine
    from models_srv.evaluation import evaluate_model

    now = timezone.now()
    # A redelivered message (its worker died, or a run outlasted the broker's visibility timeout
    # while its worker is alive) takes over only a silent run.
    claim = claim_job(
        RewardModelVersion,
        pk=version_id,
        pending=RunStatus.QUEUED,
        running=RunStatus.RUNNING,
        redelivered=redelivered,
        stale=Q(heartbeat_at__lt=now - heartbeat_stale_after()),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda v: _fail(v, f"gave up after {v.attempts} attempts (the worker died each time)"),
        only=Q(cancel_requested=False),
        fields={"progress": {"phase": "loading data"}},
    )
    if claim is None:
        RewardModelVersion.objects.filter(id=version_id, status=RunStatus.QUEUED, cancel_requested=True).update(
            status=RunStatus.CANCELLED, finished_at=now
        )
        return None
    version, attempt, mine = claim.job, claim.attempt, claim.owned
    config = engine.TrainConfig.model_validate(version.config)
    final = artifacts_root() / version.project.slug / str(version.uuid)
    temp = partial_folder(final, attempt)  # earlier attempts' folders go: they lost the run

    def progress(info: dict[str, Any]) -> None:
        if not mine.update(progress=info, heartbeat_at=timezone.now()):
            raise RunSupersededError
        if echo:
            echo(info)

    def should_stop() -> bool:
        beat.check()  # lost the run: stop training
        return RewardModelVersion.objects.filter(id=version.id, cancel_requested=True).exists()

    # The heartbeat goes on through phases that report nothing (evaluating, saving).
    with liveness(mine) as beat:
        try:
            data = load_snapshot(version.snapshot)
            model = engine.train(data, config, progress, should_stop)
            progress({"phase": "evaluating"})
            metrics = evaluate_model(model, data.eval, _phase_progress(progress, "evaluating"))
            metrics["train_examples"] = {
                "pairs": len(data.train.pairs),
                "lists": len(data.train.lists),
                "ratings": len(data.train.ratings),
            }
            metrics["eval_examples"] = {
                "pairs": len(data.eval.pairs),
                "lists": len(data.eval.lists),
                "ratings": len(data.eval.ratings),
            }
            metrics["training"] = model.training  # optimizer steps, autocast: as observed
            metrics["promotion"] = _promotion_check(version, model, data, progress)
            model.save(temp)
            beat.check()
        except (RunSupersededError, JobLost):
            shutil.rmtree(temp, ignore_errors=True)
            log.warning("training of %s: attempt %s lost the run to a takeover; stopped", version, attempt)
            return None
        except engine.TrainingCancelled:
            shutil.rmtree(temp, ignore_errors=True)
            mine.update(status=RunStatus.CANCELLED, finished_at=timezone.now(), progress={"phase": "cancelled"})
            return RewardModelVersion.objects.get(id=version.id)
        except Exception as exc:
            shutil.rmtree(temp, ignore_errors=True)
            log.exception("training of %s failed", version)
            _fail(version, f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}", attempt=attempt)
            raise
        beat.finishing()
        with transaction.atomic():
            # The conditional update locks the row (and SQLite's database) and proves this attempt
            # still owns the run: the artifacts move into place only then, under that lock.
            if not mine.update(progress={"phase": "registering"}, heartbeat_at=timezone.now()):
                shutil.rmtree(temp, ignore_errors=True)
                log.warning("training of %s: attempt %s lost the run to a takeover; discarded", version, attempt)
                return None
            shutil.rmtree(final, ignore_errors=True)
            temp.rename(final)
            version = RewardModelVersion.objects.select_for_update().get(id=version.id)
            version.status = RunStatus.SUCCEEDED
            version.metrics = metrics
            version.artifact_path = str(final)
            version.finished_at = timezone.now()
            version.device = model.encoder.device
            version.progress = {"phase": "done"}
            version.save()
            current = RewardModelVersion.objects.filter(project=version.project, is_current=True).first()
            promotion = metrics["promotion"]
            if promotion["promoted"] and (current.id if current else None) != promotion.get("against_id"):
                promotion["promoted"] = False
                promotion["reason"] = (
                    f"the current version changed to v{current.version if current else '-'} while this one "
                    "was evaluated; compare them by training again or promote one by hand"
                )
                version.metrics = metrics
                version.save(update_fields=["metrics"])
            if promotion["promoted"]:
                _make_current(version, by=None, details={"automatic": True, "reason": promotion["reason"]})
    version.refresh_from_db()
    return version


def _phase_progress(progress: Any, phase: str) -> Any:
    """A `(done, total)` callback that reports as training does: phase, step, total."""
    return lambda done, total: progress({"phase": phase, "step": done, "total": total})


def _promotion_check(version: RewardModelVersion, model: Any, data: Any, progress: Any) -> dict[str, Any]:
    """Whether the new version may replace the current one, and why: it must beat it on the same
    held-out items, none of which either model trained on, by a one-sided paired sign test at
    `RM_PROMOTION_ALPHA`. A higher accuracy on a few hundred pairs is often noise; the test asks
    whether the items the two models rank differently favour the new one more than chance would."""
    from models_srv import engine
    from models_srv.evaluation import outcomes, score_examples, sign_test

    current = (
        RewardModelVersion.objects.filter(project=version.project, is_current=True, status=RunStatus.SUCCEEDED)
        .exclude(id=version.id)
        .select_related("snapshot")
        .first()
    )
    if current is None:
        return {"promoted": True, "against_id": None, "reason": "the project had no current version"}
    decision: dict[str, Any] = {"promoted": False, "against_id": current.id, "against": f"v{current.version}"}
    alpha = float(settings.RM_PROMOTION_ALPHA)
    if alpha <= 0:
        return {**decision, "reason": "automatic promotion is off (RM_PROMOTION_ALPHA=0): promote by hand"}
    if not len(data.eval):
        return {
            **decision,
            "reason": "no held-out items: nothing to compare with the current version on. Keep an eval "
            "fraction above 0 (or mark items `split: eval`), or promote this version by hand",
        }
    # items the current version trained on would flatter it: compare on the rest only
    seen = set(Judgment.objects.filter(id__in=current.snapshot.judgment_ids).values_list("item_id", flat=True))
    seen -= set(current.snapshot.eval_item_ids)
    fresh = Examples(
        pairs=[x for x in data.eval.pairs if x.item_id not in seen],
        lists=[x for x in data.eval.lists if x.item_id not in seen],
        ratings=[x for x in data.eval.ratings if x.item_id not in seen],
    )
    if not len(fresh):
        return {**decision, "reason": f"every held-out item was in v{current.version}'s training data"}
    try:
        old_model = engine.load_model(Path(current.artifact_path), device=model.encoder.device)
    except Exception as exc:  # a missing or broken artifact is a reason, not a crash
        return {**decision, "reason": f"v{current.version} could not be loaded to compare: {exc}"}
    report = _phase_progress(progress, f"comparing with v{current.version}")
    new_scores = score_examples(model, fresh)
    old_scores = score_examples(old_model, fresh, report)
    del old_model
    new, old = outcomes(fresh, new_scores[0], new_scores[1]), outcomes(fresh, old_scores[0], old_scores[1])
    if not new:
        return {**decision, "reason": "the held-out items hold no preference between different texts"}
    test = sign_test(new, old)
    means = {"mean_new": round(sum(new) / len(new), 4), "mean_current": round(sum(old) / len(old), 4)}
    decision.update(test, alpha=alpha, **means)
    summary = (
        f"on {test['units']} held-out units neither trained on, better on {test['wins']}, worse on "
        f"{test['losses']} (sign test p = {test['p_value']:.3g}, needed < {alpha:g})"
    )
    if test["wins"] > test["losses"] and test["p_value"] < alpha:
        return {**decision, "promoted": True, "reason": f"beats v{current.version} {summary}"}
    return {**decision, "reason": f"not shown better than v{current.version}: {summary}"}


def _fail(version: RewardModelVersion, error: str, attempt: int | None = None) -> None:
    """Mark the run failed; with `attempt`, only while that attempt still owns it."""
    runs = RewardModelVersion.objects.filter(id=version.id).exclude(status=RunStatus.SUCCEEDED)
    if attempt is not None:
        runs = runs.filter(status=RunStatus.RUNNING, attempts=attempt)
    runs.update(status=RunStatus.FAILED, error=error[:20000], finished_at=timezone.now(), progress={"phase": "failed"})


def _make_current(version: RewardModelVersion, *, by: User | None, details: dict[str, Any] | None = None) -> None:
    """Make `version` its project's current one (by hand, or promoted after training), recorded."""
    RewardModelVersion.objects.filter(project=version.project, is_current=True).exclude(id=version.id).update(
        is_current=False
    )
    RewardModelVersion.objects.filter(id=version.id).update(is_current=True)
    audit.record(by, "reward_model.make_current", project=version.project, target=version, details=details)


def version_make_current(*, version: RewardModelVersion, by: User | None = None) -> RewardModelVersion:
    """Promote a succeeded version (rollback is promoting an older one)."""
    if version.status != RunStatus.SUCCEEDED:
        raise ValueError("only a succeeded version can become current")
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=version.project_id)
        _make_current(version, by=by)
    version.refresh_from_db()
    return version


def version_cancel(*, version: RewardModelVersion) -> RewardModelVersion:
    """Ask a run to stop; a queued one stops at once, a running one at its next progress report."""
    RewardModelVersion.objects.filter(id=version.id, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(
        cancel_requested=True
    )
    RewardModelVersion.objects.filter(id=version.id, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now(), progress={"phase": "cancelled"}
    )
    version.refresh_from_db()
    return version


def recover_stale_runs(now: Any = None) -> dict[str, int]:
    """Periodic: runs whose worker stopped reporting (killed, lost) go back to the queue with their
    task sent again, or, after `MAX_ATTEMPTS`, are marked failed; their half-written folders go.

    This does not wait for the broker: Redis hands a dead worker's message out again only after
    its visibility timeout (an hour), the filesystem broker of `make run` never. A run whose
    heartbeat is fresh is left alone however long it has run. The old message, if the broker
    ever hands it out again, finds the run queued, running afresh or finished and does nothing.
    """
    from models_srv.tasks import train_reward_model

    now = now or timezone.now()
    return sweep_stale(
        RewardModelVersion.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=now - heartbeat_stale_after()),
        what="training run",
        fields=("uuid", "project__slug"),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda attempts: {
            "status": RunStatus.FAILED,
            "error": f"the worker stopped reporting (killed or lost), {attempts} attempts: gave up",
            "finished_at": now,
            "progress": {"phase": "failed"},
        },
        requeue=lambda attempts: {
            "status": RunStatus.QUEUED,
            "progress": {"phase": "queued", "after_lost_attempt": attempts},
        },
        send=lambda job: train_reward_model.delay(job["id"]),
        cleanup=lambda job: _remove_partials(job["project__slug"], job["uuid"]),
    )


def rescore_request(*, version: RewardModelVersion) -> RewardModelVersion:
    """Queue a rescore of the project's items by a succeeded version (once this commits)."""
    from models_srv.tasks import gpu_rescore

    if version.status != RewardModelVersion.Status.SUCCEEDED:
        raise ValueError("only a succeeded version can rescore items")
    transaction.on_commit(lambda: gpu_rescore.delay(version.id))
    return version


def place_request(*, version: RewardModelVersion) -> RewardModelVersion:
    """Queue the placement of the annotators a pluralistic version did not train on (once this commits)."""
    from models_srv.tasks import gpu_place_annotators

    if version.status != RewardModelVersion.Status.SUCCEEDED or not (version.metrics or {}).get("pluralistic"):
        raise ValueError("only a pluralistic version that finished training places annotators")
    transaction.on_commit(lambda: gpu_place_annotators.delay(version.id))
    return version


def place_annotators(*, version_id: int) -> int:
    """Place every labeler with pairwise judgments in the version's project (of its label source;
    not gold items, not dropped ones) whom the pluralistic model did not train on: their posterior
    over its groups from their judgments, starting from the groups' sizes (`Mixture.place`), so an
    annotator who joined later belongs to a group after a few judgments without retraining.

    Stored, replacing any earlier placement, in the version's metrics["pluralistic"]["placed"]
    (labeler, judgments, weights over the groups); returns how many were placed."""
    from models_srv import engine
    from models_srv.pluralistic import pair_rows

    version = RewardModelVersion.objects.select_related("project", "snapshot").get(
        id=version_id, status=RunStatus.SUCCEEDED
    )
    model = engine.load_model(Path(version.artifact_path))
    plural = getattr(model, "plural", None)
    if plural is None:
        raise ValueError(f"version {version.version} is not a pluralistic model")
    judgments = (
        training_judgments(version.project, version.snapshot.label_source)
        .exclude(labeler_id__in=plural.annotators)
        .select_related("item", "labeler")
        .order_by("id")
    )
    by_labeler: dict[int, list[Any]] = {}
    for j in judgments.iterator(chunk_size=2000):
        pairs = examples_from_judgment(j.item, j.payload, j.labeler.source.value, j.labeler_id).pairs
        by_labeler.setdefault(j.labeler_id, []).extend(p for p in pairs if p.chosen != p.rejected)
    by_labeler = {lab: ps for lab, ps in by_labeler.items() if ps}
    both_sides = [((p.prompt, p.chosen), (p.prompt, p.rejected)) for ps in by_labeler.values() for p in ps]
    texts = list(dict.fromkeys(t for two in both_sides for t in two))
    placed: list[dict[str, Any]] = []
    if texts:
        index = {t: i for i, t in enumerate(texts)}
        phi = plural.phi(engine.cached_embeddings(model.encoder, texts).double().numpy(), [r for _, r in texts])
        for labeler_id, pairs in sorted(by_labeler.items()):
            chosen, rejected, targets = pair_rows(pairs, index)
            weights = plural.mixture.place(phi[chosen] - phi[rejected], targets)
            placed.append(
                {"labeler": labeler_id, "judgments": len(targets), "weights": [round(float(w), 4) for w in weights]}
            )
    with transaction.atomic():
        locked = RewardModelVersion.objects.select_for_update().get(id=version.id)
        metrics = dict(locked.metrics or {})
        metrics["pluralistic"] = {
            **metrics.get("pluralistic", {}),
            "placed": placed,
            "placed_at": timezone.now().isoformat(),
        }
        locked.metrics = metrics
        locked.save(update_fields=["metrics"])
    return len(placed)


def routing_settings_set(
    *,
    project: Project,
    policy: str,
    human_budget: float,
    calibration_share: float,
    require_ai_audit: bool,
    by: User | None,
    request: Any = None,
) -> Project:
    """Change the project's routing settings (recording what changed) and re-route its items
    once this commits."""
    from models_srv.tasks import route_items

    fields = ["routing_policy", "human_budget", "calibration_share", "require_ai_audit"]
    with transaction.atomic():
        locked = Project.objects.select_for_update().get(pk=project.pk)
        before = {f: getattr(locked, f) for f in fields}
        locked.routing_policy = policy
        locked.human_budget = human_budget
        locked.calibration_share = calibration_share
        locked.require_ai_audit = require_ai_audit
        locked.save(update_fields=[*fields, "updated_at"])
        changes = {f: [before[f], getattr(locked, f)] for f in fields if before[f] != getattr(locked, f)}
        record_settings_changed(project=locked, changes=changes, by=by, request=request)
        transaction.on_commit(lambda: route_items.delay(locked.id))
    return locked


def audit_start(
    *,
    labeler: Labeler,
    created_by: User | None = None,
    enqueue: bool = True,
    request: HttpRequest | None = None,
) -> AILabelerAudit:
    """Queue an audit of the labeler's current config on the project's items (in the audit log);
    the probes, the run and the figures are in `models_srv.judge_audit`."""
    from models_srv.judge_audit import AuditError, audit_schema, config_sha, sample_items, thresholds
    from models_srv.tasks import ai_audit_run, gpu_audit_run

    if not labeler.is_ai or labeler.project is None:
        raise AuditError("only AI labelers are audited")
    project = labeler.project
    audit_schema(project.judgment_schema)
    with transaction.atomic():
        Labeler.objects.select_for_update().filter(id=labeler.id).first()  # one start at a time per labeler
        running = AILabelerAudit.objects.filter(labeler=labeler, status__in=[RunStatus.QUEUED, RunStatus.RUNNING])
        if running.exists():
            raise AuditError("an audit of this labeler is already in progress")
        ids = sample_items(project, settings.AI_AUDIT_ITEMS)
        if not ids:
            raise AuditError("the project has no items with two responses to build probes from")
        run = AILabelerAudit.objects.create(
            project=project,
            labeler=labeler,
            labeler_version=labeler.version,
            config_sha=config_sha(labeler.config),
            item_ids=ids,
            thresholds=thresholds(),
            created_by=created_by,
        )
        details = {"labeler": labeler.name, "version": labeler.version, "probe_items": len(ids)}
        audit.record(created_by, "ai_labeler.audit", project=project, target=run, details=details, request=request)
    if enqueue:
        task = gpu_audit_run if labeler.kind == Labeler.Kind.DENSITY_RATIO else ai_audit_run
        transaction.on_commit(lambda: task.delay(run.id))
    return run


def rescore(*, version_id: int, batch: int = 512) -> int:
    """Store the version's score and uncertainty for every response of every item of its project."""
    from models_srv import engine

    version = RewardModelVersion.objects.select_related("project").get(id=version_id, status=RunStatus.SUCCEEDED)
    model = engine.load_model(Path(version.artifact_path))
    items = Item.objects.filter(project=version.project).only("id", "prompt", "responses").order_by("id")
    written = 0
    chunk: list[Item] = []

    def flush() -> int:
        keys = [(it.id, i, it.prompt, r["text"]) for it in chunk for i, r in enumerate(it.responses)]
        mean, std, aspects = model.score([(p, t) for _, _, p, t in keys])
        rows = [
            ResponseScore(
                version=version,
                item_id=item_id,
                response_index=i,
                score=float(mean[k]),
                uncertainty=float(std[k]),
                aspects={a: round(float(aspects[k, n]), 4) for n, a in enumerate(model.aspects)}
                if aspects is not None
                else {},
            )
            for k, (item_id, i, _, _) in enumerate(keys)
        ]
        ResponseScore.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["version", "item", "response_index"],
            update_fields=["score", "uncertainty", "aspects"],
        )
        return len(rows)

    for item in items.iterator(chunk_size=batch):
        chunk.append(item)
        if len(chunk) >= batch:
            written += flush()
            chunk = []
    if chunk:
        written += flush()
    return written


def evaluate_file(*, version: RewardModelVersion, fileobj: IO[bytes], fmt: str | None = None) -> dict[str, Any]:
    """Metrics of a version on a user's own labeled file (any format the importer reads)."""
    from annotation.importing import ImportRefused, RowError, _BadRowError, check_row, normalize_row, open_rows
    from models_srv import engine
    from models_srv.evaluation import evaluate_model

    schema = version.project.judgment_schema
    _, rows = open_rows(fileobj, fmt)
    examples, errors = Examples(), []
    for line, raw in rows:
        if isinstance(raw, RowError):
            errors.append(raw)
            continue
        try:
            row = normalize_row(raw, line)
            labels = check_row(row, schema)
        except _BadRowError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        item = Item(id=-line, prompt=row.prompt, responses=row.responses, metadata=row.metadata)
        for _, payload in labels:
            more = examples_from_judgment(item, payload, "file")
            examples.pairs += more.pairs
            examples.lists += more.lists
            examples.ratings += more.ratings
    if errors:
        raise ImportRefused(errors[:50])
    if not len(examples):
        raise ImportRefused([RowError(0, "the file carries no labels to evaluate against")])
    return evaluate_model(engine.load_model(Path(version.artifact_path)), examples)


def autotrain_due(project: Project) -> bool:
    """Whether the project has gathered `autotrain_after` judgments since its last run started."""
    if project.autotrain_after <= 0:
        return False
    if RewardModelVersion.objects.filter(project=project, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        return False
    last = RewardModelVersion.objects.filter(project=project).order_by("-created_at").first()
    new = Judgment.objects.filter(item__project=project)
    if last is not None:
        new = new.filter(created_at__gt=last.created_at)
    return new.count() >= project.autotrain_after


def autotrain_all() -> list[int]:
    started = []
    for project in Project.objects.filter(autotrain_after__gt=0):
        if autotrain_due(project):
            last = RewardModelVersion.objects.filter(project=project).order_by("-created_at").first()
            try:
                v = training_start(project=project, config=last.config if last else {})
            except ValueError:
                continue
            started.append(v.id)
    return started


# ---------------------------------------------------------------------------------------------
# Out-of-fold margins (cross-fitting) for the review queue


def crossfit_start(
    *,
    project: Project,
    config: dict[str, Any] | None = None,
    folds: int = 5,
    created_by: User | None = None,
    enqueue: bool = True,
) -> CrossFitRun:
    """Queue a cross-fitting of the project's labels on the gpu queue; a run already queued or
    running is returned as it is. `config` defaults to the current reward model's, so the folds'
    models are trained as the project's reward model is (else `TrainConfig`'s defaults)."""
    from models_srv.engine import TrainConfig
    from models_srv.tasks import gpu_crossfit

    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)  # one active run per project
        active = CrossFitRun.objects.filter(project=project, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).first()
        if active is not None:
            return active
        if config is None:
            current = RewardModelVersion.objects.filter(project=project, is_current=True).first()
            config = current.config if current else {}
        cfg = TrainConfig.model_validate(config)
        snapshot = snapshot_create(
            project=project, label_source=cfg.label_source, seed=cfg.seed, eval_fraction=0.0, created_by=created_by
        )
        if snapshot.counts["items"] < folds:
            raise ValueError(f"cross-fitting needs labels on at least {folds} items")
        run = CrossFitRun.objects.create(
            project=project,
            config=cfg.model_dump(),
            folds=folds,
            snapshot=snapshot,
            created_by=created_by,
            progress={"phase": "queued"},
        )
        audit.record(created_by, "crossfit.start", project=project, target=run, details={"folds": folds})
        if enqueue:
            transaction.on_commit(lambda: gpu_crossfit.delay(run.id))
    return run


def crossfit_run(*, run_id: int, redelivered: bool = False) -> CrossFitRun | None:
    """Compute and store the out-of-fold margin of every pairwise item of the run's snapshot.
    Returns None when another worker has the run or it is over (a second delivery changes nothing)."""
    from models_srv import engine
    from models_srv.crossfit import crossfit

    now = timezone.now()
    claim = claim_job(
        CrossFitRun,
        pk=run_id,
        pending=RunStatus.QUEUED,
        running=RunStatus.RUNNING,
        redelivered=redelivered,
        stale=Q(heartbeat_at__lt=now - heartbeat_stale_after()),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda r: CrossFitRun.objects.filter(id=r.id).update(
            status=RunStatus.FAILED, error="gave up: the worker died each time", finished_at=now
        ),
        fields={"progress": {"phase": "loading data"}},
    )
    if claim is None:
        return None
    run, mine = claim.job, claim.owned

    def progress(info: dict[str, Any]) -> None:
        if not mine.update(progress=info, heartbeat_at=timezone.now()):
            raise RunSupersededError

    with liveness(mine) as beat:
        try:
            data = load_snapshot(run.snapshot)
            examples = Examples()
            for part in (data.train, data.eval):  # every labeled item gets a fold, eval items too
                examples.pairs += part.pairs
                examples.lists += part.lists
                examples.ratings += part.ratings
            config = engine.TrainConfig.model_validate(run.config)
            scored = crossfit(examples, config, k=run.folds, seed=config.seed, aspects=data.aspects, progress=progress)
            beat.check()
        except (RunSupersededError, JobLost):
            log.warning("cross-fitting %s: attempt %s lost the run to a takeover; stopped", run, run.attempts)
            return None
        except Exception as exc:
            log.exception("cross-fitting %s failed", run)
            mine.update(
                status=RunStatus.FAILED,
                error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc(limit=8)}"[:20000],
                finished_at=timezone.now(),
                progress={"phase": "failed"},
            )
            raise
        beat.finishing()
        second = dict(Item.objects.filter(id__in={o.item_id for o in scored}).values_list("id", "responses"))
        rows: dict[int, OutOfFoldMargin] = {}
        for ex, o in zip(examples.pairs, scored, strict=True):
            if o.item_id in rows:  # several judgments of one item: the same texts, the same model
                continue
            # o.margin is r(chosen) - r(rejected); stored as r(B) - r(A) so a label change keeps it
            b_first = len(second[o.item_id]) > 1 and ex.chosen == second[o.item_id][1]["text"] and not ex.tie
            rows[o.item_id] = OutOfFoldMargin(
                run=run, item_id=o.item_id, fold=o.fold, margin=o.margin if b_first else -o.margin, spread=o.spread
            )
        with transaction.atomic():
            if not mine.update(status=RunStatus.SUCCEEDED, finished_at=timezone.now(), progress={"phase": "done"}):
                return None
            OutOfFoldMargin.objects.filter(run=run).delete()
            OutOfFoldMargin.objects.bulk_create(rows.values(), batch_size=2000)
            CrossFitRun.objects.filter(id=run.id).update(counts={"items": len(rows), "pairs": len(scored)})
    run.refresh_from_db()
    return run


def recover_stale_crossfits(now: Any = None) -> dict[str, int]:
    """Periodic: cross-fitting runs whose worker stopped reporting go back to the queue with their
    task sent again, or, after `MAX_ATTEMPTS`, are marked failed (as `recover_stale_runs`)."""
    from models_srv.tasks import gpu_crossfit

    now = now or timezone.now()
    return sweep_stale(
        CrossFitRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=now - heartbeat_stale_after()),
        what="cross-fitting run",
        fields=("uuid",),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda attempts: {
            "status": RunStatus.FAILED,
            "error": f"the worker stopped reporting (killed or lost), {attempts} attempts: gave up",
            "finished_at": now,
            "progress": {"phase": "failed"},
        },
        requeue=lambda attempts: {"status": RunStatus.QUEUED, "progress": {"phase": "queued"}},
        send=lambda job: gpu_crossfit.delay(job["id"]),
    )
