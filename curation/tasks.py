"""Celery tasks of the curation app: thin shells that load by id and call one service.
Exports run on the `default` queue."""

from celery import shared_task

from curation import services

EXPORT_TIME_LIMIT = 4 * 3600


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=EXPORT_TIME_LIMIT,
    soft_time_limit=EXPORT_TIME_LIMIT - 60,
    name="curation.tasks.export_snapshot",
)
def export_snapshot(self, snapshot_id: int) -> str | None:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    snapshot = services.export_run(snapshot_id=snapshot_id, redelivered=redelivered)
    return snapshot.status if snapshot else None


@shared_task(acks_late=True, ignore_result=True, name="curation.tasks.recover_stale_exports")
def recover_stale_exports() -> dict[str, int]:
    """Periodic: exports whose worker died go back to the queue (or, worn out, fail)."""
    return services.recover_stale_exports()
