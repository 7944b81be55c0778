"""Celery tasks of the annotation app: thin shells that load by id and call one service."""

from celery import shared_task

from annotation import services


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=3)
def run_import_job(self, job_id: int) -> str | None:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    job = services.import_job_run(job_id=job_id, redelivered=redelivered)
    return job.status if job else None


@shared_task(acks_late=True, ignore_result=True)
def reap_expired_leases() -> int:
    """Return the slots of leases that ran out to the queue (also done before every hand-out)."""
    from annotation.queue import reap_expired_leases as reap

    return reap()


@shared_task(acks_late=True, ignore_result=True, name="annotation.tasks.recover_stale_imports")
def recover_stale_imports() -> dict[str, int]:
    """Periodic: imports whose worker died go back to the queue (or, worn out, fail)."""
    return services.recover_stale_imports()
