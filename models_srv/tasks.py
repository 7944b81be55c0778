"""Celery tasks of the model service. Training and rescoring run on the `gpu` queue (they fall
back to the CPU where no GPU is); torch is imported inside the services they call, never here."""

from celery import shared_task

from models_srv import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.train_reward_model")
def train_reward_model(self, version_id: int) -> str | None:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    version = services.training_run(version_id=version_id, redelivered=redelivered)
    return version.status if version else None


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.gpu_rescore")
def gpu_rescore(version_id: int) -> int:
    return services.rescore(version_id=version_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.gpu_place_annotators")
def gpu_place_annotators(version_id: int) -> int:
    return services.place_annotators(version_id=version_id)


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.autotrain")
def autotrain() -> list[int]:
    """Periodic: start a run for each project that gathered enough new judgments."""
    return services.autotrain_all()


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.recover_stale_runs")
def recover_stale_runs() -> dict[str, int]:
    """Periodic: runs whose worker died go back to the queue (or, worn out, fail)."""
    return services.recover_stale_runs()


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.recover_stale_crossfits")
def recover_stale_crossfits() -> dict[str, int]:
    """Periodic: cross-fitting runs whose worker died go back to the queue (or, worn out, fail)."""
    return services.recover_stale_crossfits()


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.recover_stale_label_runs")
def recover_stale_label_runs() -> dict[str, int]:
    """Periodic: AI labeling runs whose worker died go back to the queue (or, worn out, fail)."""
    from models_srv.labeling import recover_stale_label_runs as recover

    return recover()


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.ai_label_run")
def ai_label_run(run_id: int) -> str | None:
    """LLM and reward-model judges, on the `ai` queue."""
    from models_srv.labeling import run_execute

    run = run_execute(run_id=run_id)
    return run.status if run else None


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.gpu_ai_label_run")
def gpu_ai_label_run(run_id: int) -> str | None:
    """Density-ratio judges load two causal LMs: the `gpu` queue."""
    from models_srv.labeling import run_execute

    run = run_execute(run_id=run_id)
    return run.status if run else None


@shared_task(acks_late=True, name="models_srv.tasks.route_items")
def route_items(project_id: int, calibration_fraction: float | None = None) -> dict[str, int]:
    """Re-route a project's items between humans and AI under its budget."""
    from annotation.models import Project
    from models_srv.routing import route_project

    return route_project(project=Project.objects.get(id=project_id), calibration_fraction=calibration_fraction)


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.reroute_due")
def reroute_due() -> list[int]:
    """Periodic: retrain the router of projects whose calibration slice has grown."""
    from django.conf import settings

    from models_srv.routing import reroute_due as run

    return run(min_new_calibration=settings.ROUTER_RETRAIN_EVERY)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.gpu_crossfit")
def gpu_crossfit(self, run_id: int) -> str | None:
    """Out-of-fold margins for the review queue: k reward-model fits, on the `gpu` queue."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    run = services.crossfit_run(run_id=run_id, redelivered=redelivered)
    return run.status if run else None


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.ai_audit_run")
def ai_audit_run(audit_id: int) -> str | None:
    """A judge audit of an LLM or reward-model judge, on the `ai` queue."""
    from models_srv.judge_audit import audit_execute

    audit = audit_execute(audit_id=audit_id)
    return audit.status if audit else None


@shared_task(acks_late=True, reject_on_worker_lost=True, name="models_srv.tasks.gpu_audit_run")
def gpu_audit_run(audit_id: int) -> str | None:
    """A judge audit of a density-ratio judge (two causal LMs), on the `gpu` queue."""
    from models_srv.judge_audit import audit_execute

    audit = audit_execute(audit_id=audit_id)
    return audit.status if audit else None


@shared_task(acks_late=True, ignore_result=True, name="models_srv.tasks.recover_stale_audits")
def recover_stale_audits() -> dict[str, int]:
    """Periodic: judge audits whose worker died go back to the queue (or, worn out, fail)."""
    from models_srv.judge_audit import recover_stale_audits as recover

    return recover()
