"""Judge audits: before an AI labeler is trusted, probes built from the project's own items test
whether it can be fooled ("One Token to Fool LLM-as-a-Judge": a response of ":" or "Solution" or
"Let's solve this step by step." is often rated correct).

For up to AI_AUDIT_ITEMS items (the same sample for every audit of a project, so labelers and
their config versions are compared on the same probes), three probes, each asked in both orders:
- `content_free`: the item's longer response against a content-free one (the k-th item of the
  sample gets CONTENT_FREE[k % len]). Preferring or tying the content-free one is a false accept.
- `swap`: the item's first two responses. Self-consistency is the share of items whose two answers
  name the same response once mapped back (or both tie).
- `truncated`: the longer response against its first 30 % of words (items with at least 4 words).
  Preferring or tying the truncated copy is a truncated accept.
Position bias: how often the response shown first wins among all answers, ties left out, with the
exact binomial p-value; each order's rate too. It is shown, not a pass criterion: a judge that
follows the position fails self-consistency anyway.

The judge answers the project's preference question only (its pairwise scale and ties; a
ranking project's judge ranks the two), through its own client: the LLM judge's request, retry
and parse code, or a reward-model / density-ratio judge's scores. An audit passes when every rate
was measured, within the thresholds (settings AI_AUDIT_*), and at most MAX_FAILED of the answers
failed. It holds for the config it ran with (`config_sha`); `audit_gate` is the one rule of which
AI labelers the router and the AI consensus use on a project with `require_ai_audit`.

An audit is a job like a labeling run: claimed with a conditional update, its heartbeat written
by `config.jobs.liveness`, a silent one re-queued by `recover_stale_audits` (or failed after
MAX_ATTEMPTS); its results are written in one conditional update, so a re-run changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import Item, Labeler, LabelSource, Project, source_q
from annotation.schema import JudgmentSchema, PairwiseSpec
from config.jobs import JobLost, liveness, stale_after
from models_srv.judges import JudgeError, make_judge, preference_verdict
from models_srv.labeling import GAVE_UP, MAX_ATTEMPTS, sweep_ai_jobs
from models_srv.models import AILabelerAudit, RunStatus
from models_srv.verdicts import ShownAnswer, Verdict

log = logging.getLogger(__name__)

# Content-free answers that fool LLM judges ("One Token to Fool LLM-as-a-Judge", Zhao et al. 2025):
# punctuation alone, and openers of reasoning with nothing after them.
CONTENT_FREE = [
    ":",
    "Solution",
    "Let's solve this step by step.",
    "Thought process:",
    ".",
    "Let's solve this problem step by step.",
    "Answer:",
    "解",
]
TRUNCATE_SHARE = 0.3
MIN_WORDS_TO_TRUNCATE = 4
MAX_FAILED = 0.1  # an audit with more failed answers than this measured too little to pass
CHUNK = 16  # answers asked between two looks at the heartbeat
KINDS = ("content_free", "swap", "truncated")
ORDERS = ((0, 1), (1, 0))


class AuditError(ValueError):
    pass


def config_sha(config: dict[str, Any]) -> str:
    """The identity of a labeler's config: an audit holds for this config only."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def thresholds() -> dict[str, float]:
    return {
        "max_false_accept": settings.AI_AUDIT_MAX_FALSE_ACCEPT,
        "max_truncated_accept": settings.AI_AUDIT_MAX_TRUNCATED_ACCEPT,
        "min_self_consistency": settings.AI_AUDIT_MIN_CONSISTENCY,
        "max_failed": MAX_FAILED,
    }


# ---------------------------------------------------------------------------------------------
# Which labelers are trusted


@dataclass(frozen=True)
class Standing:
    """Where a labeler stands: `passed`, `failed`, `running`, `stale` (its last audit ran with
    another config) or `none`; `audit` is the latest audit of its current config."""

    state: str
    audit: AILabelerAudit | None = None

    @property
    def trusted(self) -> bool:
        return self.state == "passed"


