"""The job runner of long-running jobs (training runs, exports, imports, AI labeling runs):
claim, attempts, heartbeat, `.partial` folders and the stale sweep, one definition each.

`claim_job` takes a job's row with a conditional update under a row lock: pending, or (on a
broker redelivery) running with a stale heartbeat; a job already tried `max_attempts` times is
given up instead. The claim counts the attempt and returns the attempt's fenced queryset
(id, running status, attempt number): every later write of the attempt goes through it, so an
attempt that lost the job writes nothing. `partial_folder` gives the attempt its own
`<name>.<attempt>.partial` working folder (earlier attempts' removed), renamed into place on
success; `sweep_stale` re-queues or fails the jobs whose heartbeat went silent.

Liveness:

A job's task claims its row with a conditional update (status and attempt number) and owns the
job only while the row still says what it claimed. `liveness(owned)` keeps that row's
`heartbeat_at` fresh from a thread of its own every `JOB_HEARTBEAT_SECONDS`, whatever the task is
doing: phases that report no progress (evaluating, bundling, one slow LLM request, an import's
single transaction) stay alive, so the sweeps may count a job silent for
`*_HEARTBEAT_STALE_SECONDS` (90 s) as dead without re-queueing a long healthy one. A killed worker's
thread dies with it: the heartbeat goes stale and the sweep re-queues or fails the job.

Each beat is one conditional UPDATE of `owned` on the thread's own connection, in autocommit: it
holds no lock between beats, and on SQLite (one writer at a time) it waits out the task's own short
write transactions through the busy timeout; a beat that still cannot write is logged and retried
at the next tick. An UPDATE that touches no row means the job was taken over (the sweep re-queued
it while this worker was merely slow) or is over: the thread sets `lost` and stops; the task checks
`lost` at its checkpoints and stops, and its final conditional update fails anyway.

A job run inside a caller's transaction (a test, a management command within `atomic`) gets no
thread: its claim is not committed, so another connection could neither see nor update the row
and would only wait on the caller's locks.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import DatabaseError, connections, models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

M = TypeVar("M", bound=models.Model)

log = logging.getLogger(__name__)


class JobLost(Exception):  # noqa: N818 - a signal, not an error
    """This attempt no longer owns its job (the sweep or a redelivery took it over)."""


class Liveness:
    """The running heartbeat of one attempt: `lost` is set once the row is no longer its own."""

    def __init__(self, owned: QuerySet[Any], every: float, field: str = "heartbeat_at") -> None:
        self.owned = owned
        self.every = every
        self.field = field
        self.lost = threading.Event()
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise JobLost when the heartbeat found the job taken over."""
        if self.lost.is_set():
            raise JobLost

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)
        self._thread.start()

    def finishing(self) -> None:
        """Beat no more (call before the final conditional update: that row is no longer running).
        The thread is joined when the block ends, after the task's transaction committed."""
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        db = self.owned.db
        try:
            while not self._stop.wait(self.every):
                try:
                    touched = self.owned.update(**{self.field: timezone.now()})
                except DatabaseError as exc:  # locked (SQLite), restarting: try again next tick
                    log.warning("job heartbeat not written (%s); retrying", exc)
                    connections[db].close()
                    continue
                if not touched:
                    if not self._stop.is_set():
                        log.warning("job heartbeat: the job is no longer this attempt's; stopping it")
                        self.lost.set()
                    return
                self.beats += 1
        finally:
            connections[db].close()


def stale_after(seconds: int | None = None) -> timedelta:
    """How long a running job may go without a heartbeat before the sweeps count it as dead."""
    return timedelta(seconds=seconds or settings.JOB_HEARTBEAT_STALE_SECONDS)


@contextmanager
def liveness(owned: QuerySet[Any], *, every: float | None = None, field: str = "heartbeat_at") -> Iterator[Liveness]:
    """Keep `owned.update(<field>=now)` going every `every` seconds while the block runs.

    `owned` is the attempt's fenced queryset (id, status, attempts). Call this outside any
    transaction of the task's own, so the thread is joined after it committed."""
    beat = Liveness(owned, settings.JOB_HEARTBEAT_SECONDS if every is None else every, field)
    if not connections[owned.db].in_atomic_block:
        beat.start()
    try:
        yield beat
    finally:
        beat.stop()


