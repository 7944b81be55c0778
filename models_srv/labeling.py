"""AI labeling runs: create labelers, start runs, run them in batches (idempotent), and compute the
AI consensus of an item.

An item comes out of a run as a judgment, a failure (no usable answer: retried by the next run),
or an abstention (the judge answered, but its two orders disagreed where the schema has no tie:
no label, counted on the run as `abstained`, both answers kept in an `AILabelFailure` row marked
`abstained`). An abstention is the labeler's answer to that item: later runs of the same labeler
(the same config version) do not ask again."""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from pydantic import ValidationError

from annotation.models import Item, Judgment, Labeler, Project
from annotation.schema import JudgmentRead, format_validation_error
from config.jobs import JobLost, liveness, stale_after, sweep_stale
from models_srv.judges import (
    CONFIGS,
    JudgeError,
    LLMJudgeConfig,
    RewardModelJudgeConfig,
    encrypt_api_key,
    endpoint_refusal,
    make_judge,
    version_refusal,
)
from models_srv.models import AILabelFailure, AILabelRun, RunStatus
from models_srv.selectors import judge_version

log = logging.getLogger(__name__)
BATCH = 32


class LabelerError(ValueError):
    pass


def labeler_create(
    *,
    project: Project,
    kind: str,
    name: str,
    config: dict[str, Any],
    api_key: str = "",
    by: User | None = None,
) -> Labeler:
    """Validate the config of an AI labeler and store it (an API key only encrypted). A
    reward-model judge may name a version of `project` or of any project `by` curates."""
    if kind not in CONFIGS:
        raise LabelerError(f"kind must be one of {', '.join(CONFIGS)}")
    config = dict(config)
    if api_key:
        if kind != Labeler.Kind.LLM:
            raise LabelerError("only LLM judges take an API key")
        config["api_key_encrypted"] = encrypt_api_key(api_key)
    try:
        parsed = CONFIGS[kind].model_validate(config)
    except ValidationError as exc:
        raise LabelerError(format_validation_error(exc)) from None
    if isinstance(parsed, LLMJudgeConfig) and (refusal := endpoint_refusal(parsed)):
        raise LabelerError(refusal)
    if (
        isinstance(parsed, RewardModelJudgeConfig)
        and parsed.version != "current"
        and judge_version(by, project, parsed.version) is None
    ):
        raise LabelerError(version_refusal(parsed.version))
    version = (
        Labeler.objects.filter(project=project, kind=kind, name=name)
        .order_by("-version")
        .values_list("version", flat=True)
        .first()
        or 0
    ) + 1
    return Labeler.objects.create(project=project, kind=kind, name=name, config=parsed.model_dump(), version=version)


def run_start(
    *,
    project: Project,
    labeler: Labeler,
    item_ids: list[int] | None = None,
    created_by: User | None = None,
    enqueue: bool = True,
) -> AILabelRun:
    """Queue a run over the given items (default: every item the labeler has not judged yet)."""
    from models_srv.tasks import ai_label_run, gpu_ai_label_run

    if labeler.project_id != project.id or not labeler.is_ai:
        raise LabelerError("not an AI labeler of this project")
    if AILabelRun.objects.filter(labeler=labeler, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).exists():
        # One run per labeler at a time, so its concurrency limit holds across workers.
        raise LabelerError("a run of this labeler is already in progress")
    qs = Item.objects.filter(project=project, is_gold=False).exclude(status=Item.Status.DROPPED)
    if item_ids is not None:
        qs = qs.filter(id__in=item_ids)
    abstained = AILabelFailure.objects.filter(run__labeler=labeler, abstained=True).values("item_id")
    ids = list(
        qs.exclude(judgments__labeler=labeler).exclude(id__in=abstained).order_by("id").values_list("id", flat=True)
    )
    if not ids:
        # An empty run would only report "0 already labeled, of 0 items".
        total = qs.count()
        held = qs.filter(id__in=abstained).count()
        items = f"{total} item{'s' if total != 1 else ''}"
        raise LabelerError(
            "nothing to label: the project has no items for AI labelers"
            if not total
            else f"nothing to label: {labeler.name} has labeled all {items} already"
            if not held
            else f"nothing to label: {labeler.name} has answered all {items} already "
            f"({held} abstained: its two response orders disagreed)"
        )
    run = AILabelRun.objects.create(project=project, labeler=labeler, item_ids=ids, created_by=created_by)
    if enqueue:
        task = gpu_ai_label_run if labeler.kind == Labeler.Kind.DENSITY_RATIO else ai_label_run
        transaction.on_commit(lambda: task.delay(run.id))
    return run


