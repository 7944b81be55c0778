import json
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.models import Project
from models_srv import services
from models_srv.engine import TrainConfig, check_sources


class Command(BaseCommand):
    help = (
        "Train a reward model on a project's judgments: queued on the Celery gpu queue, or in this "
        "process with --foreground (printing progress). Multi-GPU: torchrun --nproc_per_node=N manage.py "
        "train_reward_model --foreground --mode full ... The backbone follows the rule of the web and the API "
        "(the workers load it): 'default', a Hugging Face id in the local cache, or a folder under MODEL_DIRS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", required=True)
        parser.add_argument("--foreground", action="store_true", help="Train here instead of on a worker.")
        for name, field in TrainConfig.model_fields.items():
            if name == "from_config":
                continue
            flag = "--" + name.replace("_", "-")
            parsers: dict[object, Callable[[str], object]] = {int: int, float: float}
            kind = parsers.get(field.annotation, str)
            parser.add_argument(flag, dest=name, type=kind, default=None, help=field.description or "")
        parser.add_argument("--config", help="A JSON object of TrainConfig fields (flags override it).")

    def handle(self, *args: Any, **opts: Any) -> None:
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"no project {opts['project']!r}")
        config = json.loads(opts["config"]) if opts["config"] else {}
        config.update({k: opts[k] for k in TrainConfig.model_fields if opts.get(k) is not None})
        try:
            check_sources(TrainConfig.model_validate(config))
            version = services.training_start(project=project, config=config, enqueue=not opts["foreground"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not opts["foreground"]:
            self.stdout.write(f"queued version {version.version} ({version.uuid}) on the gpu queue")
            return

        def echo(info: dict[str, Any]) -> None:
            parts = [f"{k}={v}" for k, v in info.items()]
            self.stdout.write("  " + " ".join(parts))

        trained = services.training_run(version_id=version.id, echo=echo)
        if trained is None:
            raise CommandError(f"version {version.version} was taken by a worker meanwhile")
        self.stdout.write(f"version {trained.version}: {trained.status}")
        self.stdout.write(json.dumps({"version": trained.version, "metrics": trained.metrics}))