def sweep_stale(
    stale: QuerySet[Any],
    *,
    what: str,
    max_attempts: int,
    give_up: Callable[[int], dict[str, Any]],
    requeue: Callable[[int], dict[str, Any]],
    send: Callable[[dict[str, Any]], None],
    fields: tuple[str, ...] = (),
    name: str = "id",
    cleanup: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, int]:
    """Re-queue or fail the running jobs in `stale` (those whose heartbeat went silent).

    The periodic sweeps of every job kind share this shape; each kind supplies its specifics:
    `give_up(attempts)` and `requeue(attempts)` give the fields to write, `send(job)` sends the
    task again (on commit), `cleanup(job)` removes what a dead attempt half-wrote (before the task
    goes out, so the next attempt's files are never touched). `job` is the row's `id`,
    `attempts`, `name` and `fields` as a dict. Row by row, each update is conditional on the
    attempt read: a job that reported or was revived in between is left alone."""
    counts = {"requeued": 0, "failed": 0}
    for job in stale.values(*dict.fromkeys(("id", "attempts", name, *fields))):
        attempts = job["attempts"]
        row = stale.filter(id=job["id"], attempts=attempts)
        with transaction.atomic():
            if attempts >= max_attempts:
                gone = row.update(**give_up(attempts))
                counts["failed"] += gone
            else:
                gone = row.update(**requeue(attempts))
                counts["requeued"] += gone
                if gone:
                    transaction.on_commit(partial(send, job))
            if gone:
                log.warning("%s %s: its worker went silent (attempt %s)", what, job[name], attempts)
                if cleanup is not None:
                    cleanup(job)
    return counts


@dataclass
class Claim(Generic[M]):
    """A claimed attempt: the job as claimed, its attempt number and the fenced queryset that
    matches the row only while this attempt owns it."""

    job: M
    attempt: int
    owned: QuerySet[M]


def claim_job(
    model: type[M],
    *,
    pk: int,
    pending: str,
    running: str,
    redelivered: bool,
    stale: Q,
    max_attempts: int,
    give_up: Callable[[M], object],
    only: Q | None = None,
    fields: dict[str, Any] | None = None,
) -> Claim[M] | None:
    """Claim job `pk` of `model` (fields `status`, `attempts`, `started_at`, `heartbeat_at`).

    Claimable: `pending`, or on a redelivery `running` and `stale` (its heartbeat went silent).
    Returns None when the job is not claimable (another worker has it, or it is over) or was
    worn out (`give_up(job)` then marks it failed). `only` narrows what may be claimed; `fields`
    are written with the claim."""
    now = timezone.now()
    claimable = Q(status=pending)
    if redelivered:
        claimable |= Q(status=running) & stale
    with transaction.atomic():
        job = model._default_manager.select_for_update().filter(claimable, only or Q(), pk=pk).first()
        if job is None:
            return None
        if job.attempts >= max_attempts:  # type: ignore[attr-defined]
            give_up(job)
            return None
        job.status = running  # type: ignore[attr-defined]
        job.attempts += 1  # type: ignore[attr-defined]
        job.started_at = job.heartbeat_at = now  # type: ignore[attr-defined]
        for name, value in (fields or {}).items():
            setattr(job, name, value)
        job.save(update_fields=["status", "attempts", "started_at", "heartbeat_at", *(fields or {})])
    attempt: int = job.attempts  # type: ignore[attr-defined]
    owned = model._default_manager.filter(pk=job.pk, status=running, attempts=attempt)
    return Claim(job=job, attempt=attempt, owned=owned)


def remove_partials(final: Path) -> None:
    """Every attempt's half-written folder of `final` (`<name>.partial`, `<name>.<n>.partial`)."""
    for folder in final.parent.glob(f"{final.name}*.partial"):
        shutil.rmtree(folder, ignore_errors=True)


def partial_folder(final: Path, attempt: int) -> Path:
    """The working folder of this attempt, renamed to `final` on success; earlier attempts'
    folders are removed (they lost the job)."""
    remove_partials(final)
    return final.with_name(f"{final.name}.{attempt}.partial")