def run_execute(*, run_id: int) -> AILabelRun | None:
    """Label every item of the run. A re-run (a re-queued or redelivered task) skips what is
    labeled already, so it continues where the last attempt stopped.

    The run is claimed with a conditional update and owned while `(running, attempts)` is what
    this attempt claimed; its heartbeat is written throughout by `config.jobs.liveness`, also
    while a slow model answers. A worker killed mid-run goes silent: `recover_stale_label_runs`
    queues the run again (or fails it after `MAX_ATTEMPTS`). A running run is taken over only once
    silent, and an attempt that lost its run stops and writes nothing more: each batch's
    judgments commit with its counters under the claim.
    """
    now = timezone.now()
    claimable = Q(status=RunStatus.QUEUED) | Q(status=RunStatus.RUNNING, heartbeat_at__lt=now - stale_after())
    with transaction.atomic():
        run = AILabelRun.objects.select_for_update().filter(claimable, id=run_id).first()
        if run is None:
            return None
        if run.attempts >= MAX_ATTEMPTS:
            _end(AILabelRun.objects.filter(id=run.id), RunStatus.FAILED, GAVE_UP)
            return None
        run.status = RunStatus.RUNNING
        run.attempts += 1
        run.heartbeat_at = now
        run.save(update_fields=["status", "attempts", "heartbeat_at"])
    mine = AILabelRun.objects.filter(id=run.id, status=RunStatus.RUNNING, attempts=run.attempts)
    run = AILabelRun.objects.select_related("labeler", "project", "created_by").get(id=run_id)
    schema = run.project.judgment_schema
    try:
        judge = make_judge(run.labeler, run.created_by)
    except (JudgeError, OSError, ValueError) as exc:
        _end(mine, RunStatus.FAILED, str(exc))
        run.refresh_from_db()
        return run
    try:
        with liveness(mine) as beat:
            for start in range(0, len(run.item_ids), BATCH):
                beat.check()
                if AILabelRun.objects.filter(id=run.id, cancel_requested=True).exists():
                    _end(mine, RunStatus.CANCELLED)
                    run.refresh_from_db()
                    return run
                _batch(run, mine, judge, schema, run.item_ids[start : start + BATCH])
            beat.finishing()
            if not _end(mine, RunStatus.SUCCEEDED):
                raise JobLost
    except JobLost:
        log.warning("AI run %s: attempt %s lost the run to a takeover; stopped", run.id, run.attempts)
        return None
    except Exception as exc:
        _end(mine, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        judge.close()
    run.refresh_from_db()
    run.peak_concurrency = judge.peak  # type: ignore[attr-defined]
    return run


MAX_ATTEMPTS = 3
GAVE_UP = f"the worker stopped reporting (killed or lost) {MAX_ATTEMPTS} times: gave up"


def _end(rows: Any, status: str, error: str = "") -> int:
    return rows.update(status=status, error=error, finished_at=timezone.now())


def sweep_ai_jobs(rows: Any, what: str, cpu_task: Any, gpu_task: Any, now: Any = None) -> dict[str, int]:
    """Jobs of AI labelers (`rows`: a model with status, heartbeat, attempts and a labeler) whose
    worker stopped reporting go back to the queue with their task sent again (on the `gpu` queue
    for density-ratio judges), or, after `MAX_ATTEMPTS`, are marked failed."""
    cutoff = (now or timezone.now()) - stale_after()

    def send(job: dict[str, Any]) -> None:
        task = gpu_task if job["labeler__kind"] == Labeler.Kind.DENSITY_RATIO else cpu_task
        task.delay(job["id"])

    return sweep_stale(
        rows.filter(
            Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff), status=RunStatus.RUNNING
        ),
        what=what,
        fields=("labeler__kind",),
        max_attempts=MAX_ATTEMPTS,
        give_up=lambda attempts: {"status": RunStatus.FAILED, "error": GAVE_UP, "finished_at": timezone.now()},
        requeue=lambda attempts: {"status": RunStatus.QUEUED},
        send=send,
    )


def recover_stale_label_runs(now: Any = None) -> dict[str, int]:
    """Periodic: runs whose worker stopped reporting (killed, lost) go back to the queue with
    their task sent again, or, after `MAX_ATTEMPTS`, are marked failed. What they labeled stays;
    the next attempt labels the rest."""
    from models_srv.tasks import ai_label_run, gpu_ai_label_run

    return sweep_ai_jobs(AILabelRun.objects.all(), "AI run", ai_label_run, gpu_ai_label_run, now)


