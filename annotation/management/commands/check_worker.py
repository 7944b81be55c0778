from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.health import QUEUES, workers_report


class Command(BaseCommand):
    help = (
        "Exit 0 when a live Celery worker consumes each given queue, else 1: a docker health check. "
        "With --node, only that worker counts (e.g. --node celery@$HOSTNAME inside a worker container)."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue",
            action="append",
            choices=QUEUES,
            help="A queue that must have a worker (repeatable; default all).",
        )
        parser.add_argument("--node", action="append", help="Ask only this worker node, e.g. celery@host (repeatable).")
        parser.add_argument("--timeout", type=float, default=5.0, help="Seconds to wait for answers (default 5).")

    def handle(self, *args: Any, **opts: Any) -> None:
        queues = opts["queue"] or list(QUEUES)
        report = workers_report(timeout=opts["timeout"], nodes=opts["node"])
        dead = [q for q in queues if not report["queues"][q]["alive"]]
        for q in queues:
            workers = report["queues"][q]["workers"]
            self.stdout.write(f"{q}: {', '.join(workers) if workers else 'no worker'}")
        if dead:
            reason = f" ({report['error']})" if report.get("error") else ""
            raise CommandError(f"no live worker for queue(s) {', '.join(dead)}{reason}")