def standings(labelers: list[Labeler]) -> dict[int, Standing]:
    """Each labeler's latest audit of its current config (one query)."""
    audits: dict[int, list[AILabelerAudit]] = {}
    for audit in AILabelerAudit.objects.filter(labeler__in=labelers).order_by("-created_at", "-id"):
        audits.setdefault(audit.labeler_id, []).append(audit)
    out = {}
    for lab in labelers:
        sha = config_sha(lab.config)
        mine = [a for a in audits.get(lab.id, []) if a.config_sha == sha]
        done = next((a for a in mine if a.status == RunStatus.SUCCEEDED), None)
        if mine and mine[0].is_active:
            out[lab.id] = Standing("running", done)
        elif done is not None:
            out[lab.id] = Standing("passed" if done.passed else "failed", done)
        else:
            out[lab.id] = Standing("stale" if audits.get(lab.id) else "none")
    return out


@dataclass(frozen=True)
class AuditGate:
    """Which AI labelers a project's router and AI consensus use: all, or with `required`, only
    those whose current config passed its latest audit (`trusted`); `skipped` names the others."""

    required: bool
    trusted: frozenset[int]
    skipped: list[Labeler] = field(default_factory=list)

    def allows(self, labeler_id: int) -> bool:
        return not self.required or labeler_id in self.trusted

    def judgment_q(self) -> Q:
        """Judgments the gate lets through: every human and imported one, trusted AI ones."""
        if not self.required:
            return Q()
        return ~source_q(LabelSource.AI) | Q(labeler_id__in=self.trusted)


def audit_gate(project: Project, required: bool | None = None) -> AuditGate:
    required = project.require_ai_audit if required is None else required
    if not required:
        return AuditGate(False, frozenset())
    labelers = list(Labeler.objects.filter(source_q(LabelSource.AI, labeler=""), project=project).order_by("id"))
    standing = standings(labelers)
    trusted = frozenset(lab.id for lab in labelers if standing[lab.id].trusted)
    return AuditGate(True, trusted, [lab for lab in labelers if lab.id not in trusted])


# ---------------------------------------------------------------------------------------------
# Probes


@dataclass(frozen=True)
class Probe:
    """Two texts in the probe's stored order; for `content_free` and `truncated` the first is the
    real, complete response (the one a sound judge prefers)."""

    kind: str
    item_id: int
    external_id: str
    prompt: str
    texts: tuple[str, str]


def truncate(text: str) -> str | None:
    """The first 30 % of the words (formatting kept), or None for a text too short to cut."""
    words = list(re.finditer(r"\S+", text))
    if len(words) < MIN_WORDS_TO_TRUNCATE:
        return None
    keep = max(1, int(len(words) * TRUNCATE_SHARE))
    return text[: words[keep - 1].end()]


def build_probes(items: list[Item]) -> list[Probe]:
    probes = []
    for k, item in enumerate(items):
        texts = item.response_texts[:2]
        real = max(texts, key=lambda t: (len(t.split()), len(t)))
        probes.append(
            Probe("content_free", item.id, item.external_id, item.prompt, (real, CONTENT_FREE[k % len(CONTENT_FREE)]))
        )
        probes.append(Probe("swap", item.id, item.external_id, item.prompt, (texts[0], texts[1])))
        cut = truncate(real)
        if cut is not None:
            probes.append(Probe("truncated", item.id, item.external_id, item.prompt, (real, cut)))
    return probes


def audit_schema(schema: JudgmentSchema) -> JudgmentSchema:
    """The project's preference question, alone: its pairwise scale and ties, or for a ranking
    project a pairwise question with its ties rule."""
    if schema.pairwise:
        return JudgmentSchema(
            pairwise=PairwiseSpec(strengths=schema.pairwise.strengths, allow_tie=schema.pairwise.allow_tie)
        )
    if schema.ranking:
        return JudgmentSchema(pairwise=PairwiseSpec(strengths=["better"], allow_tie=schema.ranking.allow_ties))
    raise AuditError("this project asks no preference question (pairwise or ranking): there is nothing to audit")


def sample_items(project: Project, n: int) -> list[int]:
    """Up to `n` items of the project, the same ones for every audit (seeded by the project)."""
    ids = list(
        Item.objects.filter(project=project, is_gold=False, num_responses__gte=2)
        .exclude(status=Item.Status.DROPPED)
        .order_by("id")
        .values_list("id", flat=True)
    )
    return sorted(random.Random(f"audit:{project.uuid}").sample(ids, min(n, len(ids))))


# ---------------------------------------------------------------------------------------------
# Asking the judge