def _batch(run: AILabelRun, mine: Any, judge: Any, schema: Any, ids: list[int]) -> None:
    judged = Judgment.objects.filter(item_id__in=ids, labeler=run.labeler)
    already = set(judged.values_list("item_id", flat=True))
    # Abstentions an earlier attempt of this run recorded are counted already: not asked again.
    already |= set(
        AILabelFailure.objects.filter(run=run, abstained=True, item_id__in=ids).values_list("item_id", flat=True)
    )
    # Only one run of a labeler goes at a time: what was judged after this run was created, an
    # earlier attempt of it judged (and counted as done); what was judged before, it skips.
    skipped = judged.filter(created_at__lt=run.created_at).count()
    items = list(Item.objects.filter(id__in=[i for i in ids if i not in already]).order_by("id"))
    if hasattr(judge, "label_many"):
        labels = judge.label_many(items, schema)
    else:
        with ThreadPoolExecutor(max_workers=judge.cfg.concurrency) as pool:
            labels = list(pool.map(lambda item: judge.label(item, schema), items))
    good = [lb for lb in labels if lb.payload is not None and not lb.error]
    held = [lb for lb in labels if lb.abstained and not lb.error]
    bad = [lb for lb in labels if lb.error or (lb.payload is None and not lb.abstained)]
    project = run.project
    with transaction.atomic():
        cfg = getattr(judge, "cfg", None)
        pt = sum(lb.prompt_tokens for lb in labels)
        ct = sum(lb.completion_tokens for lb in labels)
        cost = (pt * getattr(cfg, "prompt_cost_per_1k", 0) + ct * getattr(cfg, "completion_cost_per_1k", 0)) / 1000
        # First, under the claim: an attempt that lost its run writes nothing.
        if not mine.update(
            done=F("done") + len(good),
            failed=F("failed") + len(bad),
            abstained=F("abstained") + len(held),
            skipped=F("skipped") + skipped,
            prompt_tokens=F("prompt_tokens") + pt,
            completion_tokens=F("completion_tokens") + ct,
            cost=F("cost") + cost,
        ):
            raise JobLost
        Judgment.objects.bulk_create(
            [
                Judgment(
                    item_id=lb.item_id,
                    labeler=run.labeler,
                    payload=lb.payload,
                    schema_version=project.schema_version,
                    confidence=lb.confidence,
                    raw_output=_raw(lb.raw),
                )
                for lb in good
            ],
            ignore_conflicts=True,
        )
        AILabelFailure.objects.bulk_create(
            [
                AILabelFailure(run=run, item_id=lb.item_id, reason=lb.error or "no answer", raw_output=_raw(lb.raw))
                for lb in bad
            ]
            + [
                AILabelFailure(run=run, item_id=lb.item_id, reason=ABSTAINED, raw_output=_raw(lb.raw), abstained=True)
                for lb in held
            ],
            ignore_conflicts=True,
        )


ABSTAINED = "abstained: the two response orders disagreed and the schema has no tie"


def _raw(raw: dict[str, Any]) -> str:
    import json

    return json.dumps(raw, ensure_ascii=False)[:200_000]


def run_cancel(*, run: AILabelRun) -> None:
    AILabelRun.objects.filter(id=run.id, status__in=[RunStatus.QUEUED, RunStatus.RUNNING]).update(cancel_requested=True)
    AILabelRun.objects.filter(id=run.id, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now()
    )


def ai_consensus(item: Item, method: str = "weighted", require_audit: bool | None = None) -> dict[str, Any] | None:
    """The AI labelers' combined answer on an item: majority vote or confidence-weighted.

    Pairwise: the signed preference (-strength for A, +strength for B) averaged with weights;
    rankings: weighted mean rank, re-ranked. Returns the payload part, the agreement (share of
    weight behind the winning choice) and how many AI judgments took part. With `require_audit`
    (default: the project's `require_ai_audit`) only labelers whose current config passed its
    audit take part."""
    from models_srv.judge_audit import audit_gate

    gate = audit_gate(item.project, require_audit)
    judgments = [j for j in item.judgments.select_related("labeler") if j.labeler.is_ai and gate.allows(j.labeler_id)]
    if not judgments:
        return None
    weight = (lambda j: 1.0) if method == "majority" else (lambda j: j.confidence if j.confidence is not None else 0.5)
    reads = {j.pk: JudgmentRead.from_stored(j.payload) for j in judgments}
    choices = {pk: read.pairwise.choice for pk, read in reads.items() if read.pairwise is not None}
    pairwise = [j for j in judgments if j.pk in choices]
    if pairwise:
        votes: dict[str, float] = defaultdict(float)
        for j in pairwise:
            votes[choices[j.pk]] += weight(j)
        total = sum(votes.values()) or 1.0
        best = max(votes.values())
        winners = [c for c, v in votes.items() if v == best]
        choice = winners[0] if len(winners) == 1 else "tie"
        return {
            "pairwise": {"choice": choice},
            "agreement": round(best / total, 4),
            "n": len(pairwise),
            "method": method,
        }
    ranks_of = {pk: list(read.ranking.ranks) for pk, read in reads.items() if read.ranking is not None}
    ranked = [j for j in judgments if j.pk in ranks_of]
    if ranked:
        n = len(ranks_of[ranked[0].pk])
        total = sum(weight(j) for j in ranked) or 1.0
        mean = [sum(weight(j) * ranks_of[j.pk][i] for j in ranked) / total for i in range(n)]
        order = sorted(range(n), key=lambda i: mean[i])
        ranks = [0] * n
        for r, i in enumerate(order, start=1):
            ranks[i] = r
        agree = sum(weight(j) for j in ranked if ranks_of[j.pk] == ranks) / total
        return {"ranking": ranks, "agreement": round(agree, 4), "n": len(ranked), "method": method}
    return None