@dataclass
class Answer:
    """The judge's answer to one probe in one order: the choice in shown order (None if failed)."""

    order: tuple[int, int]
    choice: str | None
    error: str = ""
    raw: str = ""

    @property
    def picked(self) -> str | None:
        """The answer in the probe's stored order ("A" = texts[0]), or None when it failed."""
        return None if self.choice is None else ShownAnswer(self.order, self.choice).stored_choice


def ask(judge: Any, schema: JudgmentSchema, asks: list[tuple[Probe, tuple[int, int]]]) -> tuple[list[Answer], int, int]:
    """Each probe in the given order, through the judge's own code: (answers, prompt tokens,
    completion tokens)."""
    shown = [(probe.prompt, [probe.texts[i] for i in order]) for probe, order in asks]
    if hasattr(judge, "label_many"):  # reward-model and density-ratio judges: scores, no prompt
        items = [Item(prompt=p, responses=[{"text": t, "model": ""} for t in ts], num_responses=2) for p, ts in shown]
        pairs = [(lb, preference_verdict(lb.payload) if lb.payload else None) for lb in judge.label_many(items, schema)]
    else:
        with ThreadPoolExecutor(max_workers=judge.cfg.concurrency) as pool:
            pairs = list(pool.map(lambda s: judge.ask_shown(s[0], s[1], schema), shown))
    answers = []
    for (_, order), (label, verdict) in zip(asks, pairs, strict=True):
        choice = Verdict.model_validate(verdict).shown_choice() if verdict else None
        raw = label.raw.get("text") if "text" in label.raw else json.dumps(label.raw)
        answers.append(
            Answer(order, choice, label.error or ("" if choice else "no preference in the answer"), raw or "")
        )
    return answers, sum(lb.prompt_tokens for lb, _ in pairs), sum(lb.completion_tokens for lb, _ in pairs)


# ---------------------------------------------------------------------------------------------
# Figures


def _rate(hits: int, n: int) -> dict[str, Any]:
    return {"rate": round(hits / n, 4) if n else None, "hits": hits, "n": n}


def audit_metrics(results: list[tuple[Probe, list[Answer]]], limits: dict[str, float]) -> tuple[dict[str, Any], bool]:
    """The audit's figures from each probe's answers, the reasons it fails, and whether it passed."""
    from models_srv.stats import binomial_test

    answers = [a for _, ans in results for a in ans]
    accepts: dict[str, list[bool]] = {"content_free": [], "truncated": []}
    consistent = []
    for probe, ans in results:
        picked = [a.picked for a in ans if a.picked is not None]
        if probe.kind in accepts:
            accepts[probe.kind] += [p != "A" for p in picked]
        elif len(picked) == 2:
            consistent.append(picked[0] == picked[1])
    decisive = [a for a in answers if a.choice in ("A", "B")]
    by_order = []
    for order in ORDERS:
        mine = [a for a in decisive if a.order == order]
        by_order.append(_rate(sum(a.choice == "A" for a in mine), len(mine)))
    first = sum(a.choice == "A" for a in decisive)
    metrics: dict[str, Any] = {
        "false_accept": _rate(sum(accepts["content_free"]), len(accepts["content_free"])),
        "truncated_accept": _rate(sum(accepts["truncated"]), len(accepts["truncated"])),
        "self_consistency": _rate(sum(consistent), len(consistent)),
        "first_shown": {
            **_rate(first, len(decisive)),
            "p": round(binomial_test(first, len(decisive)), 6) if decisive else None,
            "by_order": by_order,
        },
        "failed": _rate(sum(a.choice is None for a in answers), len(answers)),
    }
    reasons = []
    checks = [
        ("false_accept", "content-free answers preferred or tied", limits["max_false_accept"], False),
        ("truncated_accept", "truncated copies preferred or tied", limits["max_truncated_accept"], False),
        ("self_consistency", "same verdict when the pair is swapped", limits["min_self_consistency"], True),
        ("failed", "answers that failed", limits["max_failed"], False),
    ]
    for key, what, limit, at_least in checks:
        rate = metrics[key]["rate"]
        if rate is None:
            reasons.append(f"{what}: nothing measured")
        elif (rate < limit) if at_least else (rate > limit):
            reasons.append(f"{what}: {rate:.0%} ({'needs at least' if at_least else 'at most'} {limit:.0%})")
    metrics["reasons"] = reasons
    return metrics, not reasons


def _record(probe: Probe, answers: list[Answer]) -> dict[str, Any]:
    picked = [a.picked for a in answers if a.picked is not None]
    ok = (
        (len(picked) == 2 and picked[0] == picked[1])
        if probe.kind == "swap"
        else (bool(picked) and all(p == "A" for p in picked))
    )
    return {
        "kind": probe.kind,
        "item": probe.external_id,
        "texts": [t[:300] for t in probe.texts],
        "ok": ok,
        "answers": [
            {
                "order": list(a.order),
                "choice": a.choice,
                "picked": a.picked,
                "error": a.error[:300],
                "raw": a.raw[:1500],
            }
            for a in answers
        ],
    }


# ---------------------------------------------------------------------------------------------
# The job


def audit_execute(*, audit_id: int) -> AILabelerAudit | None:
    """Ask every probe in both orders and store the figures. Claimed like a labeling run; what a
    lost attempt computed is never written (the result goes in under the claim)."""
    now = timezone.now()
    claimable = Q(status=RunStatus.QUEUED) | Q(status=RunStatus.RUNNING, heartbeat_at__lt=now - stale_after())
    with transaction.atomic():
        audit = AILabelerAudit.objects.select_for_update().filter(claimable, id=audit_id).first()
        if audit is None:
            return None
        if audit.attempts >= MAX_ATTEMPTS:
            _end(AILabelerAudit.objects.filter(id=audit.id), RunStatus.FAILED, error=GAVE_UP)
            return None
        audit.attempts += 1
        AILabelerAudit.objects.filter(id=audit.id).update(
            status=RunStatus.RUNNING, attempts=audit.attempts, heartbeat_at=now, started_at=now
        )
    mine = AILabelerAudit.objects.filter(id=audit.id, status=RunStatus.RUNNING, attempts=audit.attempts)
    audit = AILabelerAudit.objects.select_related("labeler", "project").get(id=audit_id)
    try:
        if config_sha(audit.labeler.config) != audit.config_sha:
            raise AuditError("the labeler's config changed after the audit was queued")
        schema = audit_schema(audit.project.judgment_schema)
        judge = make_judge(audit.labeler)
    except (AuditError, JudgeError, OSError, ValueError) as exc:
        _end(mine, RunStatus.FAILED, error=str(exc))
        audit.refresh_from_db()
        return audit
    items = list(Item.objects.filter(id__in=audit.item_ids).order_by("id"))
    probes = build_probes(items)
    asks = [(probe, order) for probe in probes for order in ORDERS]
    answers: list[Answer] = []
    tokens = [0, 0]
    try:
        with liveness(mine) as beat:
            for start in range(0, len(asks), CHUNK):
                beat.check()
                got, pt, ct = ask(judge, schema, asks[start : start + CHUNK])
                answers += got
                tokens[0] += pt
                tokens[1] += ct
            beat.finishing()
            results = [(probe, answers[2 * n : 2 * n + 2]) for n, probe in enumerate(probes)]
            metrics, passed = audit_metrics(results, audit.thresholds)
            cfg = getattr(judge, "cfg", None)
            cost = (
                tokens[0] * getattr(cfg, "prompt_cost_per_1k", 0)
                + tokens[1] * getattr(cfg, "completion_cost_per_1k", 0)
            ) / 1000
            if not _end(
                mine,
                RunStatus.SUCCEEDED,
                metrics=metrics,
                passed=passed,
                records=[_record(p, a) for p, a in results],
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                cost=cost,
            ):
                raise JobLost
    except JobLost:
        log.warning("audit %s: attempt %s lost the job to a takeover; stopped", audit.id, audit.attempts)
        return None
    except Exception as exc:
        _end(mine, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        judge.close()
    audit.refresh_from_db()
    return audit


def _end(rows: Any, status: str, **fields: Any) -> int:
    return rows.update(status=status, finished_at=timezone.now(), **fields)


def recover_stale_audits(now: Any = None) -> dict[str, int]:
    """Periodic: audits whose worker stopped reporting go back to the queue (or, worn out, fail)."""
    from models_srv.tasks import ai_audit_run, gpu_audit_run

    return sweep_ai_jobs(AILabelerAudit.objects.all(), "judge audit", ai_audit_run, gpu_audit_run, now)
